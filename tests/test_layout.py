"""The package's layering, read from its imports: areas import only the areas below them, no cycles, no private
names across modules. A newcomer can trust ``ls jaxfuse`` for the architecture because this test enforces it."""

from __future__ import annotations

import ast
from pathlib import Path

import jaxfuse

PACKAGE = Path(jaxfuse.__file__).parent

# What each area may import besides itself (the root package, ``jaxfuse``, is the public facade above them all).
ALLOWED = {
    "_core": set(),
    "formats": {"_core"},
    "_runtime": {"_core"},
    "_fusion": {"_core", "_runtime"},
    "_proposals": {"_core", "_fusion", "_runtime", "formats"},
    "_evaluation": {"_core", "formats"},
    "_detection": {"_core", "_fusion", "_proposals", "_runtime", "_evaluation"},
    "_labels": {"_core", "_fusion", "_proposals", "_runtime", "_detection"},
}
PUBLIC_AREAS = {"cli", "compat", "tools", "bench", "examples"}  # may import anything, through the facade or not


def _modules() -> dict[str, ast.Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = ast.parse(path.read_text(), filename=str(path))
    return modules


def _imports(tree: ast.Module):
    """(module imported, names imported from it) for every jaxfuse import, at any depth (function-level too)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jaxfuse":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield (submodule, None) if _is_module(submodule) else (node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "jaxfuse":
                    yield alias.name, None


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "jaxfuse"


MODULES = _modules()


def test_every_area_is_known():
    areas = {_area(name) for name in MODULES} - {"jaxfuse", "py"}
    assert areas <= set(ALLOWED) | PUBLIC_AREAS, f"new area(s) {areas - set(ALLOWED) - PUBLIC_AREAS}: place them in ALLOWED"


def test_private_areas_import_only_the_areas_below_them():
    violations = []
    for name, tree in MODULES.items():
        area = _area(name)
        if area not in ALLOWED:
            continue
        for imported, _ in _imports(tree):
            target = _area(imported)
            if target != area and target not in ALLOWED[area]:
                violations.append(f"{name} imports {imported} ({area} -> {target})")
    assert not violations, "\n".join(violations)


def test_no_module_imports_a_private_name_from_another():
    violations = [
        f"{name} imports {imported}.{imported_name}"
        for name, tree in MODULES.items()
        for imported, imported_name in _imports(tree)
        if imported_name and imported_name.startswith("_") and not imported_name.startswith("__")
    ]
    assert not violations, "\n".join(violations)


def test_no_import_cycles_among_modules():
    graph = {
        name: {imported for imported, _ in _imports(tree) if imported in MODULES and imported != "jaxfuse"}
        for name, tree in MODULES.items()
        if name != "jaxfuse"
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == 1:
                return stack[stack.index(successor):] + [successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_modules_and_functions_stay_small():
    """No module over 500 lines of code, no function over 80 (blank lines, comments and docstrings not counted)."""
    too_long = []
    for name, tree in MODULES.items():
        source = (PACKAGE.parent / (name.replace(".", "/"))).with_suffix(".py")
        if not source.exists():
            source = PACKAGE.parent / name.replace(".", "/") / "__init__.py"
        lines = source.read_text().splitlines()
        docstring_lines = set()
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
                docstring_lines.update(range(body[0].lineno, body[0].end_lineno + 1))

        def code_lines(first: int, last: int) -> int:
            return sum(
                1 for number in range(first, last + 1)
                if number not in docstring_lines and lines[number - 1].strip() and not lines[number - 1].strip().startswith("#")
            )

        if code_lines(1, len(lines)) > 500:
            too_long.append(f"module {name}: {code_lines(1, len(lines))} lines of code")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                count = code_lines(node.lineno, node.end_lineno)
                if count > 80:
                    too_long.append(f"{name}.{node.name}: {count} lines of code")
    assert not too_long, "\n".join(too_long)


# The public API, pinned: a re-organisation of the package must not change it (issue 17).
PUBLIC_API = {
    "ACTIVITYNET_THRESHOLDS", "ActivityNetData", "CasProposals", "CompilationCacheStatus", "DEFAULT",
    "DetectionFileError", "DetectionMAP", "Detections", "ExponentialParameters", "FileFusionReport", "FitResult",
    "FusedProposals", "FusionResult", "FusionSettings", "GaussianParameters", "GroundTruth", "LPResultCode",
    "LaplaceParameters", "PRESETS", "PUBLISHED", "PUBLISHED_CLASS_THRESHOLD", "PUBLISHED_THRESHOLDS", "PackedGroups",
    "PaddedProposals", "ProposalGroups", "PseudoLabels", "RaggedBuckets", "RaggedFusion", "ResultCode",
    "SnippetLabels", "StudentTParameters", "SyntheticVideos", "THUMOS14_THRESHOLDS", "TemplateDensity",
    "UniformParameters", "VideoDetections", "VideoParameters", "bucket_size", "compilation_cache_status",
    "compile_count", "detect", "detect_videos", "evaluate_detections", "evaluate_json", "exponential_density",
    "fit_template", "fuse_detection_file", "fuse_detections_json", "fuse_exponential", "fuse_gaussian",
    "fuse_groups", "fuse_laplace", "fuse_proposal_lists", "fuse_proposals", "fuse_proposals_sharded", "fuse_ragged",
    "fuse_student_t", "fuse_uniform", "gaussian_density", "group_proposals", "item_mesh", "laplace_density",
    "load_activitynet_json", "max_runs_per_threshold", "member_probabilities", "pack_groups", "pack_proposals",
    "pack_ragged", "proposals_from_cas", "pseudo_labels", "segments_to_snippets", "set_compilation_cache",
    "student_t_density", "synthetic_videos", "uniform_density", "unpack_groups", "unpack_members",
    "unpack_proposals", "unpack_ragged", "unpack_ragged_members",
}


def test_public_api_is_pinned_and_every_name_resolves():
    assert set(jaxfuse.__all__) == PUBLIC_API
    assert len(jaxfuse.__all__) == len(set(jaxfuse.__all__))
    for name in jaxfuse.__all__:
        assert getattr(jaxfuse, name) is not None, name
