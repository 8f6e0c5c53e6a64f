"""torch tensors in, torch tensors out, through DLPack.

What the zero-copy checks found (torch 2.13 CPU, jax 0.10.2): a torch tensor
crosses into JAX without a copy when its data pointer is 64-byte aligned (every
freshly allocated tensor, and views starting a multiple of 64 bytes in);
otherwise XLA's CPU client copies it, as it needs aligned buffers. Results come
back without a copy: each output tensor holds the JAX result buffer.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jaxfuse  # noqa: E402
from jaxfuse._core.interop import ArrayKind, from_jax, to_jax  # noqa: E402
from jaxfuse._proposals.sharding import fuse_proposals_sharded  # noqa: E402

GROUPS, MEMBERS, ITEMS, PROPOSALS = 8, 6, 3, 16


def tensors(tree):
    return [leaf for leaf in jax.tree.leaves(tree) if leaf is not None]


def assert_equal_to_numpy(torch_result, numpy_result):
    torch_leaves, numpy_leaves = tensors(torch_result), tensors(numpy_result)
    assert len(torch_leaves) == len(numpy_leaves)
    for ours, reference in zip(torch_leaves, numpy_leaves):
        assert isinstance(ours, torch.Tensor)
        assert ours.numpy().dtype == np.asarray(reference).dtype
        np.testing.assert_array_equal(ours.numpy(), reference)


def memory_range(tensor):
    start = tensor.data_ptr()
    return start, start + tensor.numel() * tensor.element_size()


def assert_no_aliasing(outputs, inputs):
    """No output shares memory with an input: writing into a result cannot change the caller's data."""
    for output in tensors(outputs):
        low, high = memory_range(output)
        for source in inputs:
            source_low, source_high = memory_range(source)
            assert high <= source_low or source_high <= low or output.numel() == 0


@pytest.fixture
def groups():
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(GROUPS, MEMBERS, 3, generator=generator) * 100
    weights = torch.rand(GROUPS, MEMBERS, generator=generator)
    mask = torch.rand(GROUPS, MEMBERS, generator=generator) < 0.8
    mask[:, 0] = True
    return values, weights, mask


@pytest.fixture
def proposals():
    generator = torch.Generator().manual_seed(1)
    starts = torch.rand(ITEMS, PROPOSALS, generator=generator) * 200
    segments = torch.stack([starts, starts + torch.rand(ITEMS, PROPOSALS, generator=generator) * 30], dim=-1)
    scores = torch.rand(ITEMS, PROPOSALS, generator=generator)
    weights = torch.rand(ITEMS, PROPOSALS, generator=generator)
    valid = torch.rand(ITEMS, PROPOSALS, generator=generator) < 0.9
    return segments, scores, weights, valid


def test_fuse_groups_takes_and_returns_tensors_equal_to_the_numpy_path(groups):
    fused = jaxfuse.fuse_groups(*groups, template="gaussian", temperature=0.2)
    expected = jaxfuse.fuse_groups(*(t.numpy() for t in groups), template="gaussian", temperature=0.2)
    assert_equal_to_numpy(fused, expected)
    assert fused.location.shape == (GROUPS, 3) and fused.result.dtype == torch.int32


def test_fuse_proposals_takes_and_returns_tensors_equal_to_the_numpy_path(proposals):
    fused = jaxfuse.fuse_proposals(*proposals, temperature=0.2)
    expected = jaxfuse.fuse_proposals(*(t.numpy() for t in proposals), temperature=0.2)
    assert_equal_to_numpy(fused, expected)
    assert fused.valid.dtype == torch.bool and fused.count.shape == (ITEMS,)


def test_sharded_fusion_returns_tensors(proposals):
    fused = fuse_proposals_sharded(*proposals, temperature=0.2)
    assert_equal_to_numpy(fused, jaxfuse.fuse_proposals(*(t.numpy() for t in proposals), temperature=0.2))


def test_inputs_are_not_modified_and_results_do_not_alias_them(groups, proposals):
    before = [t.clone() for t in groups + proposals]
    # The programs of the tests above (the interop layer is the same for every template).
    fused_groups = jaxfuse.fuse_groups(*groups, template="gaussian", temperature=0.2)
    fused_proposals = jaxfuse.fuse_proposals(*proposals, method="gaussian", temperature=0.2)
    for original, now in zip(before, groups + proposals):
        assert torch.equal(original, now)
    assert_no_aliasing(fused_groups, groups)
    assert_no_aliasing(fused_proposals, proposals)


