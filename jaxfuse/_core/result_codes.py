"""Per-group result codes, shared by every kernel."""

from __future__ import annotations

import enum
import functools
import operator

import jax
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
        INFEASIBLE: (segment-to-snippet LPs) no labels within the bounds meet
            the LP's constraints: a row alone asks more than its snippets hold,
            the simplex found a row of ``B^-1 M`` with no column to enter (an
            unbounded dual ray), or (PDHG) a Farkas certificate; the published
            code gets no solution (NaN) there.
    """

    SUCCESSFUL = 0
    MAX_STEPS_REACHED = 1
    DIVERGED = 2
    NONFINITE_INPUT = 3
    EMPTY_GROUP = 4
    OVERFLOW = 5
    INVALID_INPUT = 6
    INVALID_OPTION = 7
    INFEASIBLE = 8

    @classmethod
    def names(cls, codes) -> np.ndarray:
        """The name of every code of an array, in one call: ``[...]`` int codes in, ``[...]`` str out.

        Args:
            codes: an int array (numpy, JAX, or a CPU torch tensor) or scalar of
                result codes, e.g. the ``result`` field of any jaxfuse result.

        Returns:
            A numpy array of str of the same shape.

        Raises:
            TypeError: ``codes`` is not an integer array.
            ValueError: a value that is no ResultCode.

        Example:
            >>> import numpy as np, jaxfuse
            >>> jaxfuse.ResultCode.names(np.array([0, 4, 3], np.int32)).tolist()
            ['SUCCESSFUL', 'EMPTY_GROUP', 'NONFINITE_INPUT']
            >>> fused = jaxfuse.fuse_groups(np.ones((2, 3, 1), np.float32), np.zeros((2, 3), np.float32),
            ...                             np.array([[True, True, False], [False, False, False]]))
            >>> jaxfuse.ResultCode.names(fused.result)
            array(['SUCCESSFUL', 'EMPTY_GROUP'], dtype='<U17')
        """
        values = np.asarray(codes)
        if not np.issubdtype(values.dtype, np.integer):
            raise TypeError(f"`codes` must be an integer array of result codes, got dtype {values.dtype}")
        table = np.array([member.name for member in sorted(cls, key=int)])
        unknown = (values < 0) | (values >= len(table))
        if unknown.any():
            bad = sorted(set(values[unknown].tolist()))
            raise ValueError(f"`codes` holds values that are no {cls.__name__}: {bad}")
        return table[values]


def repr_with_code_names(result) -> str:
    """``repr`` of a result NamedTuple with its result-code fields (``result``, ``item_result``) as names.

    The classes stay NamedTuples (pytrees, ``vmap`` and ``jit`` as before); only
    their text changes. A field that is not a concrete int array (a tracer
    inside ``jit``, a placeholder JAX puts in a pytree) keeps its usual repr.
    """
    fields = ", ".join(
        f"{name}={_code_names_text(value) if name in RESULT_FIELDS else repr(value)}"
        for name, value in zip(result._fields, result)
    )
    return f"{type(result).__name__}({fields})"


RESULT_FIELDS = ("result", "item_result")
"""The fields of jaxfuse's result NamedTuples that hold :class:`ResultCode` arrays."""


def _code_names_text(value) -> str:
    if isinstance(value, jax.core.Tracer):
        return repr(value)
    try:
        names = ResultCode.names(value)
    except (TypeError, ValueError, RuntimeError):  # not codes, or not concrete (a device tensor numpy cannot read)
        return repr(value)
    return "<ResultCode " + np.array2string(names, separator=", ", formatter={"numpystr": str}) + ">"


LPResultCode = ResultCode
"""The codes of the segment-to-snippet LPs: the same enum (the LP codes joined :class:`ResultCode`;
the name stays for callers that used it)."""


RESULT_DTYPE = jnp.int32


KEPT_RESULTS = (ResultCode.SUCCESSFUL, ResultCode.MAX_STEPS_REACHED)
"""Codes whose group keeps its outputs; every other code zeroes them."""


def group_result(fit_result, *, representable=True, finite=True, nonempty=True, option_ok=True):
    """The code of each group: the most severe that applies, in the one order every kernel uses.

    INVALID_OPTION (a traced option out of its domain), then EMPTY_GROUP, then
    NONFINITE_INPUT, then OVERFLOW (finite input, outputs the dtype cannot
    hold), then the fit's own code (SUCCESSFUL, MAX_STEPS_REACHED, ...).

    Args:
        fit_result: ``[B]`` the fit's own codes (or a scalar).
        representable: ``[B]`` whether the outputs are finite where they should be.
        finite: ``[B]`` whether every real member's inputs are finite.
        nonempty: ``[B]`` whether the group has a real member.
        option_ok: whether the call's traced options are in their domain.

    Returns:
        ``[B]`` int32 codes.
    """
    result = jnp.where(representable, fit_result, ResultCode.OVERFLOW)
    result = jnp.where(finite, result, ResultCode.NONFINITE_INPUT)
    result = jnp.where(nonempty, result, ResultCode.EMPTY_GROUP)
    return jnp.where(option_ok, result, ResultCode.INVALID_OPTION).astype(RESULT_DTYPE)


def keeps_outputs(result) -> jax.Array:
    """Whether a group with code ``result`` keeps its outputs (:data:`KEPT_RESULTS`); the others are zeroed."""
    return functools.reduce(operator.or_, (result == code for code in KEPT_RESULTS))


def combine_results(*codes):
    """The most severe of several result-code arrays (element-wise)."""
    combined = codes[0]
    for code in codes[1:]:
        combined = jnp.maximum(combined, code)
    return combined


def raise_for_results(result, what: str = "fusion", *, unit: str = "group") -> None:
    """Raise ``RuntimeError`` naming the codes and the first index when a concrete result holds a failure.

    ``EMPTY_GROUP`` is not a failure (an empty group or item has nothing to
    fuse or label); every other code but ``SUCCESSFUL`` is.

    Args:
        result: a concrete array of :class:`ResultCode` values.
        what: the operation, for the message.
        unit: what one code stands for (``"group"``, ``"item"``).

    Raises:
        RuntimeError: some code is neither SUCCESSFUL nor EMPTY_GROUP.
    """
    codes = np.asarray(result)
    failed = (codes != ResultCode.SUCCESSFUL) & (codes != ResultCode.EMPTY_GROUP)
    if failed.any():
        counts = {ResultCode(c).name: int((codes == c).sum()) for c in np.unique(codes[failed])}
        first = tuple(int(i) for i in np.argwhere(failed)[0])
        raise RuntimeError(
            f"{what} failed for {int(failed.sum())} {unit}(s) {counts}; first at index {first}. "
            f"Pass throw=False to get per-{unit} result codes instead."
        )
