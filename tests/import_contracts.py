"""An import-linter contract that import-linter has no built-in type for: no import cycles.

The layers contract (``pyproject.toml``) refuses an import that goes up, but the modules
within one layer may still import each other in a circle. This contract refuses any cycle
between the modules of its ``containers``, imports made only for type checking included.
``make lint`` runs it with the others (``lint-imports``).
"""

from __future__ import annotations

import itertools
from typing import Any

import grimp
from importlinter import Contract, ContractCheck, fields, output


class AcyclicModulesContract(Contract):
    """No module in ``containers`` imports itself back, directly or through others."""

    type_name = "acyclic_modules"

    containers = fields.ListField(subfield=fields.ModuleField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        names: list[str] = [module.name for module in self.containers]  # type: ignore[attr-defined]
        modules = {m for m in graph.modules if any(m == n or m.startswith(n + ".") for n in names)}
        cycles = [_a_cycle(graph, component) for component in _components(graph, modules)]
        return ContractCheck(kept=not cycles, metadata={"cycles": sorted(cycles)})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for cycle in check.metadata["cycles"]:
            for importer, imported in itertools.pairwise(cycle):
                output.print_error(f"{importer} imports {imported}", bold=False)
            output.new_line()


def _imports(graph: grimp.ImportGraph, module: str, within: set[str]) -> list[str]:
    return sorted(graph.find_modules_directly_imported_by(module) & within)


def _components(graph: grimp.ImportGraph, modules: set[str]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work: list[tuple[str, Any]] = [(root, iter(_imports(graph, root, modules)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, following = work[-1]
            step = next(following, None)
            if step is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        found.append(component)
            elif step not in index:
                index[step] = low[step] = len(index)
                stack.append(step)
                on_stack.add(step)
                work.append((step, iter(_imports(graph, step, modules))))
            elif step in on_stack:
                low[module] = min(low[module], index[step])
    return found


def _a_cycle(graph: grimp.ImportGraph, component: set[str]) -> list[str]:
    """One shortest cycle through the first module of ``component``, closed at both ends."""
    start = min(component)
    paths: dict[str, list[str]] = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for step in _imports(graph, module, component):
                if step == start:
                    return [*paths[module], start]
                if step not in paths:
                    paths[step] = [*paths[module], step]
                    following.append(step)
        frontier = following
    raise AssertionError(f"{start} is in a cycle, so a path leads back to it")