def test_aligned_tensor_crosses_without_a_copy():
    tensor = torch.arange(64, dtype=torch.float32).reshape(32, 2)
    if tensor.data_ptr() % 64:
        pytest.skip("torch allocated an unaligned buffer; XLA would copy it")
    array = to_jax(tensor)
    assert array.unsafe_buffer_pointer() == tensor.data_ptr()
    assert np.shares_memory(np.asarray(array), tensor.numpy())
    # A view 64 bytes in is aligned too; one float in is not, and is copied (same values).
    view = torch.arange(100, dtype=torch.float32)[16:48]
    if view.data_ptr() % 64 == 0:
        assert to_jax(view).unsafe_buffer_pointer() == view.data_ptr()
    unaligned = torch.arange(100, dtype=torch.float32)[1:33]
    np.testing.assert_array_equal(np.asarray(to_jax(unaligned)), unaligned.numpy())


def test_results_reach_torch_without_a_copy():
    array = jax.numpy.arange(8, dtype=jax.numpy.float32) * 2
    tensor = from_jax(array, ArrayKind.TORCH)
    assert isinstance(tensor, torch.Tensor)
    assert tensor.data_ptr() == array.unsafe_buffer_pointer()


def test_float64_tensor_without_x64_is_a_clear_error(groups, proposals):
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is enabled in this process")
    values, weights, mask = groups
    with pytest.raises(TypeError, match="float64 torch tensor .* jax_enable_x64"):
        jaxfuse.fuse_groups(values.double(), weights, mask)
    segments, scores, _, valid = proposals
    with pytest.raises(TypeError, match="float64 torch tensor .* jax_enable_x64"):
        jaxfuse.fuse_proposals(segments, scores.double(), None, valid)


def test_float64_tensor_with_x64_stays_float64(groups):
    values, weights, mask = (t.double() if t.is_floating_point() else t for t in groups)
    with jax.enable_x64(True):
        fused = jaxfuse.fuse_groups(values, weights, mask, template="gaussian", temperature=0.2)
        expected = jaxfuse.fuse_groups(values.numpy(), weights.numpy(), mask.numpy(), template="gaussian", temperature=0.2)
    assert fused.location.dtype == torch.float64
    np.testing.assert_array_equal(fused.location.numpy(), expected.location)


def test_non_contiguous_tensors_work(groups, proposals):
    values, weights, mask = groups
    # Every other member of a twice-as-wide tensor (the fixture's shape, so no new compile), and
    # values stored coordinate-major then transposed: neither is contiguous.
    wide = lambda t: t.repeat_interleave(2, dim=1)  # noqa: E731
    strided = (wide(values).permute(2, 0, 1).contiguous().permute(1, 2, 0)[:, ::2], wide(weights)[:, ::2],
               wide(mask)[:, ::2])
    assert strided[0].shape == values.shape
    assert not strided[0].is_contiguous() and not strided[1].is_contiguous()
    fused = jaxfuse.fuse_groups(*strided, template="gaussian", temperature=0.2)
    expected = jaxfuse.fuse_groups(*(t.contiguous().numpy() for t in strided), template="gaussian", temperature=0.2)
    assert_equal_to_numpy(fused, expected)

    segments, scores, weights, valid = proposals
    transposed = segments.transpose(0, 1).contiguous().transpose(0, 1)
    assert not transposed.is_contiguous()
    assert_equal_to_numpy(
        jaxfuse.fuse_proposals(transposed, scores, weights, valid, temperature=0.2),
        jaxfuse.fuse_proposals(segments.numpy(), scores.numpy(), weights.numpy(), valid.numpy(), temperature=0.2),
    )


def test_tensors_that_require_grad_are_read_detached(groups):
    values, weights, mask = groups
    fused = jaxfuse.fuse_groups(values.clone().requires_grad_(True), weights, mask, template="gaussian", temperature=0.2)
    assert not fused.location.requires_grad
    expected = jaxfuse.fuse_groups(values.numpy(), weights.numpy(), mask.numpy(), template="gaussian", temperature=0.2)
    np.testing.assert_array_equal(fused.location.numpy(), expected.location)
