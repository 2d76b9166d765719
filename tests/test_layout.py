"""The house: hf_prune's imports point down its floors, never up, and form no circle.

Each top-level folder or module of ``hf_prune`` stands on a floor (``FLOORS``, the same picture as CONTRIBUTING.md);
a module may import its own folder's modules and anything on a lower floor. Every import is read from the source
(``ast``), at module level and inside functions alike: an import inside a function between hf_prune modules is
allowed only to defer a heavy optional dependency, and says so (``# deferred: ...``) on its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hf_prune"

#: bottom to top; a unit is a top-level module or folder of hf_prune
FLOORS: list[tuple[str, ...]] = [
    ("errors", "version", "data", "tasks"),  # facts every floor may name
    ("registry", "report"),  # every pluggable name; the record of a run
    ("modeling",),  # the classes a pruned checkpoint reloads with (copied beside the weights)
    ("adapters",),  # model families: the only code that knows module names
    ("runtime", "corpus"),  # where work runs; where text comes from
    ("config",),  # every option, validated
    ("calibration",),  # text -> token rows -> statistics
    ("cut",),  # masks, compensation, surgery, relabel, apply a plan
    ("plan",),  # importance, targets (uniform, EMP, search, Hyperflux), make a plan
    ("quality",),  # lm-eval, paired perplexity, retention
    ("recovery",),  # training after the cut
    ("io",),  # checkpoints, layer-wise reading and writing, card, artifacts, Hub, export formats
    ("run",),  # pipeline, stages, command line
    ("__init__", "__main__", "vllm_plugin", "testing"),  # entry points: nothing imports them
]
FLOOR = {unit: index for index, units in enumerate(FLOORS) for unit in units}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = modules()


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported hf_prune module, line, inside a function) of every import statement of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    inside = {id(node) for function in ast.walk(tree) if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(function)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            anchor = base.split(".")[: len(base.split(".")) - (node.level - 1)] if node.level else []
            prefix = ".".join(anchor + ([node.module] if node.module else [])) if node.level else node.module or ""
            targets = [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = resolve(target) if target.startswith("hf_prune") else None
            if resolved and resolved != module:
                found.append((resolved, node.lineno, id(node) in inside))
    return found


def test_every_unit_stands_on_a_floor():
    assert {unit_of(module) for module in MODULES} <= set(FLOOR), "a new top-level folder needs a floor here"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    own = unit_of(module)
    upward = [f"{module} imports {target} (line {line})" for target, line, _ in imports(module)
              if unit_of(target) != own and FLOOR[unit_of(target)] >= FLOOR[own]]
    assert not upward, "\n".join(upward)


def test_function_level_imports_only_defer_a_heavy_dependency_and_say_so():
    undeclared = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for target, line, inside_function in imports(module):
            if inside_function and "# deferred:" not in lines[line - 1]:
                undeclared.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} inside a function")
    assert not undeclared, "\n".join(undeclared)


def test_no_import_circle():
    graph = {module: {target for target, _, _ in imports(module)} for module in MODULES}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target] if target in path else [*path, target]
            if target not in state:
                circle = visit(target, [*path, target])
                if circle:
                    return circle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            circle = visit(module, [module])
            assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_walk_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a low module that imports the pipeline is caught."""
    fake = tmp_path / "hf_prune" / "errors.py"
    fake.parent.mkdir()
    fake.write_text("from .run.pipeline import prune_pretrained\n")
    monkeypatch.setitem(MODULES, "hf_prune.errors", fake)
    with pytest.raises(AssertionError, match="hf_prune.errors imports hf_prune.run.pipeline"):
        test_imports_point_down("hf_prune.errors")
