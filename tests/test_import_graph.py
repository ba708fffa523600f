"""app/'s import graph (grimp, type-checking imports included): no circle, and no arrow running back up
the layers (app.api above app.engine above app.diffusion; model_training never imported by app)."""

from __future__ import annotations

import grimp
import pytest

LAYERS = ["app.api", "app.engine", "app.diffusion"]
"""Top to bottom: a module may import the layers below it, never one above."""


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("app", cache_dir=None, exclude_type_checking_imports=False)


def cycle_in(graph: grimp.ImportGraph) -> list[str] | None:
    """One import circle as its modules in order (the first back in the end), or None: a DFS."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                return [*path[path.index(imported) :], imported]
            if imported not in state and (found := visit(imported)) is not None:
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module not in state and (found := visit(module)) is not None:
            return found
    return None


def test_app_has_no_import_circle(graph):
    circle = cycle_in(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_no_import_runs_back_up_the_layers(graph):
    illegal = graph.find_illegal_dependencies_for_layers(layers=LAYERS)
    assert not illegal, [f"{dep.importer} -> {dep.imported}: {dep.routes}" for dep in illegal]


def test_the_circle_finder_finds_one(graph):
    """The check itself: an import added against the grain is found."""
    graph.add_import(importer="app.engine.request", imported="app.api.jobs")
    try:
        assert cycle_in(graph) is not None
    finally:
        graph.remove_import(importer="app.engine.request", imported="app.api.jobs")
