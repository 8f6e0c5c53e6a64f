"""Masked, temperature-scaled softmax: the sampling probabilities g_k of the paper."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def member_probabilities(weights: jax.Array, mask: jax.Array, temperature) -> jax.Array:
    r"""Sampling probabilities of one or many padded groups (eq. 2 of the supplement).

    .. math:: g_k = \frac{\exp(w_k / T)}{\sum_{i \in \text{group}} \exp(w_i / T)}

    computed as ``exp((w_k - max_i w_i) / T)`` so that it is exact and free of
    overflow for tiny temperatures (the pseudo-label schedule goes down to
    ``T = 0.0016`` in float32). Softmax is shift invariant, which is also why the
    exponential template's ``(q_k - min q) / T`` logits (erratum 3) give the same
    probabilities.

    Args:
        weights: ``[..., M]`` logits.
        mask: ``[..., M]`` bool, which members are real.
        temperature: positive scalar (or array broadcastable to ``[...]``).

    Returns:
        ``[..., M]`` probabilities, zero in padding, summing to one over the real
        members of each non-empty group (all zeros for an empty group).

    Example:
        >>> import numpy as np, jaxfuse
        >>> jaxfuse.member_probabilities(np.array([[1.0, 1.0, 5.0]], np.float32), np.array([[True, True, False]]), 0.2)
        Array([[0.5, 0.5, 0. ]], dtype=float32)
    """
    temperature = jnp.asarray(temperature, weights.dtype)
    if temperature.ndim:
        temperature = temperature[..., None]
    finite_mask = mask & jnp.isfinite(weights)
    # Each reduction below has a single consumer: XLA recomputes a reduction
    # for every consumer it fuses into, which doubled the cost of this function.
    # The floor for an empty group is the dtype's lowest value (never -inf), and
    # a zero total divides zeros by the smallest normal number.
    largest = jnp.max(jnp.where(finite_mask, weights, jnp.finfo(weights.dtype).min), axis=-1, keepdims=True)
    # The largest logits get exactly 0, never (w - max) / T = 0 / T: XLA on CPU
    # flushes a subnormal T (1e-39 in float32) to zero, and 0 / 0 was NaN. The
    # others are -inf there, so T -> 0 gives the highest-weight members exactly.
    below = jnp.where(finite_mask, weights - largest, 0)
    logits = jnp.where(below == 0, 0, below / jnp.where(below == 0, 1, temperature))
    unnormalised = jnp.where(finite_mask, jnp.exp(logits), 0)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    return unnormalised / jnp.maximum(total, jnp.finfo(weights.dtype).tiny)


def clipped_temperature(temperature, dtype):
    """The temperature clipped into ``dtype``'s positive normal range.

    A concrete positive T below the dtype's smallest normal number (``1e-39`` in
    float32, ``1e-8`` in float16, which even rounds to zero there) is raised to
    it: every logit difference the dtype can hold then divides to ``-inf`` or to
    far below ``log(tiny)``, so the probabilities are the exact T -> 0 limit.
    A concrete T comes back as a Python float (no device transfer: programs
    take it as a weakly typed argument, so a new value does not recompile); a
    traced T as a clipped ``dtype`` scalar. Whether a traced T was a valid
    temperature at all is :func:`temperature_is_valid`.
    """
    info = jnp.finfo(dtype)
    if isinstance(temperature, jax.core.Tracer):
        return jnp.clip(jnp.asarray(temperature, dtype), info.tiny, info.max)
    return min(max(float(temperature), float(info.tiny)), float(info.max))


def temperature_is_valid(temperature) -> jax.Array:
    """Whether a (traced) scalar temperature is positive and finite.

    Read from its bits, not by ``T > 0``: XLA on CPU treats a subnormal operand
    of a comparison as zero, and a subnormal T is a valid (tiny) temperature.
    """
    temperature = jnp.asarray(temperature)
    bits_type = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[temperature.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(temperature, bits_type)
    infinity = jax.lax.bitcast_convert_type(jnp.asarray(np.inf, temperature.dtype), bits_type)
    # A positive float's bits, as a signed integer, lie in (0, bits of +inf); NaNs and negatives do not.
    return (bits > 0) & (bits < infinity)
