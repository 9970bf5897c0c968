"""The import rules of ARCHITECTURE.md, checked on the source with ast (nothing is imported to check it).

Rows, top to bottom; a module imports only from its own row or rows above it, and the storage
backends (leaderboard, bus, kv, store) never import each other. Nothing imports the last row: the
tornado handlers, the app that wires everything, and `client` (the Python client library, which uses
tornado's HTTP and WebSocket clients and which the server never imports). Only that last row may
import tornado. Modules not in the map are not checked.
Imports under `if TYPE_CHECKING:` are for type hints only and create no dependency at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "scoreboard"
ROWS = [
    {"errors", "config", "wire", "clock", "ids"},
    {"signing", "auth", "ratelimit", "rules", "anticheat", "redispipe", "outbox"},
    {"leaderboard", "bus", "kv", "store"},
    {"scores", "ledger", "audit", "hub", "users", "boards"},
    {"handlers", "app", "client"},
]
BACKENDS = ROWS[2]
ROW_OF = {name: index for index, row in enumerate(ROWS) for name in row}
TOP = ROWS[-1]


def module_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def unit_of(path: Path) -> str:
    """The row-map name of a file: `scoreboard/kv/redis.py` -> `kv`, `scoreboard/users.py` -> `users`."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class Imports(ast.NodeVisitor):
    """Every module a file imports at run time, as dotted names (relative imports resolved)."""

    def __init__(self, path: Path) -> None:
        self.package = ["scoreboard", *path.relative_to(PACKAGE).parent.parts]
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0:
            base = node.module.split(".")
        else:
            base = self.package[:len(self.package) - node.level + 1] + (node.module.split(".") if node.module else [])
        if node.module is None or base == ["scoreboard"]:
            self.found.update(".".join([*base, alias.name]) for alias in node.names)
        else:
            self.found.add(".".join(base))


def imports_of(path: Path) -> set[str]:
    visitor = Imports(path)
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return visitor.found


def internal_units(path: Path) -> set[str]:
    """The row-map names of the scoreboard modules `path` imports (scoreboard.sql ships data, not code)."""
    names = {name.split(".")[1] for name in imports_of(path) if name.startswith("scoreboard.") and name.count(".")}
    return names - {"sql"}


def _id(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


FILES = module_files()
MAPPED = [path for path in FILES if unit_of(path) in ROW_OF]
BELOW_TOP = [path for path in FILES if unit_of(path) not in TOP]
BACKEND_FILES = [path for path in FILES if unit_of(path) in BACKENDS]


def test_the_checker_resolves_relative_imports():
    found = imports_of(PACKAGE / "users.py")

    assert {"scoreboard.auth", "scoreboard.store.db", "scoreboard.kv"} <= found


def test_the_checker_ignores_type_checking_imports():
    assert "scoreboard.kv" not in imports_of(PACKAGE / "ratelimit.py")


@pytest.mark.parametrize("path", BELOW_TOP, ids=_id)
def test_only_the_top_row_imports_tornado(path):
    tornado = sorted(name for name in imports_of(path) if name == "tornado" or name.startswith("tornado."))

    assert tornado == [], f"{path.relative_to(PACKAGE)} imports {tornado}"


@pytest.mark.parametrize("path", MAPPED, ids=_id)
def test_a_module_imports_only_from_its_own_row_or_rows_above(path):
    unit = unit_of(path)

    below = sorted(other for other in internal_units(path) if ROW_OF.get(other, -1) > ROW_OF[unit])

    assert below == [], f"{path.relative_to(PACKAGE)} (row {ROW_OF[unit]}) imports from lower rows: {below}"


@pytest.mark.parametrize("path", BACKEND_FILES, ids=_id)
def test_a_backend_package_never_imports_another_backend(path):
    others = sorted(internal_units(path) & (BACKENDS - {unit_of(path)}))

    assert others == [], f"{path.relative_to(PACKAGE)} imports the backends {others}"


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_nothing_imports_the_top_row(path):
    """Only the app wires handlers in (and handlers share their base); app and client are imported by no one."""
    allowed = {"handlers"} if unit_of(path) in {"app", "handlers"} else set()

    top = sorted(internal_units(path) & (TOP - allowed - {unit_of(path)}))

    assert top == [], f"{path.relative_to(PACKAGE)} imports {top}"


def test_the_map_names_modules_that_exist():
    units = {unit_of(path) for path in FILES}

    assert {"errors", "config", "wire", "clock", "auth", "users", "kv", "store", "handlers", "app"} <= units
