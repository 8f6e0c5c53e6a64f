"""Data-parallel :func:`jaxfuse.fuse_proposals` over every available device.

Items ((video, class) pairs) are independent, so the item axis is split over a
1-D device mesh (axis name ``"items"``): the flattened items are padded with
invalid items to a multiple of the device count and placed with
``NamedSharding(mesh, PartitionSpec("items"))``; each device groups and fuses
its own block, and the per-device results are assembled into arrays with the
same sharding. Nothing is exchanged between devices.

Why each block goes through the single-device :func:`jaxfuse.fuse_proposals`
(one call per device, dispatched from one thread per device) rather than one
``shard_map`` program: the results must be those of one device, bit for bit.
A partitioned (SPMD) program is optimised differently by XLA: measured on
4 virtual CPU devices with jax 0.10.2, the single-device program computes the
softmax-weighted means as ``sums * (1 / total)`` while the partitioned one
keeps ``sums / total``, so fused scores and Gaussian spreads differed in the
last bit. The price of the per-device programs is one compilation per device
(concurrent, one thread each) instead of one in all.

A block's results equal the rows of the whole batch for every closed-form
template, NMS and Soft-NMS: their arithmetic is per item and does not depend
on how many items share a call. ``"laplace"`` and ``"student_t"`` pad each
call's groups to its largest group, so a block may be padded differently from
the whole batch and its values may differ in the last bits there.

Test without accelerators: ``XLA_FLAGS=--xla_force_host_platform_device_count=4
JAX_PLATFORMS=cpu`` gives four virtual CPU devices.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxfuse._core.interop import ArrayKind, array_kind
from jaxfuse._proposals.fuse_proposals import (
    FusedProposals,
    check_method_options,
    fuse_proposals,
    resolve_fusion_settings,
)
from jaxfuse._proposals.grouping import raise_for_value_problems, validate_proposals, value_problems
from jaxfuse._runtime.compilation_cache import ensure_compilation_cache

ITEMS_AXIS = "items"
"""The name of the mesh axis that the items are split over."""

# fuse_proposals' own defaults, read once, so that the two entry points cannot drift apart.
_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(fuse_proposals).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}


def item_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with the axis ``"items"`` over ``devices`` (default: all of ``jax.devices()``).

    Args:
        devices: the devices to split items over, in order.

    Returns:
        A :class:`jax.sharding.Mesh`.

    Raises:
        ValueError: an empty device list, or a device named twice.

    Example:
        >>> import jax, jaxfuse
        >>> mesh = jaxfuse.item_mesh()
        >>> mesh.axis_names, mesh.size == len(jax.devices())
        (('items',), True)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("`devices` must name at least one device")
    if len(set(devices)) != len(devices):
        raise ValueError(f"`devices` must not repeat a device, got {devices}")
    return Mesh(np.asarray(devices, dtype=object), (ITEMS_AXIS,))


def _check_arguments(options: dict) -> None:
    """Reject what :func:`fuse_proposals` would reject, before any transfer or thread."""
    settings = {name: options[name] for name in ("overlap_threshold", "overlap", "discrete", "method", "temperature")}
    method = resolve_fusion_settings(options["preset"], **settings).method
    check_method_options(method, {name: value for name, value in options.items() if name not in _DEFAULTS})


def _blocks(array: jax.Array, mesh: Mesh) -> list[jax.Array]:
    """The single-device block of ``array`` on each device of ``mesh``, in mesh order."""
    by_device = {shard.device: shard.data for shard in array.addressable_shards}
    return [by_device[device] for device in mesh.devices.flat]


def fuse_proposals_sharded(
    segments,
    scores,
    weights=None,
    valid=None,
    *,
    devices: Sequence[jax.Device] | None = None,
    **fuse_options,
) -> FusedProposals:
    """:func:`jaxfuse.fuse_proposals` with the items split over several devices (data parallel).

    The leading (item) dimensions are flattened into one item axis, padded
    with invalid items to a multiple of the device count, and placed with
    ``NamedSharding(mesh, PartitionSpec("items"))`` on a 1-D mesh over
    ``devices``. Every device groups and fuses its own items with the
    single-device program, so the results equal :func:`fuse_proposals` on
    one device (see the module notes for the padded templates).

    Args:
        segments: ``[..., N, 2]`` (start, end), as for :func:`fuse_proposals`.
        scores: ``[..., N]`` ordering scores.
        weights: ``[..., N]`` softmax logits, or None (the scores).
        valid: ``[..., N]`` bool, or None (all valid).
        devices: the devices to use (default ``jax.devices()``), in mesh order.
        **fuse_options: the keyword arguments of :func:`fuse_proposals`
            (``method``, ``temperature``, ``overlap_threshold``, ``overlap``,
            ``discrete`` and the method's options), with the same defaults.

    Returns:
        The :class:`jaxfuse.FusedProposals` of :func:`fuse_proposals`, without
        the padding: numpy arrays for numpy input, torch tensors for torch
        input, and for JAX input JAX arrays with the leading item dimension
        sharded over the mesh (when the number of items is not a multiple of
        the device count, removing the padding leaves JAX to place the
        unpadded arrays; pad the items yourself to keep the sharding).

    Raises:
        TypeError, ValueError: as :func:`fuse_proposals`, before any block is
            fused; also for an empty or repeated ``devices``.

    Example:
        >>> import numpy as np
        >>> fused = fuse_proposals_sharded(np.array([[[0., 10.], [2., 12.], [40., 50.]]], np.float32),
        ...                                np.array([[0.9, 0.8, 0.5]], np.float32), temperature=1.0)
        >>> fused.count.tolist(), fused.group.tolist()
        ([2], [[0, 0, 1]])
    """
    ensure_compilation_cache()  # before this call's first compilation
    options = {**_DEFAULTS, **fuse_options}
    kind = array_kind(segments, scores, weights, valid)
    mesh = item_mesh(devices)
    _check_arguments(options)
    inputs = validate_proposals(segments, scores, valid, extra=[("weights", weights)])
    if inputs.check_on_device:
        # Once on the whole input, so that an error names the index in the caller's shape.
        extra = [] if inputs.extra[0] is None else [("weights", inputs.extra[0])]
        found = value_problems(inputs.segments, inputs.scores, inputs.valid, [array for _, array in extra])
        raise_for_value_problems(found, inputs.segments, inputs.scores, inputs.valid, extra)

    batch_shape, size = inputs.scores.shape[:-1], inputs.scores.shape[-1]
    items = math.prod(batch_shape)
    num_devices = mesh.devices.size
    padded_items = -(-max(items, 1) // num_devices) * num_devices
    sharding = NamedSharding(mesh, PartitionSpec(ITEMS_AXIS))

    def place(x, *tail):
        if x is None:
            return [None] * num_devices
        x = x.reshape(items, size, *tail)
        # Padding rows are invalid items: they join no group and change nothing.
        x = jnp.pad(x, [(0, padded_items - items)] + [(0, 0)] * (x.ndim - 1))
        return _blocks(jax.device_put(x, sharding), mesh)

    blocks = list(zip(place(inputs.segments, 2), place(inputs.scores), place(inputs.extra[0]), place(inputs.valid)))
    # jax's x64 switch is thread-local: the worker threads must compute in the caller's mode.
    x64 = bool(jax.config.jax_enable_x64)

    def fuse_block(block):
        with jax.enable_x64(x64):
            return fuse_proposals(*block, **options)

    # One thread per device: fuse_proposals may wait on its device (value
    # checks, group sizes), and the waits must overlap for the devices to run
    # at the same time.
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_devices) as pool:
        results = list(pool.map(fuse_block, blocks))

    if kind is not ArrayKind.JAX:
        # Host output: the blocks are copied out and joined; no global array needed.
        fused = jax.tree.map(lambda *leaves: np.concatenate([np.asarray(x) for x in leaves])[:items], *results)
    else:

        def assemble(*leaves):
            shape = (padded_items,) + leaves[0].shape[1:]
            return jax.make_array_from_single_device_arrays(shape, sharding, list(leaves))

        fused = jax.tree.map(assemble, *results)
        if padded_items != items:
            fused = jax.tree.map(lambda x: x[:items], fused)
    if batch_shape != (items,):
        fused = jax.tree.map(lambda x: x.reshape(batch_shape + x.shape[1:]), fused)
    if kind is ArrayKind.TORCH:
        import torch

        return jax.tree.map(torch.from_numpy, fused)
    return fused
