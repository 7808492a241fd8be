"""The import graph: layers point one way and nothing imports in a cycle (docs/architecture.md).

Every import counts, those inside functions too: a lazy import upward is still upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mistral_nbenv"

# Lowest first. A module may import its own layer and the layers below it, never above
# (docs/architecture.md: ui -> workspace -> client/policies -> store/config/secrets -> errors).
LAYERS: dict[str, tuple[str, ...]] = {
    "base": ("errors", "_forksafe"),
    "foundations": ("config", "secrets", "store"),
    "domain": ("environments", "client", "policies"),
    "workspace": ("workspace",),
    "ui": ("ui", "widget", "__main__", "__init__"),
}
# The loopback test server is for users' test suites: the standard library, itself, the
# one mask (secrets, stdlib-only) and the SDK's discovered surface (for its generated
# routes; mistralai only lazily), the packaged price table (to say what it served would
# cost) and nothing else; the ui layer (the demo) may use it.
STANDALONE = ("testing",)
STANDALONE_MAY_IMPORT = ("secrets", "client.surface", "config.prices")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def _layer(module: str) -> int:
    top = _top(module)
    for index, members in enumerate(LAYERS.values()):
        if top in members:
            return index
    raise AssertionError(f"mistral_nbenv.{module} is in no layer: add it to LAYERS and the map")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (relative to the package), anywhere in the file."""
    if name == "__init__":
        package_parts: list[str] = []  # the package's own __init__
    elif path.name == "__init__.py":
        package_parts = name.split(".")
    else:
        package_parts = name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                prefix = ".".join(["mistral_nbenv", *base])
                module = f"{prefix}.{node.module}" if node.module else prefix
            else:
                module = node.module or ""
            submodules = [f"{module}.{a.name}" for a in node.names]  # `from . import keys`
            if any(m.removeprefix("mistral_nbenv.") in modules for m in submodules):
                targets = submodules  # the package itself runs first anyway: not a dependency
            else:
                targets = [module]
        else:
            continue
        for target in targets:
            if target == "mistral_nbenv":
                out.add("__init__")
            elif target.startswith("mistral_nbenv."):
                inner = target.removeprefix("mistral_nbenv.")
                while inner and inner not in modules:
                    inner = inner.rpartition(".")[0]
                if inner and inner != name:
                    out.add(inner)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer() -> None:
    for name in _graph():
        if _top(name) not in STANDALONE:
            _layer(name)


@pytest.mark.parametrize("name", sorted(_graph()))
def test_imports_point_down(name: str) -> None:
    imported = _graph()[name]
    if _top(name) in STANDALONE:
        others = {m for m in imported if _top(m) != _top(name)}
        assert others <= set(STANDALONE_MAY_IMPORT), others
        return
    ui = list(LAYERS).index("ui")
    upward = sorted(
        m
        for m in imported
        if (_top(m) in STANDALONE and _layer(name) != ui)
        or (_top(m) not in STANDALONE and _layer(m) > _layer(name))
    )
    assert not upward, f"mistral_nbenv.{name} imports upward: {upward}"


def test_no_import_cycle() -> None:
    graph = _graph()
    # Package __init__ files run before their submodules; a submodule importing its own
    # package's __init__ (backends.vault -> backends) is how packages work, not a cycle.
    edges = {
        name: {m for m in deps if not (m == _top(name) and name.startswith(m + "."))}
        for name, deps in graph.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The walk finds imports inside functions and resolves relative and absolute ones."""
    source = (
        "def f():\n    from mistral_nbenv.workspace import get_client\n"
        "    from ..secrets import keys\n"
    )
    path = tmp_path / "config" / "probe.py"
    path.parent.mkdir()
    path.write_text(source)
    found = _imports("config.probe", path, _modules())
    assert found == {"workspace", "secrets.keys"}
    assert _layer("workspace") > _layer("config")


def test_the_tree_shows_the_architecture() -> None:
    """A handful of modules at the root; every concern in its own folder."""
    root = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert root == [
        "__init__",
        "__main__",
        "_forksafe",
        "environments",
        "errors",
        "widget",
        "workspace",
    ]
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert folders == ["client", "config", "policies", "secrets", "store", "testing", "ui"]


def test_one_fork_hook_in_the_package() -> None:
    """Fork safety is a pid check where state is taken (_forksafe), not a hook per module."""
    hooks = {
        str(p.relative_to(PACKAGE)): p.read_text().count("register_at_fork(")
        for p in PACKAGE.rglob("*.py")
    }
    assert {name: n for name, n in hooks.items() if n} == {"_forksafe.py": 1}
