"""Closed-form fusion of flat ragged members in segment form: no padded groups, one program per call.

:func:`jaxfuse.fuse_ragged` sends the Gaussian, uniform and exponential
templates here. Members lie group after group (sorted once on the host by
:func:`jaxfuse._fusion.packing.member_layout`, or gathered into that order in the program),
each carries its group's index, and segment reductions give every group's
moments in O(N) work whatever the size skew: no bucket holds padding slots,
and there is one dispatch instead of one per size bucket. The maths is
:mod:`jaxfuse._fusion.closed_forms`' per group, and :func:`jaxfuse._proposals.group_fusion._group_means`'
for proposals:

* ``g_k = exp((w_k - max w) / T) / sum_i exp((w_i - max w) / T)``: a segment
  max, then segment sums; free of overflow for tiny T;
* values are summed as offsets from the group's most probable member, so
  that coordinates far from zero lose no precision to cancellation and the
  Gaussian's one-pass variance about it stays within (1 + n) ulps;
* Gaussian: ``mu = ref + sum g (x - ref)``, ``sigma^2 = sum g (x - mu)^2``
  (two passes, never ``E[x^2] - E[x]^2``); uniform: segment min and max;
  exponential: origin = segment min, ``1 / rate = sum g (x - origin)``.

Result codes are :func:`jaxfuse.fuse_groups`': ``INVALID_OPTION`` (a traced
temperature that is not positive and finite), ``EMPTY_GROUP``,
``NONFINITE_INPUT`` (a member with a non-finite value or weight), ``OVERFLOW``
(finite input, a result the dtype cannot hold); failed groups get zeros.

Shapes are bucketed so that varying requests reuse the compiled programs:
the member count is padded up to one of 8 sizes per octave (at most 12.5%
padding, at least 2^14 slots) and the group count to a power of two (at least
2^12). Padding members carry an out-of-range group index, which segment
reductions drop.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfuse._core.padding import bucket_size, eight_per_octave
from jaxfuse._core.result_codes import ResultCode, group_result
from jaxfuse._fusion import closed_forms
from jaxfuse._fusion.packing import aligned_zeros
from jaxfuse._fusion.templates import TEMPLATES, representable
from jaxfuse._fusion.weights import temperature_is_valid

MIN_MEMBERS = 1 << 14
MIN_GROUPS = 1 << 12


def padded_members(n: int) -> int:
    """Members rounded up to 8 sizes per octave, at least 2^14 (:func:`jaxfuse._core.padding.eight_per_octave`)."""
    return eight_per_octave(n, MIN_MEMBERS)


def padded_groups(n: int) -> int:
    """The power of two holding ``n`` groups, at least 2^12."""
    return bucket_size(n, MIN_GROUPS)


class GroupMoments(NamedTuple):
    """What a segment-sum closed form needs of each group ``[groups, K]``, relative to a reference member.

    Sums are taken as offsets from a member of the group (its most probable one
    here, its leader in :mod:`jaxfuse._proposals.group_fusion`), which keeps
    them small: large coordinates lose no precision to cancellation.

    Attributes:
        reference: the reference member's values.
        mean_offset: ``sum g (x - reference)``.
        variance: ``sum g (x - mu)^2`` (the Gaussian only).
        low: the members' minimum (uniform, exponential).
        high: the members' maximum (uniform).
        nonempty: whether the group has a member (exponential: the excess of an empty group is 0).
    """

    reference: jax.Array
    mean_offset: jax.Array
    variance: jax.Array | None = None
    low: jax.Array | None = None
    high: jax.Array | None = None
    nonempty: jax.Array | bool = True


def parameters_from_moments(template: str, moments: GroupMoments):
    """The closed-form parameters of the segment-sum templates (``gaussian``, ``uniform``, ``exponential``)."""
    if template == "gaussian":
        return closed_forms.GaussianParameters(moments.reference + moments.mean_offset,
                                               closed_forms.safe_sqrt(moments.variance))
    if template == "uniform":
        return closed_forms.UniformParameters(moments.low, moments.high)
    return closed_forms.ExponentialParameters(moments.low, closed_forms.safe_reciprocal(mean_excess(moments)))


def mean_excess(moments: GroupMoments) -> jax.Array:
    """``sum g (x - min x)``, the exponential's 1 / rate, as offsets: ``(reference - min) + sum g (x - reference)``."""
    excess = jnp.where(moments.nonempty, moments.reference - moments.low, 0) + moments.mean_offset
    # inf - inf: offsets that overflowed; as an infinite excess the location overflows (rate 0), as
    # fuse_groups finds, instead of a NaN excess read as the documented point mass (rate +inf).
    return jnp.where(jnp.isnan(excess), jnp.inf, excess)


