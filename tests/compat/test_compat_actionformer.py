"""jaxfuse.compat.actionformer against a plain-python ActionFormer written from its description.

The reference below follows ActionFormer's ``libs/utils/nms.py`` and its C++
``nms_cpu.cpp`` as described (not copied): per class (or for all classes at
once), Gaussian Soft-NMS over an array that the C++ permutes as it goes, or
hard NMS over ``torch.sort``'s order; each list cut at ``max_seg_num``;
segment voting in the class-agnostic mode; then every class's list concatenated in ascending class order, sorted
with ``torch.sort(descending=True)`` and cut at ``max_seg_num``. Float32
throughout, as the C++.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxfuse.compat.actionformer import batched_nms, batched_nms_videos  # noqa: E402

F32 = np.float32
MODES = [(soft, multiclass) for soft in (True, False) for multiclass in (True, False)]
MODE_IDS = [f"{'soft' if s else 'hard'}-{'multiclass' if m else 'agnostic'}" for s, m in MODES]

# ----------------------------------------------------------------- reference


def ref_iou(x1, x2, area, j_x1, j_x2, j_area):
    """One pair, the C++'s float32 arithmetic and order."""
    inter = max(F32(0), F32(min(x2, j_x2) - max(x1, j_x1)))
    return F32(inter / F32(F32(area + j_area) - inter))


def ref_soft_nms(segs, scores, sigma, min_score):
    """The C++ Soft-NMS (Gaussian): returns (input indices, selected scores) in selection order."""
    x1, x2 = [F32(v) for v in segs[:, 0]], [F32(v) for v in segs[:, 1]]
    sc = [F32(v) for v in scores]
    area = [F32(F32(b - a) + F32(1e-6)) for a, b in zip(x1, x2)]
    ind = list(range(len(sc)))
    n, i, kept = len(sc), 0, []
    sigma, min_score = F32(sigma), F32(min_score)

    def move(dst, src):
        for array in (x1, x2, sc, area, ind):
            array[dst] = array[src]

    while i < n:
        best = i
        for pos in range(i + 1, n):
            if sc[best] < sc[pos]:
                best = pos
        for array in (x1, x2, sc, area, ind):
            array[i], array[best] = array[best], array[i]
        kept.append((ind[i], sc[i]))
        pos = i + 1
        while pos < n:
            ovr = ref_iou(x1[i], x2[i], area[i], x1[pos], x2[pos], area[pos])
            # glibc's expf is correctly rounded (to 0.502 ulp); numpy's float32 exp is
            # not, and an ulp decides which of two near-equal scores goes first.
            sc[pos] = F32(sc[pos] * F32(math.exp(F32(F32(-(ovr * ovr)) / sigma))))
            if sc[pos] < min_score:
                move(pos, n - 1)
                n -= 1
                pos -= 1
            pos += 1
        i += 1
    return [k for k, _ in kept], [s for _, s in kept]


def ref_hard_nms(segs, scores_t, iou_threshold, min_score):
    """Filter ``score > min_score``, then greedy over ``torch.sort``'s order, suppressing ``iou >= threshold``."""
    index = np.arange(len(scores_t))
    if min_score > 0:
        index = index[(scores_t > min_score).numpy()]
    order = index[scores_t[torch.from_numpy(index)].sort(descending=True)[1].numpy()]
    area = [F32(F32(b - a) + F32(1e-6)) for a, b in segs.astype(F32)]
    alive = np.ones(len(order), bool)
    kept = []
    for a, i in enumerate(order):
        if not alive[a]:
            continue
        kept.append(i)
        for b in range(a + 1, len(order)):
            j = order[b]
            if alive[b] and ref_iou(segs[i, 0], segs[i, 1], area[i], segs[j, 0], segs[j, 1], area[j]) >= F32(iou_threshold):
                alive[b] = False
    return kept


