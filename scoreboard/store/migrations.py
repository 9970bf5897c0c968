"""Numbered SQL migrations shipped in the `scoreboard.sql` package (the repo's sql/ folder).

`scoreboard-admin db migrate` applies what is pending; `db status` lists applied and pending versions;
the server refuses to start while any is pending (except a brand-new empty database when
`database.migrate_on_start = "empty"`, so the embedded defaults need no setup).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from importlib import resources

import peewee as pw

FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
TABLE = "schema_migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def dialect(db: pw.Database) -> str:
    return "postgresql" if isinstance(db, pw.PostgresqlDatabase) else "sqlite"


def available(kind: str) -> list[Migration]:
    folder = resources.files("scoreboard.sql").joinpath(kind)
    found = []
    for entry in folder.iterdir():
        match = FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def applied(db: pw.Database) -> dict[int, int]:
    """version -> applied_at (ms) for every applied migration; {} for a database never migrated."""
    if TABLE not in db.get_tables():
        return {}
    cursor = db.execute_sql(f"SELECT version, applied_at FROM {TABLE} ORDER BY version")
    return {int(version): int(at) for version, at in cursor.fetchall()}


def pending(db: pw.Database) -> list[Migration]:
    done = applied(db)
    return [m for m in available(dialect(db)) if m.version not in done]


def is_empty(db: pw.Database) -> bool:
    return not db.get_tables()


def migrate(db: pw.Database, report=lambda migration: None, up_to: int | None = None) -> list[Migration]:
    """Apply every pending migration (up to version `up_to`), each in its own transaction; returns what was
    applied."""
    with db.atomic():
        db.execute_sql(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at BIGINT NOT NULL)"
        )
    done = []
    for migration in pending(db):
        if up_to is not None and migration.version > up_to:
            break
        report(migration)
        with db.atomic():
            for statement in _statements(migration.sql):
                db.execute_sql(statement)
            db.execute_sql(
                f"INSERT INTO {TABLE} (version, name, applied_at) VALUES ({migration.version},"
                f" '{migration.name}', {int(time.time() * 1000)})"
            )
        done.append(migration)
    return done


def _statements(sql: str) -> list[str]:
    """Split on ';' at line ends; our migration files keep one statement per ';' and no procedural bodies."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    text = "\n".join(line.split("--", 1)[0] if "--" in line else line for line in lines)
    return [part.strip() for part in text.split(";") if part.strip()]