class FlatFusion(NamedTuple):
    """Per-group and per-member results of :func:`fuse_flat_members` (padded shapes).

    Attributes:
        location: ``[groups, K]`` fused values (zeros for failed or empty groups).
        parameters: the template's parameter NamedTuple, fields ``[groups, K]``.
        probabilities: ``[members]`` each member's g_k, in the input order.
        result: ``[groups]`` int32 :class:`ResultCode`.
    """

    location: jax.Array
    parameters: tuple
    probabilities: jax.Array
    result: jax.Array


@functools.partial(jax.jit, static_argnames=("template",))
def fuse_flat_members(values, weights, ids, sizes, order, temperature, *, template: str) -> FlatFusion:
    """Fuse flat members, group after group: one segment max and one segment sum of all the moments.

    Args:
        values: ``[members, K]`` member values (padding: any finite value).
        weights: ``[members]`` softmax logits.
        ids: ``[members]`` int32, each group-order position's group, ascending;
            ``groups`` (out of range: segment reductions drop it) for padding.
        sizes: ``[groups]`` int32 members per group (0: empty or padding).
        order: ``None`` when ``values`` already lie group after group; else
            ``[members]`` int32, the input position of each group-order
            position (a permutation: padding maps to itself).
        temperature: scalar T in the values' dtype (clipped into its normal
            range here; not positive and finite: ``INVALID_OPTION``).
        template: ``"gaussian"``, ``"uniform"`` or ``"exponential"``.

    Returns:
        A :class:`FlatFusion`.
    """
    size, coordinates = values.shape
    groups = sizes.shape[0]
    info = jnp.finfo(values.dtype)
    temperature_ok = temperature_is_valid(temperature)
    # A bad T is replaced by a harmless one: its groups get zeros, and no NaN is ever computed.
    temperature = jnp.where(temperature_ok, jnp.clip(temperature, info.tiny, info.max), 1)
    if order is not None:
        values, weights = values[order], weights[order]

    member = ids < groups
    at_group = jnp.minimum(ids, groups - 1)  # for gathers; padding's reads are masked out
    segment_sum = functools.partial(jax.ops.segment_sum, segment_ids=ids, num_segments=groups, indices_are_sorted=True)
    segment_max = functools.partial(jax.ops.segment_max, segment_ids=ids, num_segments=groups, indices_are_sorted=True)

    def per_member(table):  # [groups, R] -> [members, R], one column at a time (see _materialised)
        return jnp.stack([_materialised(table[:, column][at_group]) for column in range(table.shape[1])], axis=1)

    finite_values = jnp.all(jnp.isfinite(values), axis=1)
    sound = member & finite_values & jnp.isfinite(weights)
    nonempty = sizes > 0
    # Which groups hold a non-finite member: a segment reduction only when some member is.
    unsound = (member & ~sound).astype(jnp.int32)
    finite = jax.lax.cond(jnp.any(unsound > 0), lambda: segment_sum(unsound) == 0, lambda: jnp.ones(groups, bool))
    usable = nonempty & finite & temperature_ok
    # Non-finite members only make their group NONFINITE_INPUT (zeros); they must not poison the arithmetic.
    x = jnp.where((member & finite_values)[:, None], values, 0)

    largest = segment_max(_materialised(jnp.where(sound, weights, info.min)))
    largest_at = per_member(largest[:, None])[:, 0]
    # Offsets are taken from each group's most probable member c (its first on ties): then
    # (mu - c)^2 <= sigma^2 / g_c, so the Gaussian's sum g (x - c)^2 - (mu - c)^2 loses at most
    # about (1 + 1 / g_c) <= (1 + n) ulps of sigma^2. Any other member (the first, say) can sit
    # far from a mass concentrated elsewhere, and the difference then cancels to noise.
    position = jnp.arange(size, dtype=jnp.int32)
    most_probable = jax.ops.segment_min(
        jnp.where(sound & (weights == largest_at), position, size), ids, num_segments=groups, indices_are_sorted=True
    )
    # A group without a sound member has no most probable one; any finite row serves, its outputs are zeros.
    reference = x[jnp.minimum(most_probable, size - 1)]  # [groups, K]
    reference_at = per_member(reference)
    # As member_probabilities: the largest logits get exactly 0 (a subnormal T flushed to zero made 0 / 0).
    below = jnp.where(sound, weights - largest_at, 0)
    logits = jnp.where(below == 0, 0, below / jnp.where(below == 0, 1, temperature))
    unnormalised = jnp.where(sound, jnp.exp(logits), 0)
    offsets = jnp.where(member[:, None], x - reference_at, 0)
    moments = [unnormalised[:, None], unnormalised[:, None] * offsets]
    if template == "gaussian":
        moments.append(unnormalised[:, None] * jnp.square(offsets))
    sums = segment_sum(_materialised(_eight_wide(jnp.concatenate(moments, axis=1), 0)))
    total = jnp.maximum(sums[:, 0], info.tiny)
    inverse = jnp.where(usable, 1 / total, 0)
    mean_offset = sums[:, 1 : 1 + coordinates] / total[:, None]

    if template == "gaussian":
        # About the most probable member: sum g (x - c)^2 - (sum g (x - c))^2 = sum g (x - mu)^2, bounded
        # cancellation (see above; E[x^2] - E[x]^2 would cancel large coordinates catastrophically).
        squares = sums[:, 1 + coordinates : 1 + 2 * coordinates] / total[:, None]
        moments = GroupMoments(reference, mean_offset, variance=squares - jnp.square(mean_offset))
    else:
        both = segment_max(_materialised(_eight_wide(
            jnp.where(member[:, None], jnp.concatenate([-x, x], axis=1), -jnp.inf), -jnp.inf)))
        low, high = -both[:, :coordinates], both[:, coordinates : 2 * coordinates]
        moments = GroupMoments(reference, mean_offset, low=low, high=high, nonempty=nonempty[:, None])
    parameters = parameters_from_moments(template, moments)
    kernel = TEMPLATES[template]
    location = kernel.location(parameters)

    result = group_result(ResultCode.SUCCESSFUL, representable=representable(kernel, parameters, location),
                          finite=finite, nonempty=nonempty, option_ok=temperature_ok)
    kept = result == ResultCode.SUCCESSFUL
    probabilities = unnormalised * per_member(jnp.where(kept, inverse, 0)[:, None])[:, 0]
    if order is not None:
        probabilities = jnp.zeros_like(probabilities).at[order].set(probabilities, unique_indices=True)

    def zero_if_failed(leaf):
        return jnp.where(kept[:, None], leaf, jnp.zeros_like(leaf))

    return FlatFusion(zero_if_failed(location), jax.tree_util.tree_map(zero_if_failed, parameters),
                         probabilities, result)


