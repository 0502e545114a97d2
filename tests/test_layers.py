"""The layer rules of ../shared/STYLE.md ("Layer rules the imports should keep"), read from the code.

Every module of ``gpu_preflight`` is parsed with ``ast``; every import counts, also one inside a
function or under ``TYPE_CHECKING`` (a function-local import is still a dependency, and a
type-only one still ties the two modules' designs together). A broken rule fails naming the
importing module, the imported one and the rule.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "gpu_preflight"
ROOT = Path(__file__).resolve().parents[1] / "entrypoint"


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. gpu_preflight.plan.search
    path: Path
    is_package: bool  # an __init__.py: relative imports resolve from the package itself


def _modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        found[name] = Module(name, path, is_package)
    return found


MODULES = _modules()


def _imported(mod: Module) -> Iterator[str]:
    """Every gpu_preflight module ``mod`` imports (``from pkg import sub`` names the submodule)."""
    tree = ast.parse(mod.path.read_text(), filename=str(mod.path))
    base = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield sub if sub in MODULES else target


def _graph() -> dict[str, frozenset[str]]:
    return {
        name: frozenset(
            i for i in _imported(mod) if i.split(".")[0] == PACKAGE and i != name and i in MODULES
        )
        for name, mod in MODULES.items()
    }


GRAPH = _graph()


def _in(name: str, *layers: str) -> bool:
    """``name`` is one of ``layers`` (a module or a package, given without the package prefix)."""
    return any(
        name == f"{PACKAGE}.{layer}" or name.startswith(f"{PACKAGE}.{layer}.") for layer in layers
    )


@dataclass(frozen=True)
class Rule:
    text: str
    importer: Callable[[str], bool]
    forbidden: Callable[[str], bool]


RULES = (
    Rule(
        "nothing below cli/ imports cli/ (pipeline.py wires, the CLI renders)",
        lambda m: not _in(m, "cli"),
        lambda i: _in(i, "cli"),
    ),
    Rule(
        "plan/ imports no probe/, launch, receipt/ or cli/",
        lambda m: _in(m, "plan"),
        lambda i: _in(i, "probe", "launch", "receipt", "cli"),
    ),
    Rule(
        "memory/ and models/ import nothing from plan/",
        lambda m: _in(m, "memory", "models"),
        lambda i: _in(i, "plan"),
    ),
    Rule(
        "launch imports no planner code (plan/, memory/, models/)",
        lambda m: _in(m, "launch"),
        lambda i: _in(i, "plan", "memory", "models"),
    ),
    Rule(
        "inputs/ imports nothing from plan/ (it sits below plan/)",
        lambda m: _in(m, "inputs"),
        lambda i: _in(i, "plan"),
    ),
)


def _broken(rule: Rule, graph: dict[str, frozenset[str]]) -> list[str]:
    return sorted(
        f"{importer} imports {imported}"
        for importer, imports in graph.items()
        if rule.importer(importer)
        for imported in imports
        if rule.forbidden(imported)
    )


def test_the_scan_reads_real_imports() -> None:
    # A scan that found nothing would pass every rule: it must see what pipeline.py wires.
    assert f"{PACKAGE}.pipeline" in GRAPH
    assert any(_in(i, "plan") for i in GRAPH[f"{PACKAGE}.pipeline"])
    assert any(_in(i, "inputs") for i in GRAPH[f"{PACKAGE}.plan.vllm"])


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.text.split(" ")[0])
def test_layer_rule(rule: Rule) -> None:
    broken = _broken(rule, GRAPH)
    assert not broken, f"layer rule broken: {rule.text}:\n  " + "\n  ".join(broken)


def test_a_broken_rule_is_named() -> None:
    planted = {
        **GRAPH,
        f"{PACKAGE}.plan.search": GRAPH[f"{PACKAGE}.plan.search"] | {f"{PACKAGE}.probe.collect"},
    }
    assert _broken(RULES[1], planted) == [f"{PACKAGE}.plan.search imports {PACKAGE}.probe.collect"]


def _cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module (Tarjan), as one circle in it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_one_cycle(component, graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _one_cycle(component: set[str], graph: dict[str, frozenset[str]]) -> list[str]:
    """One concrete circle inside a strongly connected component, to name in the failure."""
    node = min(component)
    path = [node]
    while True:
        node = min(w for w in graph[node] if w in component)
        if node in path:
            return [*path[path.index(node) :], node]
        path.append(node)


def test_no_import_cycle() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, (
        "layer rule broken: no two modules import each other, directly or in a circle:\n  "
        + "\n  ".join(" -> ".join(c) for c in cycles)
    )


def test_a_cycle_is_found_and_named() -> None:
    common, vllm = f"{PACKAGE}.plan.common", f"{PACKAGE}.plan.vllm"
    planted = {**GRAPH, common: GRAPH[common] | {vllm}}
    assert [c for c in _cycles(planted) if common in c and vllm in c]
