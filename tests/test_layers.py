"""The house's layers: every import points down, no two modules import each other, and the wheel
holds every package.

The layer order, bottom to top (a module may import its own layer and those below it)::

    theory → toy (with params and the shared helpers) → measure/landscape/plots/infinite_width
           → sweep → realmodels → transfer → figures → cli

Imports are read from the source with ``ast`` (imports inside functions count: a lazy import is
still a dependency), so nothing is imported to check them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "loraplus_lab"
#: Top-level folders of the repository and the import packages they install as.
FOLDERS = {"theory": f"{PACKAGE}.theory", "sims": f"{PACKAGE}.sims"}

#: Layers, bottom first: each is a list of module-name prefixes (a prefix covers its submodules).
LAYERS: list[tuple[str, list[str]]] = [
    ("theory", ["loraplus_lab.theory"]),
    (
        "toy",
        [
            "loraplus_lab.sims.__init__",  # the package itself: its version, nothing else
            "loraplus_lab.sims.params",
            "loraplus_lab.sims.checks",
            "loraplus_lab.sims.files",
            "loraplus_lab.sims.toy",
        ],
    ),
    (
        "measure",
        [
            "loraplus_lab.sims.measure",
            "loraplus_lab.sims.landscape",
            "loraplus_lab.sims.plots",
            "loraplus_lab.sims.infinite_width",
        ],
    ),
    ("sweep", ["loraplus_lab.sims.sweep"]),
    ("realmodels", ["loraplus_lab.sims.realmodels"]),
    ("transfer", ["loraplus_lab.sims.transfer"]),
    ("figures", ["loraplus_lab.sims.figures"]),
    ("cli", ["loraplus_lab.sims.cli"]),
]


def _modules() -> dict[str, Path]:
    """Every module of theory/ and sims/ by its installed name (a package as ``pkg.__init__``
    for the layer lookup, ``pkg`` for imports)."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> int:
    """Index of the layer of ``module`` (the most specific prefix wins)."""
    key = module + ".__init__" if MODULES.get(module, Path()).name == "__init__.py" else module
    best, index = "", -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (key == prefix or key.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    return index


def imports(module: str) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of the package inside ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule pkg.sub where there is one
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                target = name
                while target not in MODULES and "." in target:  # `import a.b.c` of a name
                    target = target.rpartition(".")[0]
                found.append((target, node.lineno))
    return list(dict.fromkeys(found))  # one entry per module and line


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if layer_of(m) < 0]
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def test_imports_point_down() -> None:
    """No module imports one of a higher layer."""
    upward = []
    for module in MODULES:
        for target, line in imports(module):
            if layer_of(target) > layer_of(module):
                upward.append(
                    f"{_where(module, line)}: {module} ({LAYERS[layer_of(module)][0]}) imports "
                    f"{target} ({LAYERS[layer_of(target)][0]})"
                )
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself
    (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        out.append(sorted(component))
    return out


def test_no_import_cycles() -> None:
    """No two modules import each other, directly or through others."""
    graph = {m: {t for t, _ in imports(m)} for m in MODULES}
    found = []
    for component in _cycles(graph):
        members = set(component)
        edges = [
            f"  {_where(m, line)}: {m} imports {t}"
            for m in component
            for t, line in imports(m)
            if t in members
        ]
        found.append("cycle between " + ", ".join(component) + ":\n" + "\n".join(edges))
    assert not found, "\n".join(found)


def test_theory_needs_neither_torch_nor_sims() -> None:
    bad = []
    for module in (m for m in MODULES if layer_of(m) == 0):
        tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            for name in names:
                if name.split(".")[0] == "torch" or name.startswith(f"{PACKAGE}.sims"):
                    bad.append(f"{_where(module, node.lineno)}: imports {name}")
    assert not bad, "\n".join(bad)


def test_the_wheel_lists_every_package() -> None:
    """Each folder of sims/ and theory/ with an __init__.py is in pyproject's
    [tool.setuptools] packages (else the wheel silently lacks it), and nothing else is."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    present = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert not present - listed, f"packages missing from pyproject.toml: {sorted(present - listed)}"
    assert not listed - present, f"listed packages that do not exist: {sorted(listed - present)}"


@pytest.mark.parametrize(
    "source, target, expected",
    [
        ("loraplus_lab.sims.sweep.store", "loraplus_lab.sims.realmodels.grid", "up"),
        ("loraplus_lab.sims.realmodels.grid", "loraplus_lab.sims.sweep.store", "down"),
        ("loraplus_lab.sims.toy.engine", "loraplus_lab.sims.measure", "up"),
        ("loraplus_lab.sims.cli.sweep", "loraplus_lab.sims.figures", "down"),
        ("loraplus_lab.theory.gamma", "loraplus_lab.sims.params", "up"),
    ],
)
def test_the_layer_order_itself(source: str, target: str, expected: str) -> None:
    """The order the test enforces is the one written in the module docstring."""
    assert (layer_of(target) > layer_of(source)) == (expected == "up")


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["e"]]
