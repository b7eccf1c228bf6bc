"""The package's import rules (issue 13): no cycles between subpackages, a data layer that
imports none of the features built on it, and function-level imports only where they defer
an optional heavy dependency."""

import ast
from collections import defaultdict
from pathlib import Path

import dcloop

ROOT = Path(dcloop.__file__).parent

#: Function-level imports between dcloop's parts, each deferring something heavy or optional.
LAZY_OK = {
    ("dcloop.cli", "dcloop.train"): "torch/lightning: `dcloop --help` starts fast",
    ("dcloop.cli", "dcloop.console"): "pandas, only after a run",
    ("dcloop.cli", "dcloop._checks"): "numpy: `dcloop --help` starts fast",
    ("dcloop.people.cli", "dcloop.csvsafe"): "pandas: `dcloop-export --help` starts fast",
    ("dcloop.people.cli", "dcloop.results"): "torch: `dcloop-annotators --help` starts fast",
    ("dcloop", "dcloop.kept.model"): "torch: `import dcloop` stays light (dcloop.load_model)",
    ("dcloop.kept.cli", "dcloop.results"): "torch: `dcloop-predict --help` starts fast",
    ("dcloop.beyond.cli", "dcloop.results"): "torch: `dcloop-beyond --help` starts fast",
}
#: What the data layer must never import (they are built on it).
ABOVE_DATA = ("people", "beyond", "scale", "callbacks", "train", "augment")


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports():
    """``(module, imported, at_module_level)`` for every import of a dcloop module, at any
    depth (module level, functions, methods, ``if`` blocks)."""
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(("dcloop", *path.relative_to(ROOT).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        yield from _module_imports(module, path.read_text())


def _module_imports(module: str, source: str):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + (
                [f"dcloop.{a.name}" for a in node.names] if node.module == "dcloop" else []
            )
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("dcloop.") and name != "dcloop":
                yield module, name, node.col_offset == 0


def _cycle(edges) -> list[str] | None:
    """A cycle in the graph of ``(part, part)`` edges, as the path that closes it."""
    graph = defaultdict(set)
    for a, b in edges:
        if a != b:
            graph[a].add(b)
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            return [*stack[stack.index(node) :], node]
        if node in seen:
            return None
        stack.append(node)
        for nxt in sorted(graph[node]):
            found = visit(nxt)
            if found:
                return found
        stack.pop()
        seen.add(node)
        return None

    for node in sorted(graph):
        found = visit(node)
        if found:
            return found
    return None


def test_subpackages_import_each_other_without_cycles():
    edges = [(_part(m), _part(n)) for m, n, top in _imports() if top]
    cycle = _cycle(edges)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_function_level_imports_hide_no_cycle():
    """Imports at any depth (inside functions and methods too) form no cycle between
    dcloop's parts: a function-level import may defer a heavy module, not hide a cycle."""
    edges = [(_part(m), _part(n)) for m, n, _ in _imports()]
    cycle = _cycle(edges)
    assert cycle is None, f"import cycle through a function-level import: {' -> '.join(cycle)}"


def test_the_cycle_finder_sees_a_cycle_through_any_depth():
    # the check above must be able to fail: a data -> augment import inside a function
    # closes data -> augment -> data
    source = "def f():\n    from dcloop.augment.pipeline import Augmenter\n"
    nested = [(m, n, False) for m, n, _ in _module_imports("dcloop.data.x", source)]
    assert nested == [("dcloop.data.x", "dcloop.augment.pipeline", False)]
    edges = [(_part(m), _part(n)) for m, n, _ in nested] + [("augment", "data")]
    assert _cycle(edges) == ["augment", "data", "augment"]
    assert _cycle([("augment", "data")]) is None


def test_function_level_imports_only_defer_heavy_dependencies():
    lazy = {(m, n) for m, n, top in _imports() if not top and _part(m) != _part(n)}
    unexplained = sorted(lazy - set(LAZY_OK))
    assert not unexplained, f"function-level imports hiding a dependency: {unexplained}"


def test_the_data_layer_imports_nothing_built_on_it():
    bad = [
        (m, n)
        for m, n, top in _imports()
        if m.startswith("dcloop.data") and _part(n) in ABOVE_DATA and (m, n) not in LAZY_OK
    ]
    assert not bad, bad