def ref_voting(kept_segs, segs, scores, threshold):
    left = np.maximum(kept_segs[:, None, 0], segs[None, :, 0])
    right = np.minimum(kept_segs[:, None, 1], segs[None, :, 1])
    inter = np.maximum(right - left, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / ((kept_segs[:, None, 1] - kept_segs[:, None, 0]) + (segs[None, :, 1] - segs[None, :, 0]) - inter)
        weights = (iou >= threshold).astype(F32) * scores[None, :] * iou
        weights = weights / weights.sum(axis=1, keepdims=True)
    return (weights.astype(np.float64) @ segs.astype(np.float64)).astype(F32)


def reference(segs_t, scores_t, cls_t, iou_threshold, min_score, max_seg_num, soft, multiclass, sigma=0.5, voting=0.75):
    segs, scores, labels = segs_t.numpy().astype(F32), scores_t.numpy().astype(F32), cls_t.numpy()
    if len(scores) == 0:
        return np.zeros((0, 2), F32), np.zeros(0, F32), np.zeros(0, labels.dtype)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if multiclass else [np.arange(len(labels))]
    out_segs, out_scores, out_labels = [], [], []
    for members in groups:
        if soft:
            kept, kept_scores = ref_soft_nms(segs[members], scores[members], sigma, min_score)
            kept, kept_scores = members[kept], np.array(kept_scores, F32)
        else:
            kept = members[ref_hard_nms(segs[members], scores_t[torch.from_numpy(members)], iou_threshold, min_score)]
            kept_scores = scores[kept]
        # Each class's list is cut at max_seg_num before the final sort (which
        # then sorts fewer elements: introsort's order of ties depends on it).
        kept, kept_scores = np.asarray(kept, np.int64)[:max_seg_num], np.asarray(kept_scores)[:max_seg_num]
        kept_segs = segs[kept]
        if not multiclass and voting > 0:
            kept_segs = ref_voting(kept_segs, segs, scores, F32(voting))
        out_segs.append(kept_segs.reshape(-1, 2))
        out_scores.append(np.asarray(kept_scores, F32).reshape(-1))
        out_labels.append(labels[kept])
    all_scores = np.concatenate(out_scores)
    order = torch.from_numpy(all_scores).sort(descending=True)[1].numpy()[:max_seg_num]
    return np.concatenate(out_segs)[order], all_scores[order], np.concatenate(out_labels)[order]


# ----------------------------------------------------------------- data


def random_video(rng, n=60, classes=3, grid=200.0):
    centres, widths = rng.uniform(0, grid, n), rng.uniform(1, 40, n)
    segs = np.stack([centres - widths / 2, centres + widths / 2], 1).astype(F32)
    scores = (rng.uniform(0, 1, n) ** 3).astype(F32)
    return torch.from_numpy(segs), torch.from_numpy(scores), torch.from_numpy(rng.integers(0, classes, n))


def tied_video(rng, n=60, classes=3):
    """Equal scores and equal IoUs everywhere: integer starts, three lengths, three score values."""
    starts = rng.integers(0, 30, n).astype(F32)
    segs = np.stack([starts, starts + rng.choice([2.0, 4.0, 8.0], n)], 1).astype(F32)
    scores = rng.choice(np.array([0.05, 0.3, 0.3, 0.9], F32), n)
    return torch.from_numpy(segs), torch.from_numpy(scores), torch.from_numpy(rng.integers(0, classes, n))


def assert_same(ours, expected, rtol=1e-5):
    segs, scores, labels = (x.numpy() for x in ours)
    np.testing.assert_array_equal(labels, expected[2])
    np.testing.assert_allclose(segs, expected[0], rtol=rtol, atol=1e-4)
    np.testing.assert_allclose(scores, expected[1], rtol=rtol, atol=1e-7)


# ----------------------------------------------------------------- drop-in


@pytest.mark.parametrize("soft,multiclass", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("make", [random_video, tied_video], ids=["random", "ties"])
def test_batched_nms_matches_reference(soft, multiclass, make):
    rng = np.random.default_rng(7)
    for _ in range(4):
        video = make(rng)
        for min_score in (0.001, 0.2):
            args = (0.3, min_score, 25)
            kwargs = dict(use_soft_nms=soft, multiclass=multiclass, sigma=0.5, voting_thresh=0.7)
            assert_same(batched_nms(*video, *args, **kwargs), reference(*video, *args, soft, multiclass, 0.5, 0.7))


def test_soft_nms_ties_follow_the_cpp_swaps():
    # Not the lower index: after the 0.9 is swapped to the front, input 2 sits
    # where input 0 was, so among the equal 0.5s input 1 comes first.
    segs = torch.tensor([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]])
    out = batched_nms(segs, torch.tensor([0.5, 0.5, 0.9]), torch.tensor([0, 1, 2]), 0.1, 0.001, 10, multiclass=False,
                      voting_thresh=0)
    assert out.cls_idxs.tolist() == [2, 1, 0]


def test_soft_nms_with_many_equal_scores_matches_reference():
    # More than 16 equal scores in one class: every selection is a tie, so
    # only the position-tracking kernel can agree.
    rng = np.random.default_rng(3)
    segs, _, _ = tied_video(rng, n=40)
    scores = torch.full((40,), 0.5)
    labels = torch.zeros(40, dtype=torch.int64)
    args = (0.1, 0.3, 40)
    assert_same(batched_nms(segs, scores, labels, *args), reference(segs, scores, labels, *args, True, True))


def test_torch_dtypes_and_devices_are_kept_and_inputs_untouched():
    rng = np.random.default_rng(1)
    segs, scores, labels = random_video(rng)
    for dtype, label_dtype in ((torch.float32, torch.int64), (torch.float64, torch.int32)):
        s, q, c = segs.to(dtype), scores.to(dtype), labels.to(label_dtype)
        copies = [x.clone() for x in (s, q, c)]
        for soft in (True, False):
            out = batched_nms(s, q, c, 0.3, 0.001, 25, use_soft_nms=soft)
            assert (out.segs.dtype, out.scores.dtype, out.cls_idxs.dtype) == (dtype, dtype, label_dtype)
            assert out.segs.device == s.device
            expected = reference(segs, scores, labels, 0.3, 0.001, 25, soft, True)
            np.testing.assert_array_equal(out.cls_idxs.numpy(), expected[2])
            # Kept segments are the caller's own values, in the caller's precision.
            rows = [int(np.flatnonzero((segs.numpy() == e).all(1))[0]) for e in expected[0]]
            np.testing.assert_array_equal(out.segs.numpy(), s.numpy()[rows])
        for x, copy in zip((s, q, c), copies):
            assert torch.equal(x, copy)


def test_edge_cases():
    empty = batched_nms(torch.zeros(0, 2, dtype=torch.float64), torch.zeros(0, dtype=torch.float64),
                        torch.zeros(0, dtype=torch.int32), 0.1, 0.001, 200)
    assert [tuple(x.shape) for x in empty] == [(0, 2), (0,), (0,)]
    assert (empty.segs.dtype, empty.cls_idxs.dtype) == (torch.float64, torch.int32)

    segs = torch.tensor([[0.0, 4.0], [1.0, 5.0], [30.0, 40.0], [31.0, 39.0]])
    scores = torch.tensor([0.01, 0.02, 0.015, 0.005])
    labels = torch.tensor([0, 0, 1, 1])
    # All below min_score: Soft-NMS still keeps each class's best (the C++
    # never tests its first pick); hard NMS filters them all out.
    soft = batched_nms(segs, scores, labels, 0.1, 0.5, 200)
    assert soft.cls_idxs.tolist() == [0, 1] and soft.scores.tolist() == pytest.approx([0.02, 0.015])
    hard = batched_nms(segs, scores, labels, 0.1, 0.5, 200, use_soft_nms=False)
    assert [len(x) for x in hard] == [0, 0, 0]
    # max_seg_num beyond what is kept, and max_seg_num = 0.
    for soft_nms in (True, False):
        many = batched_nms(segs, scores, labels, 0.1, 0.001, 1000, use_soft_nms=soft_nms)
        assert_same(many, reference(segs, scores, labels, 0.1, 0.001, 1000, soft_nms, True))
        assert [len(x) for x in batched_nms(segs, scores, labels, 0.1, 0.001, 0, use_soft_nms=soft_nms)] == [0, 0, 0]


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(segs=torch.zeros(3, 3)), "segs"),
        (dict(scores=torch.zeros(2)), "scores"),
        (dict(cls_idxs=torch.zeros(3)), "cls_idxs"),
        (dict(scores=torch.tensor([0.1, float("nan"), 0.2])), "scores"),
        (dict(segs=torch.tensor([[0.0, 1.0], [3.0, 2.0], [4.0, 5.0]])), "start <= end"),
        (dict(max_seg_num=-1), "max_seg_num"),
        (dict(sigma=0.0), "sigma"),
        (dict(method="linear"), "method"),
    ],
)
def test_bad_input_names_the_argument(change, message):
    args = dict(segs=torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]), scores=torch.tensor([0.1, 0.2, 0.3]),
                cls_idxs=torch.tensor([0, 1, 0]), iou_threshold=0.1, min_score=0.001, max_seg_num=10)
    args.update(change)
    with pytest.raises((TypeError, ValueError), match=message):
        batched_nms(**args)


