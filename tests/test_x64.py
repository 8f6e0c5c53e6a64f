"""Every public function under ``jax_enable_x64``, in a fresh process (the flag is process-wide at import).

A bug that only shows with x64 on (an int64 init value beside an int32
operand in ``detect``) went unnoticed because the suite runs without it; this
runs the public API once with ``JAX_ENABLE_X64=1`` (float64 input, and float32
input where index dtypes could clash).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, os, tempfile
    import jax, numpy as np
    import jaxfuse

    assert jax.config.jax_enable_x64
    called = set()

    def call(name, *args, **kwargs):
        called.add(name)
        return getattr(jaxfuse, name)(*args, **kwargs)

    for dtype in (np.float64,):
        rng = np.random.default_rng(0)
        starts = rng.uniform(0, 50, (3, 12))
        segments = np.stack([starts, starts + rng.uniform(0, 10, (3, 12))], -1).astype(dtype)
        scores = rng.uniform(0, 1, (3, 12)).astype(dtype)
        # One method per kernel family (closed form, padded template, leader, Soft-NMS); the
        # Student-t solver runs below (fuse_student_t, fit_template), its padded template is laplace's.
        for method in ("gaussian", "laplace", "nms", "soft_nms"):
            fused = call("fuse_proposals", segments, scores, method=method)
            assert fused.segments.dtype == dtype and np.isfinite(fused.segments).all(), method
        call("fuse_proposals", segments, scores, preset="published")
        call("group_proposals", segments, scores)
        lists = call("fuse_proposal_lists", list(segments), list(scores))
        batches = call("pack_proposals", list(segments), list(scores))
        call("unpack_proposals", batches, [jaxfuse.fuse_proposals(b.segments, b.scores, valid=b.valid) for b in batches])
        call("fuse_proposals_sharded", segments, scores)
        call("item_mesh")

        values, weights = segments[0], scores[0]
        mask = np.ones(12, bool)
        call("fuse_groups", values, weights, mask, template="gaussian")
        call("fuse_gaussian", values, weights, mask)
        call("fuse_uniform", values, weights, mask)
        call("fuse_exponential", values, weights, mask)
        call("fuse_laplace", values, weights, mask)
        call("fuse_student_t", values, weights, mask)
        call("member_probabilities", weights, mask, 0.2)
        densities = [getattr(jaxfuse, name) for name in ("gaussian_density", "uniform_density",
                                                          "exponential_density", "laplace_density")]
        for density in densities + [call("student_t_density", 3.0)]:
            call("fit_template", density, values[:, 0], weights, mask, max_steps=20)
        packed = call("pack_groups", values, weights, lengths=[5, 7])
        call("unpack_groups", packed.values[:, 0], packed)
        call("unpack_members", packed.values, packed)
        ragged = call("pack_ragged", values, weights, lengths=[5, 7])
        call("unpack_ragged", [b.values[:, 0] for b in ragged.batches], ragged)
        call("unpack_ragged_members", [b.values for b in ragged.batches], ragged)
        assert call("fuse_ragged", values, weights, lengths=[5, 7]).location.dtype == dtype

        cas = np.zeros((2, 40, 3), dtype)
        cas[0, 5:12, 0] = 0.05
        cas[1, 3:9, 2] = 0.03
        video_scores = np.array([[0.9, 0.0, 0.0], [0.0, 0.0, 0.9]], dtype)
        found = call("proposals_from_cas", cas, np.asarray(jaxfuse.PUBLISHED_THRESHOLDS), classes_last=True)
        assert int(found.count.sum()) > 0
        call("max_runs_per_threshold", 40, 2)
        # detect's own index arithmetic is method-independent; each method's fusion under x64 ran above.
        for method in ("gaussian", "soft_nms"):
            detections = call("detect", cas, video_scores, method=method)
            assert (detections.count > 0).tolist() == [[True, False, False], [False, False, True]], method
        call("detect", cas, video_scores, preset="published")
        # Both lengths in detect's bucket of 64 snippets: the programs of the detect call above.
        predictions = call("detect_videos", [cas[0], cas[1, :34]], video_scores)
        truth = jaxfuse.GroundTruth(np.array([0, 1]), np.array([0, 2]), np.array([[5.0, 12.0], [3.0, 9.0]]))
        result = call("evaluate_detections", predictions, truth)
        assert result.mean_average_precision.shape

        document = {"results": {"v": [{"label": "a", "score": 0.9, "segment": [1.0, 5.0]},
                                      {"label": "a", "score": 0.8, "segment": [1.5, 5.0]}]}}
        truth_json = {"database": {"v": {"annotations": [{"label": "a", "segment": [1.0, 5.0]}]}}}
        call("load_activitynet_json", document, truth_json)
        call("evaluate_json", document, truth_json)
        fused_json = call("fuse_detections_json", document)
        with tempfile.TemporaryDirectory() as folder:
            source, target = os.path.join(folder, "in.json"), os.path.join(folder, "out.json")
            with open(source, "w") as f:
                json.dump(document, f)
            call("fuse_detection_file", source, target)
        call("synthetic_videos", num_videos=2) if "num_videos" in jaxfuse.VideoParameters._fields else call("synthetic_videos")
        labels = call("segments_to_snippets", segments[:, :2], scores[:, :2], np.ones((3, 2), bool), num_snippets=64)
        assert labels.snippets.dtype == dtype and np.isfinite(labels.snippets).all()
        pseudo = call("pseudo_labels", cas, video_scores, temperature=0.02, max_proposals=64, max_segments=8)
        assert np.isfinite(np.asarray(pseudo.labels)).all()
        call("bucket_size", 5)
        call("compile_count")
        call("compilation_cache_status")
        call("set_compilation_cache", None)
    # float32 input with x64 on: the index arithmetic is int64 by default there.
    assert call("detect", cas.astype(np.float32), video_scores.astype(np.float32)).count.tolist() == [[1, 0, 0], [0, 0, 1]]
    assert call("fuse_proposals", segments.astype(np.float32), scores.astype(np.float32)).segments.dtype == np.float32

    print(json.dumps(sorted(called)))
    """
)


def test_every_public_function_runs_under_x64():
    import jaxfuse

    environment = {**os.environ, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu"}
    environment.pop("JAX_COMPILATION_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    called = set(json.loads(done.stdout.strip().splitlines()[-1]))
    public_functions = {
        name for name in jaxfuse.__all__
        if callable(getattr(jaxfuse, name)) and not isinstance(getattr(jaxfuse, name), type)
    }
    assert public_functions <= called, f"not run under x64: {sorted(public_functions - called)}"
