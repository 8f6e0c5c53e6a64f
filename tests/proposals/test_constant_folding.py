"""No jaxfuse program asks XLA to fold a large constant at compile time.

XLA evaluates an operation whose inputs are all compile-time constants while
compiling ("constant folding"), element by element: for a reduction over a
few hundred thousand constant elements that takes seconds, and XLA prints its
"slow_operation_alarm ... Constant folding" blocks on the user's terminal (it
did, in the middle of ``jaxfuse study``'s table: NMS and Soft-NMS checked the
finiteness of an all-zero spread array built inside the program). The check is
structural, so it holds however fast the machine is: in the lowered program,
no reduction may take only constant-derived operands.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfuse

ASSIGNMENT = re.compile(r"^\s*(?P<results>%[\w:]+(?:\s*,\s*%[\w:]+)*)\s*=\s*(?P<op>[\w.]+)(?P<rest>.*)$")
USE = re.compile(r"%([\w]+)")
# Operations that only rearrange or map their operands: constant in, constant out.
ELEMENTWISE_OR_LAYOUT = re.compile(
    r"stablehlo\.(broadcast_in_dim|reshape|convert|transpose|is_finite|compare|and|or|not|select|add|subtract|"
    r"multiply|divide|maximum|minimum|negate|abs|exponential|log|concatenate|slice|pad)$"
)


def constant_reductions(program_text: str, min_elements: int) -> list[str]:
    """The ``stablehlo.reduce`` lines whose operands all derive from constants, over ``min_elements`` or more."""
    constant: set[str] = set()
    found = []
    for line in program_text.splitlines():
        if line.lstrip().startswith("func.func"):
            constant.clear()  # SSA names are local to a function
        match = ASSIGNMENT.match(line)
        if not match:
            continue
        results = [name.split(":")[0].lstrip("%") for name in match.group("results").split(",")]
        op, rest = match.group("op"), match.group("rest").split(" : ")[0]
        operands = USE.findall(rest)
        if op in ("stablehlo.constant", "stablehlo.iota"):
            constant.update(results)
        elif operands and all(name in constant for name in operands):
            if op == "stablehlo.reduce":
                shape = re.search(r"tensor<((?:\d+x)+)\w+>", line.split(" : ", 1)[1])
                if shape and math.prod(int(d) for d in shape.group(1).rstrip("x").split("x")) >= min_elements:
                    found.append(line.strip())
            elif ELEMENTWISE_OR_LAYOUT.match(op):
                constant.update(results)
    return found


def test_the_checker_finds_a_reduction_of_a_constant():
    """The pattern that was in NMS: an all-zero array made inside the program, then a reduction of its finiteness."""
    folded = jax.jit(lambda x: x + jnp.all(jnp.isfinite(jnp.zeros(x.shape + (2,))), axis=-1))
    assert len(constant_reductions(folded.lower(np.zeros((64, 64), np.float32)).as_text(), 1000)) == 1
    of_argument = jax.jit(lambda x: jnp.all(jnp.isfinite(x), axis=-1))
    assert constant_reductions(of_argument.lower(np.zeros((64, 64, 2), np.float32)).as_text(), 1) == []


@pytest.mark.parametrize("method", ["nms", "soft_nms", "gaussian"])
def test_fuse_proposals_programs_fold_no_large_constant(method):
    items, size = 32, 64
    segments, scores = np.zeros((items, size, 2), np.float32), np.zeros((items, size), np.float32)
    valid = np.ones((items, size), bool)
    program = jax.jit(lambda s, c, v: jaxfuse.fuse_proposals(s, c, valid=v, method=method))
    text = program.lower(segments, scores, valid).as_text()
    assert constant_reductions(text, items * size) == []