# ----------------------------------------------------------------- whole dataset


@pytest.mark.parametrize("soft,multiclass", MODES, ids=MODE_IDS)
def test_dataset_call_matches_reference_per_video(soft, multiclass):
    rng = np.random.default_rng(11)
    videos = [random_video(rng, n=int(n)) for n in rng.integers(1, 90, 5)]
    args = (0.3, 0.01, 20)
    out = batched_nms_videos(*zip(*videos), *args, use_soft_nms=soft, multiclass=multiclass, voting_thresh=0.7)
    for video, result in zip(videos, out):
        assert_same(result, reference(*video, *args, soft, multiclass, 0.5, 0.7))


def test_dataset_call_numpy_in_numpy_out_and_empty_videos():
    rng = np.random.default_rng(5)
    videos = [random_video(rng), (torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.int64))]
    arrays = [tuple(x.numpy() for x in video) for video in videos]
    out = batched_nms_videos(*zip(*arrays), 0.3, 0.001, 25)
    assert isinstance(out[0].segs, np.ndarray) and [len(x) for x in out[1]] == [0, 0, 0]
    expected = reference(*videos[0], 0.3, 0.001, 25, True, True)
    for result in (out[0], batched_nms(*arrays[0], 0.3, 0.001, 25)):
        np.testing.assert_array_equal(result.cls_idxs, expected[2])
        np.testing.assert_allclose(result.scores, expected[1], rtol=1e-5)
        np.testing.assert_array_equal(result.segs, expected[0])


