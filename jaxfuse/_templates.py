r"""Closed-form template fits for one padded group (supplement section 1.1).

Every kernel here fuses one group: ``values [M, K]`` (K coordinates per member,
each fused separately with the same weights), ``probabilities [M]`` (the g_k,
zero in padding) and ``mask [M]``. They return the fitted parameters, each a
``[K]`` array, and are batched with ``jax.vmap`` by :mod:`jaxfuse._fuse`.

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
"""Groups up to this size compare members pairwise instead of sorting them.

XLA's CPU sort of many short rows costs several times numpy's; M^2 comparisons
reduced by a contraction are cheaper for the group sizes TAL produces."""


def weighted_quantiles(values: jax.Array, probabilities: jax.Array, mask: jax.Array, levels) -> jax.Array:
    r"""``[len(levels), K]`` lower weighted quantiles of each coordinate.

    The quantile at level p is the smallest member value :math:`x_i` whose
    cumulative weight :math:`\sum_{j: x_j \le x_i} g_j` reaches p times the
    total (of the actual total, so a sum that rounds to 1 - eps still finds
    its quantiles). Padding carries no probability and is never chosen. All
    levels share one cumulative-weight pass.
    """
    _, high = masked_extremes(values, mask)
    total = jnp.sum(probabilities)
    thresholds = [level * total for level in levels]
    if values.shape[0] <= PAIRWISE_LIMIT:
        at_or_below = (values[None, :, :] <= values[:, None, :]) & mask[None, :, None]
        cumulative = jnp.einsum("ijk,j->ik", at_or_below.astype(values.dtype), probabilities)
        return jnp.stack(
            [jnp.min(jnp.where(mask[:, None] & (cumulative >= t), values, high), axis=0) for t in thresholds]
        )
    sort_keys = jnp.where(mask[:, None], values, high)
    order = jnp.argsort(sort_keys, axis=0, stable=True)
    sorted_values = jnp.take_along_axis(sort_keys, order, axis=0)
    cumulative = jnp.cumsum(probabilities[order], axis=0)
    return jnp.stack(
        [jnp.take_along_axis(sorted_values, jnp.argmax(cumulative >= t, axis=0)[None], axis=0)[0] for t in thresholds]
    )


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
