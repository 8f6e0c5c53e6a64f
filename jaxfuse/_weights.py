"""Masked, temperature-scaled softmax: the sampling probabilities g_k of the paper."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
    unnormalised = jnp.where(finite_mask, jnp.exp(jnp.where(finite_mask, weights - largest, 0) / temperature), 0)
    total = jnp.sum(unnormalised, axis=-1, keepdims=True)
    return unnormalised / jnp.maximum(total, jnp.finfo(weights.dtype).tiny)
