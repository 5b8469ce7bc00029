"""The package's import structure: every module imports on its own, imports among vggfeat modules form no cycle
(so an import-sorting tool cannot break the package) and its packages follow the layering of LAYERS, and a vggfeat
module is imported inside a function only to defer a heavy third-party import (torch, sklearn, faiss, ...) that
the caller does not already load, which keeps `vggfeat --help` fast."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import vggfeat

PACKAGE = Path(vggfeat.__file__).parent
# third-party packages that take a noticeable time to import: worth deferring to the function that needs them
HEAVY = frozenset({"torch", "torchvision", "timm", "sklearn", "scipy", "faiss", "matplotlib"})


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute names of what `node` imports: a vggfeat module (a submodule when the name is one) or a package."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


@cache
def _imports(module: str) -> tuple[frozenset[str], tuple[tuple[int, str], ...]]:
    """(module-level imports, (line, target) of imports inside functions) of one module."""
    tree = ast.parse(MODULES[module].read_text())
    top: set[str] = set()
    inner: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if _is_type_checking(node):
            return  # typing only: never executed
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(module, node):
                if in_function:
                    inner.append((node.lineno, target))
                else:
                    top.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return frozenset(top), tuple(inner)


def _vggfeat_deps(module: str) -> set[str]:
    return {t for t in _imports(module)[0] if t in MODULES and t != module}


def _packages(module: str) -> list[str]:
    """The packages Python runs before `module`: vggfeat.a.b needs vggfeat and vggfeat.a."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@cache
def _heavy(module: str) -> frozenset[str]:
    """Heavy third-party packages that importing `module` loads, directly or through the vggfeat modules and
    packages it imports at module level (a walk, not a recursion: packages and their submodules import each other)."""
    seen, todo, out = {module}, [module], set()
    while todo:
        current = todo.pop()
        out |= {t.split(".")[0] for t in _imports(current)[0]} & HEAVY
        for dep in _vggfeat_deps(current) | {p for p in _packages(current) if p in MODULES}:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return frozenset(out)


def test_module_level_imports_have_no_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(_vggfeat_deps(module)):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                walk(dep, [*path, dep])
        state[module] = 2

    for module in MODULES:
        if module not in state:
            walk(module, [module])
    assert cycles == []


def test_in_function_imports_of_vggfeat_only_defer_heavy_packages():
    needless = []
    for module in MODULES:
        for line, target in sorted(set(_imports(module)[1])):
            if target.split(".")[0] != "vggfeat":
                continue  # third-party imports inside functions are the deferral itself
            if not _heavy(target) - _heavy(module):
                needless.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert needless == [], "import these at module level: they defer no heavy package\n" + "\n".join(needless)


def test_cli_modules_load_no_heavy_package_at_module_level():
    heavy = {m: sorted(_heavy(m)) for m in MODULES if m.startswith("vggfeat.cli") or m == "vggfeat"}
    assert {m: h for m, h in heavy.items() if h} == {}


# The packages of vggfeat from the bottom up: a package imports only packages of lower layers, never one of its own
# layer or above, so the package graph has no cycle and a package can be read (and tested) without those above it.
# A node is a subpackage (vggfeat.data) or a top-level module (vggfeat.metrics); "vggfeat" is the root package,
# which needs only errors when it runs (it loads the rest lazily, by name, on first use).
LAYERS = (
    ("vggfeat.errors",),  # the user-facing errors
    (
        "vggfeat",
        "vggfeat.defaults",
        "vggfeat.utils",
        "vggfeat.metrics",
        "vggfeat.recipe_files",
        "vggfeat.weight_sources",
    ),  # leaves
    ("vggfeat.config", "vggfeat.data", "vggfeat.models"),  # recipes; images, datasets, transforms; the nets
    ("vggfeat.benchmarks", "vggfeat.features", "vggfeat.evaluate", "vggfeat.train"),  # built on data and models
    ("vggfeat.index",),  # faiss indices over stored features, and their folder format
    ("vggfeat.probes",),  # fits and scores the benchmarks on stored features
    ("vggfeat.reproduce", "vggfeat.demo"),  # applications of the probes
    ("vggfeat.cli",),  # one module per command
    ("vggfeat.__main__",),
)
LAYER = {node: level for level, nodes in enumerate(LAYERS) for node in nodes}


