"""The rules ARCHITECTURE.md states about the package's modules hold."""
import ast
from pathlib import Path

import tconv3d

PACKAGE = Path(tconv3d.__file__).resolve().parent
# The private modules built for sharing: their ``_names`` may be imported by others.
SHARED = {"_geometry", "_validation", "_threads", "_plan", "_ops", "_kernels"}
MAX_LINES = 600


def _modules():
    """``{dotted name: source path}`` of every Python module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("tconv3d", *path.relative_to(PACKAGE).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(modules):
    """``{module: {(imported module, name or None)}}``, function-level imports included."""
    found = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = found.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    edges.add((target, alias.name))
            elif isinstance(node, ast.Import):
                edges.update((alias.name, None) for alias in node.names)
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {}
    for name, edges in _imports(modules).items():
        targets = set()
        for target, alias in edges:
            full = f"{target}.{alias}"
            if full in modules:              # "from . import io" imports a module
                targets.add(full)
            elif target in modules and target != "tconv3d":   # the package __init__ is
                targets.add(target)                            # where everything meets
        graph[name] = targets - {name}

    def visit(name, path):
        for target in graph.get(name, ()):
            assert target not in path, " -> ".join([*path, target])
            visit(target, [*path, target])

    for name in graph:
        visit(name, [name])


def test_private_names_only_from_the_shared_modules():
    modules = _modules()
    offenders = []
    for name, edges in _imports(modules).items():
        for target, alias in edges:
            private = alias and alias.startswith("_") and not alias.startswith("__")
            if (private and target.startswith("tconv3d") and f"{target}.{alias}" not in modules
                    and alias not in SHARED and target.rpartition(".")[2] not in SHARED):
                offenders.append(f"{name} imports {target}.{alias}")
    assert offenders == []


def test_modules_stay_small():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines())
             for name, path in _modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
