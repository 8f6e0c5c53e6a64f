"""Per-group result codes, shared by every kernel."""

from __future__ import annotations

import enum

import jax.numpy as jnp
import numpy as np


class ResultCode(enum.IntEnum):
    """Why a group's fusion did or did not succeed.

    Codes are ordered by severity, so the code of a group fused over several
    coordinates is the maximum of its per-coordinate codes. Codes added after
    the first release are appended (their values never change), so
    ``EMPTY_GROUP`` sits below them; a group is never both empty and one of them.

    Attributes:
        SUCCESSFUL: the template was fitted; its parameters are the optimum.
        MAX_STEPS_REACHED: an iterative solve (Student-t Newton, the generic
            fitter) stopped at ``max_steps`` before meeting its tolerance. The
            parameters are the last iterate, which never has a higher loss than
            the starting point.
        DIVERGED: an iterative fit produced non-finite parameters or loss (the
            generic fitter on a loss unbounded below, e.g. a Student-t point mass).
        NONFINITE_INPUT: a real member had a non-finite value or weight. The
            outputs of the group are zeros.
        EMPTY_GROUP: the group has no real member. The outputs are zeros.
        OVERFLOW: every input was finite but the result is not representable in
            the dtype (e.g. coordinates near the float32 limit of 3.4e38, or a
            temperature so small that weight / T overflows). The outputs of the
            group are zeros.
        INVALID_INPUT: a real member is malformed in a way only its value can
            show (a segment with start > end passed inside a caller's ``jit``,
            where it cannot be rejected before tracing). The outputs are zeros.
        INVALID_OPTION: a traced option is out of its domain (a temperature that
            is not positive and finite, an overlap threshold outside [0, 1]),
            which a concrete value would have rejected with an error. Every group
            of the call carries this code and zeros.
    """

    SUCCESSFUL = 0
    MAX_STEPS_REACHED = 1
    DIVERGED = 2
    NONFINITE_INPUT = 3
    EMPTY_GROUP = 4
    OVERFLOW = 5
    INVALID_INPUT = 6
    INVALID_OPTION = 7


RESULT_DTYPE = jnp.int32


def combine_results(*codes):
    """The most severe of several result-code arrays (element-wise)."""
    combined = codes[0]
    for code in codes[1:]:
        combined = jnp.maximum(combined, code)
    return combined


def raise_for_results(result, what: str = "fusion") -> None:
    """Raise ``RuntimeError`` if any code in a concrete result array is not SUCCESSFUL."""
    codes = np.asarray(result)
    failed = codes != ResultCode.SUCCESSFUL
    if failed.any():
        counts = {ResultCode(c).name: int((codes == c).sum()) for c in np.unique(codes[failed])}
        first = tuple(int(i) for i in np.argwhere(failed)[0])
        raise RuntimeError(
            f"{what} failed for {int(failed.sum())} group(s) {counts}; first at index {first}. "
            "Pass throw=False to get per-group result codes instead."
        )