def _materialised(x):
    """``x``, computed into a buffer of its own before its consumer.

    XLA on CPU fuses an operand's producer into a scatter or gather and then
    runs it as a generic element loop, several times slower than the plain
    scatter (2.4 M members: 64 against 11 ms for an [N, 8] segment sum).
    """
    return jax.lax.optimization_barrier(x)


def _eight_wide(rows, fill):
    """``[members, R]`` padded with ``fill`` columns to a multiple of 8.

    XLA on CPU scatters rows of 8 floats (32 bytes) several times faster than
    narrower ones (2.4 M members: [N, 8] 11 ms, [N, 4] 34 ms).
    """
    extra = -rows.shape[1] % 8
    return jnp.pad(rows, ((0, 0), (0, extra)), constant_values=fill) if extra else rows


def compile_count() -> int:
    """How many executables :func:`fuse_flat_members` has compiled in this process."""
    return fuse_flat_members._cache_size()


def host_inputs(values: np.ndarray, weights: np.ndarray, layout, dtype):
    """Padded, 64-byte aligned host buffers for :func:`fuse_flat_members`, values and weights cast to ``dtype``.

    Returns ``(values [members, K], weights, ids, sizes, order)``.
    """
    members, coordinates = values.shape
    num_groups = layout.sizes.size
    size, groups = padded_members(members), padded_groups(num_groups)
    padded_values = aligned_zeros((size, coordinates), dtype)
    padded_values[:members] = values
    padded_weights = aligned_zeros((size,), dtype)
    padded_weights[:members] = weights
    ids = np.full(size, groups, np.int32)
    ids[:members] = np.repeat(np.arange(num_groups, dtype=np.int32), layout.sizes)
    sizes = np.zeros(groups, np.int32)
    sizes[:num_groups] = layout.sizes
    order = None
    if layout.order is not None:
        order = np.arange(size, dtype=np.int32)
        order[:members] = layout.order
    return padded_values, padded_weights, ids, sizes, order
