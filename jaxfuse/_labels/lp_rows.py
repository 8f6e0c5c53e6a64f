"""The rows of the published segment-to-snippet LP, built from any segment exactly as the published code builds them.

GauFuse_WSTAL (``utils/utils.py``, ``compute_score_matrix``) fills row ``r`` of
``A`` (one row of ``L`` entries per fused segment ``[start, end, q]``) with
numpy slices::

    s, e = int(start), int(end)
    m = 0.0785 * (e - s) ** 0.9
    A[r, s:e] = 1
    A[r, max(0, int(s - m)):s] = -1
    A[r, e:min(L - 1, int(e + m + 1))] = -1

So the margin ``m`` comes from the segment as given, even when it runs past
the video; only then do the slices clip the three intervals to ``[0, L)``. A
segment ending past ``L`` keeps its long margin on the left (and has no right
margin, which would start at or after ``L - 1``). Here every row is three
breakpoint pairs ``b0 <= b1 <= b2 <= b3`` in ``[0, L]``: ``-1`` on ``[b0, b1)``,
``+1`` on ``[b1, b2)``, ``-1`` on ``[b2, b3)``.

For ``s = floor(start)`` and ``e = floor(end)`` (``int()`` of a non-negative
number; a negative coordinate is floored and its intervals clipped at 0,
where Python slices would wrap around the row), ``int(s - m) = s - ceil(m)``
and ``int(e + m + 1) = e + 1 + floor(m)``, so the rows need ``ceil(m)`` and
``floor(m)`` of the integer length ``n = e - s``:

* :func:`published_breaks_host` (concrete inputs) evaluates the published
  float64 expressions themselves, ``m`` by Python's ``**`` per distinct ``n``:
  the published rows from any input;
* :func:`published_breaks` (on device, inside ``jit``) takes ``ceil(m)`` and
  ``floor(m)`` from a float64 table for ``n <= num_snippets + 1`` (every
  segment inside the video, and all of ``pseudo_labels``) and computes ``m``
  in the input dtype beyond it (a longer segment with its start close enough
  to the video for the margin to matter: in float32 ``ceil(m)`` can then be
  off by one when ``m`` lies within about 1e-6 relative of an integer).
  Coordinates are exact below ``2**24`` in float32.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def margin_table(num_lengths: int, scale: float, power: float) -> np.ndarray:
    """``m = scale * n ** power`` for ``n = 0 .. num_lengths - 1``: Python's float64 expression, as published.

    (NumPy's vectorised ``power`` may differ from C's ``pow`` in the last bit.)
    """
    table = np.array([scale * float(n) ** power for n in range(num_lengths)], np.float64)
    table.flags.writeable = False
    return table


def _margins(lengths, scale: float, power: float, table) -> np.ndarray:
    """``m`` of integer-valued float64 ``lengths``: from ``table``, or by Python's ``**`` past it."""
    inside = lengths < table.shape[0]
    margin = table[np.where(inside, lengths, 0).astype(np.int64)]
    if not inside.all():
        beyond, inverse = np.unique(lengths[~inside], return_inverse=True)
        margin[~inside] = np.array([scale * float(n) ** power for n in beyond.tolist()], np.float64)[inverse]
    return margin


def published_breaks(start, end, valid, length, *, num_snippets: int, scale: float, power: float):
    """``[..., R, 4]`` int32 breakpoints of the published rows, on device (see the module docstring).

    Args:
        start, end: ``[..., R]`` float segment coordinates (``start <= end`` in
            valid rows).
        valid: ``[..., R]`` bool; invalid rows get all four breakpoints 0.
        length: ``[...]`` int, the items' video lengths ``L`` (at most
            ``num_snippets``).
        num_snippets: the padded length; lengths ``n <= num_snippets + 1`` come
            from the float64 table.
        scale, power: the margin ``m = scale * n ** power``.

    Returns:
        ``[..., R, 4]`` int32 ``(b0, b1, b2, b3)`` in ``[0, L]``.
    """
    dtype = start.dtype
    table = margin_table(num_snippets + 2, scale, power)
    floor_table, ceil_table = np.floor(table), np.ceil(table)
    s = jnp.floor(jnp.where(valid, start, 0))
    e = jnp.maximum(jnp.floor(jnp.where(valid, end, 0)), s)
    n = e - s
    in_table = n <= num_snippets + 1
    index = jnp.clip(n, 0, num_snippets + 1).astype(jnp.int32)
    margin = scale * jnp.where(in_table, 0, n) ** power
    margin_floor = jnp.where(in_table, jnp.asarray(floor_table, dtype)[index], jnp.floor(margin))
    margin_ceil = jnp.where(in_table, jnp.asarray(ceil_table, dtype)[index], jnp.ceil(margin))
    size = length.astype(dtype)[..., None]
    b1 = jnp.clip(s, 0, size)
    b2 = jnp.clip(e, b1, size)
    b0 = jnp.clip(s - margin_ceil, 0, b1)
    b3 = jnp.clip(jnp.minimum(size - 1, e + 1 + margin_floor), b2, size)
    breaks = jnp.stack([b0, b1, b2, b3], axis=-1).astype(jnp.int32)
    return jnp.where(valid[..., None], breaks, 0)


def published_breaks_host(start, end, valid, length, *, num_snippets: int, scale: float, power: float) -> np.ndarray:
    """The same breakpoints from concrete arrays, by the published float64 expressions themselves.

    Args:
        start, end: ``[..., R]`` float arrays.
        valid: ``[..., R]`` bool.
        length: ``[...]`` int video lengths.
        num_snippets: the padded length (the table of ``m`` covers lengths up
            to ``num_snippets + 1``).
        scale, power: the margin ``m = scale * n ** power``.

    Returns:
        ``[..., R, 4]`` int32 ``(b0, b1, b2, b3)`` in ``[0, L]``.
    """
    valid = np.asarray(valid, bool)
    s = np.floor(np.where(valid, np.asarray(start, np.float64), 0))
    e = np.maximum(np.floor(np.where(valid, np.asarray(end, np.float64), 0)), s)
    margin = _margins(e - s, scale, power, margin_table(num_snippets + 2, scale, power))
    size = np.asarray(length, np.float64)[..., None]
    b1 = np.clip(s, 0, size)
    b2 = np.clip(e, b1, size)
    b0 = np.clip(np.floor(s - margin), 0, b1)
    b3 = np.clip(np.minimum(size - 1, np.floor(e + margin + 1)), b2, size)
    breaks = np.stack([b0, b1, b2, b3], axis=-1).astype(np.int32)
    return np.where(valid[..., None], breaks, 0)
