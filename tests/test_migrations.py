"""Migrations that change a table holding data keep every row: each is applied to a database that has
rows, on both backends, and the data is checked afterwards."""

from __future__ import annotations

import peewee as pw
import pytest

from scoreboard import audit
from scoreboard.store import migrations, models
from scoreboard.store.db import open_database
from scoreboard.store.models import AuditRecord

from conftest import POSTGRES_URL
from harness import create_schema, drop_schema


@pytest.fixture
def database(backend, tmp_path, unique):
    """An empty database of `backend`, bound to the models."""
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "embedded" else create_schema(POSTGRES_URL, f"m_{unique}")
    db = open_database(url)
    models.database.initialize(db)
    yield db
    db.close()
    drop_schema(url)


def _append(n: int) -> None:
    with models.database.atomic():
        for i in range(n):
            audit.append(audit.Context(i, f"s{i}", "127.0.0.1", "tests", f"r{i}"), "test", f"item:{i}",
                         {"n": i}, {"n": i + 1}, 1_000 + i)


def _rows() -> list[tuple]:
    return [tuple(row.values()) for row in AuditRecord.select().order_by(AuditRecord.id).dicts()]


def test_0002_keeps_every_audit_record_its_id_and_the_chain(database):
    migrations.migrate(database, up_to=1)
    _append(5)
    before = _rows()

    assert [m.version for m in migrations.migrate(database)] == [2]

    assert _rows() == before
    assert audit.verify_stored() is None
    _append(1)  # the chain goes on after the rebuilt table's last id
    after = _rows()
    assert after[-1][0] > before[-1][0] and after[-1][-2] == before[-1][-1]
    assert audit.verify_stored() is None


def test_0002_leaves_no_index_on_the_audit_hash(database):
    migrations.migrate(database)
    _append(1)
    stored = AuditRecord.select().get()

    with models.database.atomic():  # a second row with the same hash is no longer refused by an index
        AuditRecord.insert(at=1, kind="copy", prev_hash=stored.hash, hash=stored.hash).execute()

    assert AuditRecord.select().where(AuditRecord.hash == stored.hash).count() == 2


def test_0001_refused_a_repeated_audit_hash(database):
    """The contrast that makes the test above mean something: before 0002 the index refused it."""
    migrations.migrate(database, up_to=1)
    _append(1)
    stored = AuditRecord.select().get()

    with pytest.raises(pw.IntegrityError), models.database.atomic():
        AuditRecord.insert(at=1, kind="copy", prev_hash=stored.hash, hash=stored.hash).execute()