def _node(name: str) -> str:
    """The package-graph node of a vggfeat module or package: vggfeat.data.images -> vggfeat.data."""
    return ".".join(name.split(".")[:2])


@cache
def _package_edges() -> dict[tuple[str, str], list[str]]:
    """(node A, node B) -> the 'path:line' sites where a module of A imports one of B. Every import statement
    counts: at module level, inside a function (a deferred import is still a dependency) and under TYPE_CHECKING (a
    type from B in A's signatures ties A to B's design). Lookups by name (importlib.import_module) are not seen."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, node):
                if target.split(".")[0] == "vggfeat" and _node(target) != _node(module):
                    sites = edges.setdefault((_node(module), _node(target)), [])
                    if (site := f"{path.relative_to(PACKAGE.parent)}:{node.lineno}") not in sites:
                        sites.append(site)
    return edges


def _package_cycles(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    """Each cycle a depth-first walk of the package graph closes, as 'A -> B (site) -> ... -> A (site)'."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                loop = [*path[path.index(dep) :], dep]
                steps = [f" -> {b} ({edges[a, b][0]})" for a, b in zip(loop, loop[1:], strict=False)]
                cycles.append(loop[0] + "".join(steps))
            elif dep not in state:
                walk(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    return cycles


def test_package_graph_has_no_cycle():
    cycles = _package_cycles(_package_edges())
    assert cycles == [], "packages importing each other (move what they share to the lower one):\n" + "\n".join(cycles)


def test_package_cycles_are_found_with_their_path():
    edges = {("a", "b"): ["a.py:1"], ("b", "c"): ["b.py:2"], ("c", "a"): ["c.py:3"], ("c", "d"): ["c.py:4"]}
    assert _package_cycles(edges) == ["a -> b (a.py:1) -> c (b.py:2) -> a (c.py:3)"]
    assert _package_cycles({("a", "b"): ["a.py:1"], ("c", "b"): ["c.py:1"]}) == []


def test_packages_import_only_lower_layers():
    nodes = {_node(m) for m in MODULES}
    assert sorted(nodes - set(LAYER)) == [], "place these packages in LAYERS"
    upward = [
        f"{a} (layer {LAYER[a]}) imports {b} (layer {LAYER[b]}) at {', '.join(sites)}"
        for (a, b), sites in sorted(_package_edges().items())
        if LAYER[b] >= LAYER[a]
    ]
    assert upward == [], "import only from lower layers, or move the package in LAYERS:\n" + "\n".join(upward)


# One fresh interpreter: each module imported with every vggfeat entry of sys.modules cleared before it, so a
# module that only works after another one was imported fails here.
EACH_ALONE = """
import importlib, json, sys, traceback
failed = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "vggfeat" or m.startswith("vggfeat.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps(failed))
"""


def test_every_module_imports_on_its_own():
    done = subprocess.run(
        [sys.executable, "-c", EACH_ALONE, *MODULES], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    )
    assert json.loads(done.stdout.splitlines()[-1]) == {}


HELP = """
import sys
from click.testing import CliRunner
from vggfeat.cli.main import cli
commands = [["--help"]] + [[c, "--help"] for c in cli.list_commands(None)]
outputs = [CliRunner().invoke(cli, args) for args in commands]
assert all(r.exit_code == 0 for r in outputs), [r.output for r in outputs if r.exit_code]
print(sorted(m for m in sys.modules if m.split(".")[0] in %r))
"""


def test_help_of_every_command_loads_no_heavy_package():
    done = subprocess.run(
        [sys.executable, "-c", HELP % (sorted(HEAVY),)], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    )
    assert done.stdout.strip() == "[]"