@pytest.mark.parametrize("soft", [True, False], ids=["soft", "hard"])
def test_dataset_call_with_class_ids_at_the_integer_limits_equals_per_video_calls(soft):
    # Class ids at both ends of int64 and uint64 (the two dtypes mixed across videos): the (video, class) items
    # must be exactly each video's classes, in ascending class order, as batched_nms forms them video by video.
    rng = np.random.default_rng(13)
    extremes = {np.int64: [-(2**63), -(2**63) + 1, -1, 0, 2**62, 2**63 - 1], np.uint64: [0, 2**62, 2**63, 2**64 - 1]}
    videos = []
    for video, n in enumerate(rng.integers(1, 90, 6)):
        segs, scores, _ = (x.numpy() for x in random_video(rng, n=int(n)))
        dtype = (np.int64, np.uint64)[video % 2]
        labels = np.array(extremes[dtype], dtype=object).astype(dtype)[rng.integers(0, len(extremes[dtype]), n)]
        videos.append((segs, scores, labels))
    out = batched_nms_videos(*zip(*videos), 0.3, 0.01, 20, use_soft_nms=soft)
    for (segs, scores, labels), result in zip(videos, out):
        expected = batched_nms(segs, scores, labels, 0.3, 0.01, 20, use_soft_nms=soft)
        assert result.cls_idxs.dtype == labels.dtype and len(expected.scores) > 0
        np.testing.assert_array_equal(result.cls_idxs, expected.cls_idxs)
        np.testing.assert_array_equal(result.segs, expected.segs)
        np.testing.assert_allclose(result.scores, expected.scores, rtol=1e-6)


def ref_gaussian(segs, scores, labels, iou_threshold, min_score, max_seg_num, temperature):
    """GauFuse per class: greedy groups (IoU > threshold, continuous lengths), softmax(score / T) means, best first."""
    fused = []
    for c in np.unique(labels):
        members = np.flatnonzero((labels == c) & (scores > min_score))
        left = list(members[np.argsort(-scores[members], kind="stable")])
        while left:
            lead = left[0]
            inter = np.maximum(0, np.minimum(segs[lead, 1], segs[left, 1]) - np.maximum(segs[lead, 0], segs[left, 0]))
            union = (segs[left, 1] - segs[left, 0]) + (segs[lead, 1] - segs[lead, 0]) - inter
            group = [j for j, o in zip(left, inter / union) if o > iou_threshold or j == lead]
            w = np.exp((scores[group] - scores[group].max()) / temperature)
            w /= w.sum()
            fused.append((*(w @ segs[group]), w @ scores[group], c))
            left = [j for j in left if j not in group]
    fused.sort(key=lambda f: -f[2])  # stable: class, then leader order among equal scores
    return np.array(fused[:max_seg_num]).reshape(-1, 4)


def test_gaussian_method_matches_gaufuse_reference():
    rng = np.random.default_rng(2)
    videos = [random_video(rng, n=int(n)) for n in rng.integers(1, 60, 4)]
    out = batched_nms_videos(*zip(*videos), 0.3, 0.01, 20, method="gaussian", temperature=0.2)
    single = batched_nms(*videos[0], 0.3, 0.01, 20, method="gaussian", temperature=0.2)
    for video, result in zip(videos, out):
        expected = ref_gaussian(*(x.numpy().astype(np.float64) if x.is_floating_point() else x.numpy() for x in video),
                                0.3, 0.01, 20, 0.2)
        np.testing.assert_array_equal(result.cls_idxs.numpy(), expected[:, 3])
        np.testing.assert_allclose(result.segs.numpy(), expected[:, :2], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(result.scores.numpy(), expected[:, 2], rtol=1e-5)
    np.testing.assert_allclose(single.scores.numpy(), out[0].scores.numpy(), rtol=1e-6)
