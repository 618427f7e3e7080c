"""The package's shape: no module reaches into another's private names.

import-linter (``make lint``) checks which module may import which (docs/architecture.md,
"Layers"); this checks what they touch once imported. A name with a leading underscore
is its module's own: another module that reads ``thing._name`` or imports ``_name``
depends on what its owner may change at will, which is how the old centre's modules
came to hold each other's state. The check is by name: ``x._name`` is allowed only in a
module that itself defines ``_name`` (as an attribute, a slot, a function or a class).
"""

from __future__ import annotations

import ast
from pathlib import Path

import roomkit

PACKAGE = Path(roomkit.__file__).parent

#: Private names of the standard library that roomkit uses on purpose.
STDLIB: frozenset[tuple[str, str]] = frozenset(
    {
        ("os", "_exit"),  # the second signal ends the process at once, as documented
        ("argparse", "_ArgumentGroup"),  # the type of an argparse group, for annotations
    }
)


def defined_names(tree: ast.Module) -> set[str]:
    """Every name the module defines or mentions as its own: attributes it sets on
    ``self``/``cls``, slots (strings), functions, classes and plain names."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and _on_self(node):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        elif isinstance(node, ast.Name):
            names.add(node.id)
    return names


def reaches(path: Path) -> list[str]:
    """Where the module at ``path`` reaches into another module's private names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = defined_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found += [
                f"{path.name}:{node.lineno}: imports {alias.name} from {node.module}"
                for alias in node.names
                if _private(alias.name) and node.module != "__future__"
            ]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and not _on_self(node):
            owner = ast.unparse(node.value)
            if node.attr not in own and (owner, node.attr) not in STDLIB:
                found.append(f"{path.name}:{node.lineno}: {owner}.{node.attr}")
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _on_self(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")


def test_no_module_reaches_into_another_modules_private_names() -> None:
    found = [line for path in sorted(PACKAGE.rglob("*.py")) for line in reaches(path)]
    assert found == []


def test_the_check_sees_a_reach(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from ._x import _helper\n\ndef f(conn):\n    return conn._queue, os._exit\n")
    assert reaches(module) == [
        "m.py:1: imports _helper from _x",
        "m.py:4: conn._queue",
    ]
