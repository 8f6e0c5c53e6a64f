r"""Closed-form template fits for one padded group (supplement section 1.1).

Every kernel here fuses one group: ``values [M, K]`` (K coordinates per member,
each fused separately with the same weights), ``probabilities [M]`` (the g_k,
zero in padding) and ``mask [M]``. They return the fitted parameters, each a
``[K]`` array, and are batched with ``jax.vmap`` by :mod:`jaxfuse._fusion.fuse_groups`.

Per-group sums are taken relative to the most probable member, so that
coordinates far from zero (frame indices near 1e6 in float32) lose no
precision to cancellation, and the limit T -> 0 returns that member's value
exactly (the batched Gaussian trades the first for one pass less; see
:func:`gaussian_fit_batched`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class GaussianParameters(NamedTuple):
    r"""Gaussian fit: minimiser of :math:`-\sum_k g_k \log N(x_k; \mu, \sigma^2)`.

    Attributes:
        location: ``[..., K]`` :math:`\mu = \sum_k g_k x_k` (eq. 4), the fused value.
        scale: ``[..., K]`` :math:`\sigma`, the weighted standard deviation. The
            supplement's eq. (1) drops the 1/2 of the exponent (erratum 1); with
            the standard density the optimum is this standard deviation.
    """

    location: jax.Array
    scale: jax.Array


class UniformParameters(NamedTuple):
    r"""Uniform fit: the shortest support holding every member (erratum 2).

    Attributes:
        low: ``[..., K]`` :math:`a = \min_k x_k`.
        high: ``[..., K]`` :math:`b = \max_k x_k`. The fused value is (a + b) / 2;
            the weights play no part.
    """

    low: jax.Array
    high: jax.Array


class ExponentialParameters(NamedTuple):
    r"""Exponential fit on :math:`x - \min_k x_k` (eqs. 8-12).

    Attributes:
        origin: ``[..., K]`` :math:`\min_k x_k`.
        rate: ``[..., K]`` :math:`\lambda = 1 / \sum_k g_k (x_k - \min x)` (eq. 11);
            ``+inf`` when every member sits at the origin (a point mass). The fused
            value origin + 1/rate equals the Gaussian location (erratum 3).
    """

    origin: jax.Array
    rate: jax.Array


class LaplaceParameters(NamedTuple):
    r"""Laplace fit, a template beyond the paper.

    Attributes:
        location: ``[..., K]`` the lower weighted median, the minimiser of
            :math:`\sum_k g_k |x_k - \mu|` (any point between the lower and upper
            weighted medians is optimal when the cumulative weight hits exactly 1/2).
        scale: ``[..., K]`` :math:`b = \sum_k g_k |x_k - \mu|`.
    """

    location: jax.Array
    scale: jax.Array


@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(max(x, 0))`` with a finite (zero) derivative at zero.

    A custom JVP rather than ``where(x > 0, sqrt(where(x > 0, x, 1)), 0)``: with
    ``x`` used twice, XLA recomputes the reduction producing it for each use.
    """
    return jnp.sqrt(jnp.maximum(x, 0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (tangent,) = primals, tangents
    root = safe_sqrt(x)
    positive = root > 0
    return root, jnp.where(positive, tangent / (2 * jnp.where(positive, root, 1)), 0)


def safe_reciprocal(x: jax.Array) -> jax.Array:
    """``1 / x`` for positive ``x``, ``+inf`` at zero, with finite gradients everywhere."""
    positive = x > 0
    return jnp.where(positive, 1 / jnp.where(positive, x, 1), jnp.inf)


def most_probable_value(values: jax.Array, probabilities: jax.Array) -> jax.Array:
    """``[K]`` the values of the member with the highest probability (first on ties)."""
    return values[jnp.argmax(probabilities)]


def masked_extremes(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``([K], [K])`` minimum and maximum over real members, without infinite sentinels."""
    # Padding takes a real member's value, so it cannot win either extreme.
    anchor = values[jnp.argmax(mask)]
    filled = jnp.where(mask[:, None], values, anchor)
    return jnp.min(filled, axis=0), jnp.max(filled, axis=0)


def weighted_mean(values: jax.Array, probabilities: jax.Array, mask: jax.Array, origin: jax.Array) -> jax.Array:
    r"""``origin + sum_k g_k (x_k - origin)``, summed as offsets for precision."""
    offsets = jnp.where(mask[:, None], values - origin, 0)
    return origin + probabilities @ offsets


def gaussian_fit(values, probabilities, mask) -> GaussianParameters:
    reference = most_probable_value(values, probabilities)
    offsets = jnp.where(mask[:, None], values - reference, 0)
    mean_offset = probabilities @ offsets
    variance = probabilities @ jnp.square(offsets - mean_offset)
    return GaussianParameters(location=reference + mean_offset, scale=safe_sqrt(variance))


def gaussian_fit_batched(values, probabilities) -> GaussianParameters:
    """Gaussian fit of a batch ``values [B, M, K]``, ``probabilities [B, M]`` (zero in padding).

    The mean is a batched contraction of the raw values (not of offsets from
    the most probable member, as the per-group kernels take them): one pass
    less over the values, for an absolute error of a few ulps of the largest
    coordinate, e.g. about 0.1 frame at frame indices near 1e6 in float32. The
    variance is taken about that mean, not as E[x^2] - E[x]^2, which would
    cancel catastrophically. Padding must be finite: it enters with weight zero.
    """
    location = jnp.einsum("bm,bmk->bk", probabilities, values)
    variance = jnp.sum(probabilities[..., None] * jnp.square(values - location[:, None, :]), axis=1)
    return GaussianParameters(location=location, scale=safe_sqrt(variance))


def uniform_fit(values, probabilities, mask) -> UniformParameters:
    del probabilities  # erratum 2: the support must hold every member, whatever its weight
    low, high = masked_extremes(values, mask)
    return UniformParameters(low=low, high=high)


def uniform_location(parameters: UniformParameters) -> jax.Array:
    # Halves first: (low + high) / 2 and low + (high - low) / 2 overflow near the
    # dtype's limit; halving is exact, so this rounds once, like (low + high) / 2.
    return parameters.low / 2 + parameters.high / 2


def exponential_fit(values, probabilities, mask) -> ExponentialParameters:
    origin, _ = masked_extremes(values, mask)
    mean_offset = probabilities @ jnp.where(mask[:, None], values - origin, 0)
    return ExponentialParameters(origin=origin, rate=safe_reciprocal(mean_offset))


def exponential_location(parameters: ExponentialParameters) -> jax.Array:
    mean_offset = jnp.where(jnp.isinf(parameters.rate), 0, 1 / parameters.rate)
    return parameters.origin + mean_offset


PAIRWISE_LIMIT = 64
"""Groups up to this size compare members pairwise (Student-t's heaviest value) instead of sorting them.

XLA's CPU sort of many short rows costs several times numpy's; M^2 comparisons
reduced by a contraction are cheaper for the group sizes TAL produces."""


SNAPPED_BISECTION_LIMIT = 64
"""Groups up to this size move the bisection's ends on to member keys after each pass.

Two more reductions per pass, but the bracket closes once it holds one member
(about log2 M passes on TAL data instead of about 30): measured 20-30% faster at
M = 32, slower at M = 256, where the worst lane of a batch still needs many passes."""


def _ordered_keys(values: jax.Array) -> jax.Array:
    """Signed integers of the values' width whose order is the values' order (-0 and +0 one key)."""
    key_dtype = jnp.dtype(f"int{8 * values.dtype.itemsize}")
    bits = jax.lax.bitcast_convert_type(jnp.where(values == 0, jnp.zeros_like(values), values), key_dtype)
    # A negative float's magnitude grows with its bits: flip them below the sign bit.
    return jnp.where(bits < 0, bits ^ jnp.iinfo(key_dtype).max, bits)


def weighted_quantiles(values: jax.Array, probabilities: jax.Array, mask: jax.Array, levels) -> jax.Array:
    r"""``[len(levels), K]`` lower weighted quantiles of each coordinate.

    The quantile at level p is the smallest member value :math:`x_i` whose
    cumulative weight :math:`W(x_i) = \sum_{j: x_j \le x_i} g_j` reaches p
    times the total (of the actual total, so a sum that rounds to 1 - eps
    still finds its quantiles). Padding carries no probability and is never
    chosen.

    No sort: W is monotone, so the quantile is found by bisection on the
    values' order-preserving integer keys, :math:`[lo, hi]` starting at the
    smallest and largest member and halved until it holds one key (at most
    32 passes in float32, 64 in float64, each one masked sum over the members;
    small groups also move the ends on to member keys, see
    :data:`SNAPPED_BISECTION_LIMIT`).
    XLA:CPU sorts many short rows several times slower than numpy; these passes
    are sums along the minor axis (members last), which it vectorises well.
    All levels and coordinates bisect together. The result is gathered from
    ``values``, so gradients reach the member(s) holding it.
    """
    levels_count, coordinates = len(levels), values.shape[1]
    snap = values.shape[0] <= SNAPPED_BISECTION_LIMIT
    keys = _ordered_keys(values.T)  # [K, M]: members minor
    key_info = jnp.iinfo(keys.dtype)
    # Padding takes the largest key, which no finite value has: it is never at or below a bracket end.
    keys = jnp.where(mask, keys, key_info.max)
    total = jnp.sum(probabilities)
    thresholds = jnp.stack([level * total for level in levels])[:, None]  # [L, 1]
    low = jnp.broadcast_to(jnp.min(keys, axis=-1), (levels_count, coordinates))
    high = jnp.broadcast_to(jnp.max(jnp.where(mask, keys, key_info.min), axis=-1), (levels_count, coordinates))

    def halve(bracket):
        low, high = bracket
        middle = (low >> 1) + (high >> 1) + (low & high & 1)  # floor((low + high) / 2) without overflow
        at_or_below = keys <= middle[..., None]
        weight = jnp.sum(jnp.where(at_or_below, probabilities, 0), axis=-1)
        reached = weight >= thresholds
        if not snap:
            return jnp.where(reached, low, middle + 1), jnp.where(reached, middle, high)
        # W is constant between member keys: the ends may move on to the nearest members.
        largest_below = jnp.max(jnp.where(at_or_below, keys, key_info.min), axis=-1)
        smallest_above = jnp.min(jnp.where(at_or_below, key_info.max, keys), axis=-1)
        return jnp.where(reached, low, smallest_above), jnp.where(reached, largest_below, high)

    _, quantile_keys = jax.lax.while_loop(lambda bracket: jnp.any(bracket[0] < bracket[1]), halve, (low, high))
    at_quantile = keys == quantile_keys[..., None]  # [L, K, M]
    return jnp.min(jnp.where(at_quantile, values.T, jnp.inf), axis=-1)


def weighted_median(values: jax.Array, probabilities: jax.Array, mask: jax.Array) -> jax.Array:
    r"""``[K]`` the lower weighted median of each coordinate (:func:`weighted_quantiles` at 1/2)."""
    return weighted_quantiles(values, probabilities, mask, (0.5,))[0]


def laplace_fit(values, probabilities, mask) -> LaplaceParameters:
    median = jax.lax.stop_gradient(weighted_median(values, probabilities, mask))
    # Re-gather the median member's value so gradients flow to it (the selection does not).
    is_median = mask[:, None] & (values == median)
    median_member = jnp.argmax(is_median, axis=0)
    location = jnp.take_along_axis(values, median_member[None], axis=0)[0]
    scale = probabilities @ jnp.where(mask[:, None], jnp.abs(values - location), 0)
    return LaplaceParameters(location=location, scale=scale)
