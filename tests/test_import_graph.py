"""The package's import graph: every module imports on its own, no cycles.

Two checks (issue 16):

- Each module of `keras_edu` imports in a fresh interpreter. One
  subprocess (so that nothing this test session imported leaks in) imports
  the modules one after the other, dropping every `keras_edu*` entry of
  `sys.modules` before each, so each import starts from nothing of the
  package. Keras and the backend stay loaded between them: they are not
  what is under test, and reloading them would cost seconds per module.
- `keras_edu`'s import graph, read statically (`ast`), has no cycle.
  Only the imports that run when a module is imported count: those at
  module level, including the ones inside module-level `if`/`try` blocks
  and class bodies, but not under `if TYPE_CHECKING:`. Imports inside a
  function or method body run when it is called, which is the standard way
  to break a cycle, so they are left out. An edge goes to the module an
  import names: `from keras_edu.models import common` to
  `keras_edu.models.common`, `from keras_edu import Distiller` to
  `keras_edu` itself (its `__init__`). The implicit import of a parent
  package is not an edge: every submodule would otherwise close a loop
  with the `__init__` that imports it.
"""

import ast
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "keras_edu"


def package_modules():
    """`{dotted module name: source path}` of every module of the package."""
    modules = {}
    top = os.path.join(ROOT, PACKAGE)
    for directory, subdirs, files in os.walk(top):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith((".", "_")))
        if "__init__.py" not in files:
            continue
        parts = os.path.relpath(directory, ROOT).split(os.sep)
        for file in sorted(files):
            if not file.endswith(".py"):
                continue
            stem = file[: -len(".py")]
            name = ".".join(parts if stem == "__init__" else parts + [stem])
            modules[name] = os.path.join(directory, file)
    return modules


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_nodes(body):
    """The import statements that run when a module body runs."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue  # Runs when called, not at import.
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_time_nodes(node.orelse)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    yield from _import_time_nodes(children)


def module_level_imports(name, path, modules):
    """The package modules `name` imports at module level, sorted."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    is_package = os.path.basename(path) == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in _import_time_nodes(tree.body):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            # `from pkg import sub` imports the submodule; `from pkg import
            # Name` runs pkg's `__init__`.
            targets.add(submodule if submodule in modules else source)
    return sorted(t for t in targets if t in modules)


def import_graph():
    modules = package_modules()
    return {
        name: module_level_imports(name, path, modules)
        for name, path in modules.items()
    }


def find_cycles(graph):
    """One cycle per strongly connected component that has one (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(set(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_one_cycle(graph, component) for component in components]


def _one_cycle(graph, component):
    """A shortest path from the component's first module back to itself."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in graph[node]:
                if succ == start:
                    return paths[node] + [start]
                if succ in component and succ not in paths:
                    paths[succ] = paths[node] + [succ]
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # Not reached.


def test_graph_reader_sees_the_package():
    graph = import_graph()
    assert "keras_edu" in graph and "keras_edu.distiller" in graph
    assert "keras_edu.models.common" in graph["keras_edu.models.resnet"]
    # The cycle finder on two toy graphs.
    assert find_cycles({"a": ["b"], "b": ["a"]}) == [["a", "b", "a"]]
    assert find_cycles({"a": ["b"], "b": []}) == []


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "Import cycles among keras_edu's modules:\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles
    )


_IMPORT_EACH = r"""
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "keras_edu" or m.startswith("keras_edu.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=-4)
print(json.dumps(failures))
"""


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(package_modules())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, json.dumps(names)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{n}:\n{tb}" for n, tb in failures.items())
