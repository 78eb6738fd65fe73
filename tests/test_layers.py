"""The architecture ``make lint`` checks: imports run one way and never in a circle.

Each contract is read from ``pyproject.toml`` and checked against the package's real import
graph, as ``lint-imports`` does; then one forbidden import is added to that graph to show
the contract breaks on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grimp
import pytest
from importlinter.api import read_configuration
from importlinter.contracts.layers import LayersContract

from tests.import_contracts import AcyclicModulesContract

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


@pytest.fixture(scope="module")
def graph() -> Iterator[grimp.ImportGraph]:
    yield grimp.build_graph("copilotedge", cache_dir=None)


def contract(kind: type[Any], type_name: str) -> Any:
    config = read_configuration(str(PYPROJECT))
    options = next(c for c in config["contracts_options"] if c["type"] == type_name)
    return kind(options["name"], config["session_options"], options)


def check_with(graph: grimp.ImportGraph, importer: str, imported: str, kind: type[Any]) -> Any:
    """Check one contract on ``graph`` plus the import ``importer`` → ``imported``."""
    found = contract(kind, "layers" if kind is LayersContract else "acyclic_modules")
    graph.add_import(importer=importer, imported=imported)
    try:
        return found.check(graph, verbose=False)
    finally:
        graph.remove_import(importer=importer, imported=imported)


def test_the_package_keeps_both_contracts(graph: grimp.ImportGraph) -> None:
    assert contract(LayersContract, "layers").check(graph, verbose=False).kept
    assert contract(AcyclicModulesContract, "acyclic_modules").check(graph, verbose=False).kept


def test_a_service_that_imports_the_turn_breaks_the_layers(graph: grimp.ImportGraph) -> None:
    check = check_with(graph, "copilotedge.usage.ledger", "copilotedge.chat.turn", LayersContract)
    assert not check.kept
    [broken] = check.metadata["invalid_dependencies"]
    assert (broken["importer"], broken["imported"]) == (
        "copilotedge.usage",
        "copilotedge.chat.turn",
    )


def test_the_types_importing_a_service_break_the_layers(graph: grimp.ImportGraph) -> None:
    importer, imported = "copilotedge.chat.types", "copilotedge.upstream.resilience"
    assert not check_with(graph, importer, imported, LayersContract).kept


def test_a_cycle_within_one_layer_breaks_the_acyclic_contract(graph: grimp.ImportGraph) -> None:
    store, history = "copilotedge.conversations.store", "copilotedge.conversations.history"
    assert check_with(graph, store, history, LayersContract).kept  # same layer: allowed
    check = check_with(graph, store, history, AcyclicModulesContract)
    assert not check.kept
    assert check.metadata["cycles"] == [[history, store, history]]
