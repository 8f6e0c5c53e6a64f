"""A griffe extension: jaxfuse's docstrings read as mkdocstrings expects them.

Two differences from what griffe's Google parser reads:

* ``Example:`` (singular) would be an admonition whose ``>>>`` lines render as
  nested block quotes; it is read as ``Examples:``, whose ``>>>`` lines render as code.
* a list of parameters sharing one description may wrap onto a second line
  (``a, b,`` then ``c: as for ...``); it is joined into one line, which griffe needs.
* reST roles (see below); ``:math:`...``` and a one-line ``.. math::`` are shown as code.
* a two-column reST simple table (``====  ====`` borders) becomes a list of
  ``first: second`` items, Markdown having no table without a header row.

jaxfuse's docstrings are Google style with reST roles for cross-references. Markdown
would show the role as text (``:func:`` before a code span), so each role becomes
a link when its target is a public name (one in ``jaxfuse.__all__``, which has an
entry in the API reference, as tests/test_docs.py checks), and plain code otherwise.
``~`` shows the last component only, as in Sphinx.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import griffe

EXAMPLE_HEADER = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)
NAMES = r"[\w*]+(?:, [\w*]+)*"
WRAPPED_NAMES = re.compile(rf"^(?P<first>[ \t]+{NAMES},)\n[ \t]+(?P<rest>{NAMES}:)", re.MULTILINE)
MATH = re.compile(r":math:`(?P<formula>[^`]+)`")
MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]+(?P<formula>\S.*)$", re.MULTILINE)
SIMPLE_TABLE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<border>=+ +=+)[ \t]*\n(?P<body>(?:.*\n)*?)(?P=indent)(?P=border)[ \t]*$", re.MULTILINE
)
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(?P<tilde>~?)(?P<target>[^`]+)`")


PACKAGE_INIT = Path(__file__).resolve().parents[2] / "jaxfuse" / "__init__.py"


def public_names(init: Path = PACKAGE_INIT) -> frozenset[str]:
    """The names of ``jaxfuse.__all__``, read without importing jaxfuse."""
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return frozenset(ast.literal_eval(node.value))
    raise RuntimeError(f"no __all__ in {init}")


PUBLIC = public_names()


def _table_as_list(match: re.Match) -> str:
    indent, border = match.group("indent"), match.group("border")
    second = len(indent) + len(border) - len(border.split()[-1])
    items = []
    for line in match.group("body").splitlines():
        if line.strip():
            items.append(f"{indent}- {line[:second].strip()}: {line[second:].strip()}")
    return "\n".join(items)


def render_tables_and_math(text: str) -> str:
    """``text`` with two-column reST simple tables as lists and ``:math:`` as code."""
    text = SIMPLE_TABLE.sub(_table_as_list, text)
    text = MATH_DIRECTIVE.sub(lambda match: f"{match.group('indent')}`{match.group('formula').strip()}`", text)
    return MATH.sub(lambda match: f"`{match.group('formula')}`", text)


def render_roles(text: str) -> str:
    """``text`` with every reST role replaced by a mkdocs-autorefs link or a code span."""

    def replace(match: re.Match) -> str:
        target = match.group("target").strip()
        shown = target.rsplit(".", 1)[-1] if match.group("tilde") else target
        name = target.removeprefix("jaxfuse.")
        if name in PUBLIC:
            return f"[`{shown}`][jaxfuse.{name}]"
        return f"`{shown}`"

    return ROLE.sub(replace, text)


class JaxfuseDocstrings(griffe.Extension):
    """Rewrites each object's docstring before mkdocstrings parses it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = EXAMPLE_HEADER.sub(r"\g<indent>Examples:", obj.docstring.value)
            text = WRAPPED_NAMES.sub(r"\g<first> \g<rest>", text)
            text = render_tables_and_math(text)
            obj.docstring.value = render_roles(text) if ":`" in text else text
