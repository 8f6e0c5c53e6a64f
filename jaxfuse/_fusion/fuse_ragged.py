"""Flat ragged members in, one fused instance per group out: segment form (closed forms) or size buckets."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._core.interop import ArrayKind, array_kind, from_jax, source_dtype, to_host, warn_if_narrowed
from jaxfuse._core.result_codes import RESULT_DTYPE, raise_for_results, repr_with_code_names
from jaxfuse._core.settings import DEFAULT
from jaxfuse._core.validation import choice, positive_scalar
from jaxfuse._fusion import templates
from jaxfuse._fusion.closed_forms import (
    ExponentialParameters,
    GaussianParameters,
    LaplaceParameters,
    UniformParameters,
)
from jaxfuse._fusion.flat_closed_forms import fuse_flat_members, host_inputs
from jaxfuse._fusion.fuse_groups import fuse_groups
from jaxfuse._fusion.packing import (
    check_bucket_floors,
    checked_members,
    member_layout,
    pack_ragged_buckets,
    unpack_ragged,
    unpack_ragged_members,
)
from jaxfuse._fusion.student_t import StudentTParameters
from jaxfuse._fusion.templates import SEGMENT_SUM_TEMPLATES, TEMPLATES
from jaxfuse._fusion.weights import clipped_temperature
from jaxfuse._runtime.compilation_cache import ensure_compilation_cache

_PARAMETER_TYPES = {
    "gaussian": GaussianParameters,
    "uniform": UniformParameters,
    "exponential": ExponentialParameters,
    "laplace": LaplaceParameters,
    "student_t": StudentTParameters,
}


class RaggedFusion(NamedTuple):
    """One fused instance per group of flat ragged members.

    Attributes:
        location: ``[num_groups, K]`` the fused value of each coordinate (zero
            where ``result`` is ``EMPTY_GROUP`` or a failure code).
        parameters: the template's parameter NamedTuple
            (:class:`GaussianParameters`, ...), fields ``[num_groups, K]``.
        probabilities: ``[N]`` each member's sampling probability g_k within
            its group, in the caller's member order.
        result: ``[num_groups]`` int32 :class:`ResultCode` of each group.
        steps: ``[num_groups]`` int32 iterations taken (zero for closed forms).
        group_ids: ``[num_groups]`` numpy array, the caller's id of each row:
            ascending ``group_ids``, or ``0 .. len(lengths) - 1``.
    """

    location: Any
    parameters: Any
    probabilities: Any
    result: Any
    steps: Any
    group_ids: Any

    __repr__ = repr_with_code_names  # result codes by name; still a NamedTuple (a pytree)


def _check_float(x, name: str) -> None:
    dtype = source_dtype(x, name)
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"`{name}` must be a floating-point array, got dtype {dtype}")


def fuse_ragged(
    values,
    weights,
    group_ids=None,
    *,
    lengths=None,
    template: str = "gaussian",
    temperature=DEFAULT.temperature,
    throw: bool = False,
    min_members: int = 2,
    min_slots: int = 1 << 14,
    merge_slots: int = 1 << 14,
    max_slots: int = 1 << 20,
    **template_options,
) -> RaggedFusion:
    r"""Fuse flat ragged members into one instance per group.

    The closed forms (``"gaussian"``, ``"uniform"``, ``"exponential"``) are
    computed in segment form on the flat members (:mod:`jaxfuse._fusion.flat_closed_forms`):
    members sorted by group (no sort when they already come group by group),
    a segment max of the weights, then one segment sum of every moment, in
    one program with no padded groups. Its shapes are bucketed (members: 8
    sizes an octave, at least 2^14; groups: powers of two, at least 2^12), so
    one compile per bucket and input order: 1 for 200,000 Zipf groups.

    Laplace and Student-t go by size buckets: members are split into
    power-of-two size buckets (:func:`pack_ragged`), each bucket is fused by
    :func:`fuse_groups` and the results come back in the caller's group
    order. Padding stays under about 4x the members whatever the size skew,
    and each bucket's shape is a power of two, so varying sizes reuse the
    compiled programs: one per (rows, capacity) shape met, at most
    ``log2(largest group / min_members) + 1`` per call
    (``benchmarks/test_bench_ragged.py``).

    Each group's result equals fusing that group alone (see
    :func:`fuse_groups` for the templates and their maths).

    Args:
        values: ``[N, K]`` (or ``[N]``, K = 1) float member values.
        weights: ``[N]`` float softmax logits, often the members' scores.
        group_ids: ``[N]`` int group label of each member, in any order.
        lengths: ``[num_groups]`` int sizes of contiguous groups (give this or
            ``group_ids``); a zero length is an ``EMPTY_GROUP``.
        template: ``"gaussian"``, ``"uniform"``, ``"exponential"``,
            ``"laplace"`` or ``"student_t"``.
        temperature: positive scalar T (default 0.2).
        throw: raise ``RuntimeError`` when a non-empty group failed, instead of
            reporting it in ``result``.
        min_members, min_slots, merge_slots, max_slots: bucket floors,
            merging and splitting of the size-bucketed path (Laplace,
            Student-t), see :func:`pack_ragged`; checked for every template.
        **template_options: as for :func:`fuse_groups` (``df``, ``max_steps``,
            ... for ``"student_t"``).

    Returns:
        A :class:`RaggedFusion`: numpy arrays for numpy input, JAX arrays for
        JAX input, torch tensors for torch input.

    Raises:
        TypeError: non-floating ``values``/``weights``, non-integer
            ``group_ids``/``lengths``, unknown template options.
        ValueError: mismatched shapes, both or neither of ``group_ids`` and
            ``lengths``, ``lengths`` not summing to N, an unknown
            ``template``, ``temperature <= 0``.

    Example:
        >>> import numpy as np, jaxfuse
        >>> values = np.array([[10., 20.], [12., 22.], [80., 90.]], np.float32)
        >>> fused = jaxfuse.fuse_ragged(values, np.zeros(3, np.float32), np.array([7, 7, 3]))
        >>> fused.group_ids, fused.location
        (array([3, 7]), array([[80., 90.],
               [11., 21.]], dtype=float32))
    """
    ensure_compilation_cache()  # before this call's first compilation
    kind = array_kind(values, weights)
    for name, x in (("values", values), ("weights", weights), ("group_ids", group_ids), ("lengths", lengths)):
        if isinstance(x, jax.core.Tracer):
            raise TypeError(f"`{name}` is traced: fuse_ragged packs on the host, so call it outside jit "
                            "(inside, use fuse_groups on arrays packed beforehand by pack_ragged)")
    _check_float(values, "values")
    _check_float(weights, "weights")
    choice(template, "template", TEMPLATES)
    temperature = positive_scalar(temperature, "temperature")
    if isinstance(temperature, jax.core.Tracer):
        raise TypeError("`temperature` is traced: fuse_ragged packs on the host, so call it outside jit")
    templates.template_options(template, template_options)  # errors before any packing

    host_ids, host_lengths = (None if x is None else to_host(x) for x in (group_ids, lengths))
    check_bucket_floors(min_members, min_slots, merge_slots, max_slots)
    if template in SEGMENT_SUM_TEMPLATES:
        out = _fuse_segments(to_host(values), to_host(weights), host_ids, host_lengths, template, temperature,
                             jnp.result_type(source_dtype(values, "values"), source_dtype(weights, "weights")))
        warn_if_narrowed(np.result_type(source_dtype(values, "values"), source_dtype(weights, "weights")))
        return _finish(out, kind, throw)

    packed = pack_ragged_buckets(to_host(values), to_host(weights), host_ids, host_lengths, min_members, min_slots, merge_slots,
                          max_slots, with_index=False)
    warn_if_narrowed(np.result_type(source_dtype(values, "values"), source_dtype(weights, "weights")))
    # device_put of the aligned packed buffers is zero-copy on CPU (fuse_groups' jnp.asarray would copy them).
    fused = [fuse_groups(*jax.device_put((batch.values, batch.weights, batch.mask)), template=template,
                         temperature=temperature, **template_options) for batch in packed.batches]
    dtype = fused[0].location.dtype if fused else jnp.result_type(source_dtype(values, "values"),
                                                                  source_dtype(weights, "weights"))
    coordinates = 1 if np.ndim(values) == 1 else np.shape(values)[1]

    def per_group(field, empty_shape, empty_dtype):
        if not fused:
            return np.zeros((packed.group_ids.size,) + empty_shape, empty_dtype)
        return unpack_ragged([field(f) for f in fused], packed)

    parameter_type = _PARAMETER_TYPES[template]
    parameters = parameter_type(*(
        per_group(lambda f, i=i: f.parameters[i], (coordinates,), dtype) for i in range(len(parameter_type._fields))
    ))
    probabilities = (unpack_ragged_members([f.probabilities for f in fused], packed) if fused
                     else np.zeros(packed.member_slot.size, dtype))
    out = RaggedFusion(
        location=per_group(lambda f: f.location, (coordinates,), dtype),
        parameters=parameters,
        probabilities=probabilities,
        result=per_group(lambda f: f.result, (), np.int32).astype(RESULT_DTYPE),
        steps=per_group(lambda f: f.steps, (), np.int32),
        group_ids=packed.group_ids,
    )
    return _finish(out, kind, throw)


def _fuse_segments(values, weights, group_ids, lengths, template: str, temperature, dtype) -> RaggedFusion:
    """The closed forms on the flat members in segment form (:mod:`jaxfuse._fusion.flat_closed_forms`): numpy results."""
    values, weights = checked_members(values, weights)
    layout = member_layout(values.shape[0], group_ids, lengths)
    temperature = np.asarray(clipped_temperature(temperature, dtype), dtype)
    fused = fuse_flat_members(*jax.device_put(host_inputs(values, weights, layout, dtype)), temperature,
                           template=template)
    groups, members = layout.sizes.size, values.shape[0]

    def per_group(x):  # copies: the device's host buffers are read-only
        return np.array(np.asarray(x)[:groups])

    return RaggedFusion(
        location=per_group(fused.location),
        parameters=jax.tree_util.tree_map(per_group, fused.parameters),
        probabilities=np.array(np.asarray(fused.probabilities)[:members]),
        result=per_group(fused.result),
        steps=np.zeros(groups, np.int32),
        group_ids=layout.group_ids,
    )


def _finish(out: RaggedFusion, kind: ArrayKind, throw: bool) -> RaggedFusion:
    """Raise for failed groups when asked; numpy results converted to the caller's array kind."""
    if throw:
        raise_for_results(out.result)
    if kind is ArrayKind.NUMPY:
        return out
    # The labels stay numpy: without x64 JAX would narrow int64 ids to int32.
    converted = from_jax(jax.tree_util.tree_map(jnp.asarray, out._replace(group_ids=None)), kind)
    return converted._replace(group_ids=out.group_ids)
