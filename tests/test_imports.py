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
    ("dcloop.callbacks.results", "dcloop.people.report"): "matplotlib, only to write report.html",
    ("dcloop.cli", "dcloop.train"): "torch/lightning: `dcloop --help` starts fast",
    ("dcloop.cli", "dcloop.console"): "pandas, only after a run",
    ("dcloop.data.datamodule", "dcloop.augment.pipeline"): "albumentations and torchaudio",
    ("dcloop", "dcloop.kept.model"): "torch: `import dcloop` stays light (dcloop.load_model)",
    ("dcloop.kept.cli", "dcloop.results"): "torch: `dcloop-predict --help` starts fast",
}
#: What the data layer must never import (they are built on it).
ABOVE_DATA = ("people", "beyond", "scale", "callbacks", "train", "augment")


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports():
    """``(module, imported, at_module_level)`` for every import of a dcloop module."""
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(("dcloop", *path.relative_to(ROOT).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
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


def test_subpackages_import_each_other_without_cycles():
    graph = defaultdict(set)
    for module, name, top in _imports():
        if top and _part(module) != _part(name):
            graph[_part(module)].add(_part(name))
    seen, stack = set(), []

    def visit(node):
        assert node not in stack, f"import cycle: {' -> '.join([*stack, node])}"
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in sorted(graph):
        visit(node)


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
