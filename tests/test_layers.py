"""The package's structure: imports point one way, down the layers, no private name crosses a module, and
docstrings fit a screen.

Every import counts, at module level and inside functions: a function-level import that runs back up
the layers is still a circle, only one that shows later."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "autopeft"

#: lowest first; a module may import from its own layer (without a circle) and from those below
LAYERS = [
    ("errors", "logs", "sizes", "version", "hookspecs", "processes", "locks", "dtypes"),
    ("methods",),
    ("data", "models", "devices", "profiles", "costmodel", "estimates", "sharding", "quantization"),
    ("training",),
    ("choose",),
    # the faces ("" is autopeft/__init__), and one-release aliases of modules that moved
    ("cli", "testing", "__main__", "", "method", "settings", "plugins", "configfile"),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ["autopeft", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import in the file."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "autopeft"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "autopeft":
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                out.append((sub, []) if sub in known else (module, [alias.name]))
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    known = set(modules)
    graph, private = {}, []
    for name, path in modules.items():
        edges = set()
        for target, names in _imports(name, path, known):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
                private += [f"{name} imports {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
        graph[name] = edges
    return graph, private


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return next(i for i, names in enumerate(LAYERS) if part in names)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    graph, _ = _graph()
    assert _circles(graph) == []


def test_imports_point_down_the_layers():
    graph, _ = _graph()
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets if _layer(b) > _layer(a)]
    assert upward == []


def test_no_private_name_crosses_a_module():
    _, private = _graph()
    assert private == []


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)  # StopIteration names a module the layers do not place


def test_the_check_sees_a_circle_and_a_private_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]
    tree = _imports("autopeft.x", ROOT / "cli.py", set(_modules()))
    assert any(target == "autopeft.errors" for target, _ in tree)  # relative imports are resolved


def test_every_docstring_fits_a_screen():
    """A docstring says what and why; experiment histories live in docs/design/."""
    long = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False) or ""
                if doc.count("\n") + 1 >= 40:
                    long.append(f"{name}.{getattr(node, 'name', '<module>')}: {doc.count(chr(10)) + 1} lines")
    assert long == []


def test_importing_any_module_leaves_the_sdk_functions_in_place():
    """A submodule named like an SDK function would replace it on the package once imported (as
    ``autopeft.recommend`` the module once replaced ``autopeft.recommend`` the function)."""
    import importlib

    import autopeft

    for name in _modules():
        importlib.import_module(name)
    for function in ("estimate", "train", "recommend", "tune", "replay", "export_merged", "export_lora"):
        assert callable(getattr(autopeft, function)) and getattr(autopeft, function).__module__ == "autopeft"
