"""The architecture is a checked contract, not a diagram.

* Layers (import-linter): a module may import only from layers below its own.
* `advisor` is reached only through `gpusim.cli`, and `advisor` sees only the `gpusim` front door.
* No import cycles between gpusim's modules.
* Every name the front door exports resolves.
* No function in gpusim or advisor is longer than 80 lines (the compiled event loop excepted).

All of these are deterministic: they read source code, never a random outcome or a clock.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gpusim

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gpusim"

# The import-linter contracts live in pyproject.toml ([tool.importlinter]): one definition.

MAX_FUNCTION_LINES = 80
LONG_FUNCTION_EXEMPT = {"gpusim.engines.compiled._simulate"}  # the compiled event loop


def _lint_imports() -> str:
    # import-linter is in the test extra: its absence is a broken install, not a reason to skip
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "lint-imports not found: pip install -e '.[test]'"
    return exe


def test_import_linter_contracts():
    # --no-cache: the linter would otherwise write .import_linter_cache into the checkout
    done = subprocess.run([_lint_imports(), "--no-cache", "--config", "pyproject.toml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gpusim layers KEPT" in done.stdout, done.stdout


def test_the_layers_contract_catches_an_upward_import(tmp_path):
    """The contract is not vacuous: the same config with two layers swapped must break."""
    text = (ROOT / "pyproject.toml").read_text()
    swapped = text.replace('    "records | cluster | traces",\n    "config",\n',
                           '    "config",\n    "records | cluster | traces",\n')
    assert swapped != text
    config = tmp_path / "pyproject.toml"
    config.write_text(swapped)
    done = subprocess.run([_lint_imports(), "--no-cache", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "gpusim.cluster -> gpusim.config" in done.stdout, done.stdout


def _graph():
    import grimp  # comes with import-linter (test extra)

    return grimp.build_graph("gpusim", "advisor", cache_dir=None)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
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
                    work.append((child, iter(sorted(edges[child]))))
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
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_gpusim_modules():
    graph = _graph()
    # the package root is the lazy front door: it names every module, and none import it
    modules = {m for m in graph.modules if m.startswith("gpusim.")}
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in modules}
             for m in modules}
    cycles = _cycles(edges)
    assert not cycles, f"import cycles: {cycles}"


def test_advisor_imports_only_the_front_door():
    graph = _graph()
    advisor = {m for m in graph.modules if m == "advisor" or m.startswith("advisor.")}
    below = sorted((a, i) for a in advisor for i in graph.find_modules_directly_imported_by(a)
                   if i.startswith("gpusim."))
    assert not below, f"advisor reaches below the gpusim front door: {below}"


def test_nothing_but_the_cli_imports_the_advisor():
    graph = _graph()
    importers = sorted(m for m in graph.find_modules_that_directly_import("advisor")
                       if m.startswith("gpusim") and not m.startswith("gpusim.cli"))
    assert not importers, importers


@pytest.mark.parametrize("name", gpusim.__all__)
def test_front_door_name_resolves_and_is_documented(name):
    assert getattr(gpusim, name) is not None
    api = (ROOT / "README.md").read_text().split("| names in `gpusim.__all__` |", 1)
    assert len(api) == 2, "README lost its front-door table"
    assert f"`{name}`" in api[1].split("\n\n", 1)[0], f"{name} is not in README's front-door table"


def _functions(path: Path):
    """(qualified name, lines) of every function and method in a module, nested ones too."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    module = module.removesuffix(".__init__")

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{child.name}"
                yield name, child.end_lineno - child.lineno + 1
                yield from walk(child, name)
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}.{child.name}")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(path.read_text(encoding="utf-8")), module)


def test_no_function_longer_than_80_lines():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "advisor").rglob("*.py")]
    long = sorted((lines, name) for path in files for name, lines in
                  _functions(path) if lines > MAX_FUNCTION_LINES
                  and name not in LONG_FUNCTION_EXEMPT)
    assert not long, "functions over {} lines: {}".format(
        MAX_FUNCTION_LINES, ", ".join(f"{name} ({lines})" for lines, name in reversed(long)))
