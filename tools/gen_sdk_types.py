"""Write ``mistral_nbenv/client/sdk_types.pyi``: the typed namespaces of ``Client``.

``python tools/gen_sdk_types.py`` reads the installed ``mistralai`` SDK's own source (its
``Mistral`` class and every namespace class under it) and writes a stub in which each
namespace has the SDK's methods with the SDK's own parameters and return types, plus the two
keywords the wrapper adds (``cache=``, ``retry=``). Type checkers and editors then show
``client.chat.complete``'s real signature. ``tests/test_typing.py`` fails when the stub no
longer matches the installed SDK: run this again and commit the result.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "mistral_nbenv" / "client" / "sdk_types.pyi"
PACKAGE = "mistralai.client"


def _source(module: str) -> tuple[ast.Module, str]:
    spec = importlib.util.find_spec(module)
    assert spec is not None, module
    assert spec.origin is not None, module
    text = Path(spec.origin).read_text("utf-8")
    return ast.parse(text), module


def _absolute(node: ast.ImportFrom, module: str) -> ast.ImportFrom:
    if not node.level:
        return node
    base = module.rsplit(".", node.level)[0]
    name = f"{base}.{node.module}" if node.module else base
    return ast.ImportFrom(module=name, names=node.names, level=0)


def _imports(tree: ast.Module, module: str) -> list[ast.stmt]:
    """The module's imports, at top level and under ``if TYPE_CHECKING``."""
    found: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(_absolute(node, module) if isinstance(node, ast.ImportFrom) else node)
        elif isinstance(node, ast.If):
            for inner in node.body:
                if isinstance(inner, ast.ImportFrom):
                    found.append(_absolute(inner, module))
    return found


def _where(imports: list[ast.stmt]) -> dict[str, str]:
    """Imported class name -> its module (``from mistralai.client.chat import Chat``)."""
    out = {}
    for node in imports:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            for alias in node.names:
                out[alias.asname or alias.name] = node.module
    return out


def _name(annotation: ast.expr) -> str | None:
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return annotation.value
    if isinstance(annotation, ast.Name):
        return annotation.id
    return None


def _extra(args: ast.arguments) -> ast.arguments:
    """The method's parameters with the wrapper's ``cache=`` and ``retry=``."""
    extra = [
        ast.arg("cache", ast.parse('bool | Literal["refresh"] | None', mode="eval").body),
        ast.arg("retry", ast.parse('bool | Literal["unsent"] | None', mode="eval").body),
    ]
    ellipsis = ast.Constant(Ellipsis)
    for each in (*args.args[1:], *args.kwonlyargs, args.vararg, args.kwarg):
        if each is not None and each.annotation is None:
            each.annotation = ast.Name("Any")  # the SDK left it open
    # the wrapper retries itself: the SDK's ``retries=`` is refused (a TypeError), so left out
    kept = [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    kept = [(a, d) for a, d in kept if a.arg != "retries"]
    return ast.arguments(
        posonlyargs=args.posonlyargs,
        args=args.args,
        vararg=args.vararg,
        kwonlyargs=[a for a, _ in kept] + extra,
        kw_defaults=[None if d is None else ellipsis for _, d in kept] + [ellipsis, ellipsis],
        kwarg=args.kwarg,
        defaults=[ellipsis for _ in args.defaults],
    )


def generate() -> str:
    """The stub's text for the installed SDK."""
    version = importlib.metadata.version("mistralai")
    sdk_tree, sdk_module = _source(f"{PACKAGE}.sdk")
    sdk_imports = _imports(sdk_tree, sdk_module)
    where = _where(sdk_imports)
    (root,) = [n for n in sdk_tree.body if isinstance(n, ast.ClassDef) and n.name == "Mistral"]
    queue: list[tuple[str, str]] = []
    namespaces: dict[str, str] = {}  # attribute of Mistral -> class
    for node in root.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            cls = _name(node.annotation)
            if cls in where:
                namespaces[node.target.id] = cls
                queue.append((cls, where[cls]))
    classes: dict[str, ast.ClassDef] = {}
    imports: dict[str, ast.stmt] = {}
    while queue:
        cls, module = queue.pop(0)
        if cls in classes:
            continue
        tree, _ = _source(module)
        module_imports = _imports(tree, module)
        local = _where(module_imports)
        (found,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
        body: list[ast.stmt] = []
        overloaded = {
            n.name
            for n in found.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and any(_name(d) == "overload" for d in n.decorator_list)
        }
        for node in found.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                sub = _name(node.annotation)
                if sub in local and sub != "BaseSDK":
                    body.append(ast.AnnAssign(node.target, ast.Name(sub), None, simple=1))
                    queue.append((sub, local[sub]))
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.name.startswith("_"):
                    continue
                is_overload = any(_name(d) == "overload" for d in node.decorator_list)
                if node.name in overloaded and not is_overload:
                    continue  # a stub keeps the overloads, not the implementation
                stub = type(node)(
                    name=node.name,
                    args=_extra(node.args),
                    body=[ast.Expr(ast.Constant(Ellipsis))],
                    decorator_list=[d for d in node.decorator_list if _name(d) in ("overload",)],
                    returns=node.returns or ast.Name("Any"),
                    type_params=[],
                    type_comment=None,
                )
                ast.copy_location(stub, node)
                body.append(stub)
        doc = ast.get_docstring(found)
        head = [ast.Expr(ast.Constant(doc))] if doc else []
        made = ast.ClassDef(
            name=cls, bases=[], keywords=[], body=head + (body or [ast.Pass()]),
            decorator_list=[], type_params=[],
        )  # fmt: skip
        classes[cls] = ast.fix_missing_locations(made)
        for node in module_imports:
            imports.setdefault(ast.unparse(node), node)
    defined = set(classes) | {"BaseSDK"}
    # only the imports the signatures need (string annotations included)
    used = set(re.findall(r"[A-Za-z_]\w*", "\n".join(ast.unparse(c) for c in classes.values())))
    taken: set[str] = set()  # a name imported from two modules: the first one
    lines = [
        f'"""The SDK\'s namespaces as ``Client`` offers them: mistralai {version}\'s own',
        "signatures and return types, plus ``cache=`` and ``retry=``. Generated by",
        '``python tools/gen_sdk_types.py``; do not edit."""',
        "",
        "from typing import Literal",
    ]
    for text, node in sorted(imports.items()):
        if isinstance(node, ast.ImportFrom):
            names = [
                a
                for a in node.names
                if (a.asname or a.name) not in defined | taken and (a.asname or a.name) in used
            ]
            taken |= {a.asname or a.name for a in names}
            if not names:
                continue
            node = ast.ImportFrom(module=node.module, names=names, level=0)
            text = ast.unparse(node)
        elif not any((a.asname or a.name).split(".")[0] in used for a in node.names):  # type: ignore[attr-defined]
            continue
        if text not in lines:
            lines.append(text)
    for cls in classes.values():
        lines += ["", "", ast.unparse(cls)]
    root_body = "\n".join(f"    {attr}: {cls}" for attr, cls in sorted(namespaces.items()))
    lines += [
        "",
        "",
        "class Namespaces:",
        '    """What ``Client`` adds to itself from the SDK: its root namespaces."""',
        "",
        root_body,
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    TARGET.write_text(generate(), "utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
