"""Migrations that change a table holding data keep every row: each is applied to a database that has
rows, on both backends, and the data is checked afterwards."""

from __future__ import annotations

import peewee as pw
import pytest

from scoreboard import audit, ledger
from scoreboard.store import migrations, models
from scoreboard.store.db import open_database
from scoreboard.store.models import Action, AuditRecord

from conftest import POSTGRES_URL, require_postgres
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

    assert [m.version for m in migrations.migrate(database, up_to=2)] == [2]

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


@pytest.fixture
def postgres(unique):
    """An empty PostgreSQL database bound to the models: 0003 changes how PostgreSQL stores pages only."""
    url = create_schema(require_postgres(), f"m_{unique}")
    db = open_database(url)
    models.database.initialize(db)
    yield db
    db.close()
    drop_schema(url)


def _pages_kept_by_result_updates(batches: int = 12, size: int = 10) -> int:
    """Insert actions a batch at a time and record each batch's acknowledged results (longer: with ranks) in
    a transaction of their own, as the server does; count the rows that kept their page (`ctid` block)."""
    user = models.User.create(username="u", username_key="u", password_hash="x", role="player", created_at=1)
    kept = 0
    for batch in range(batches):
        with models.database.atomic():
            ids = [Action.insert(user=user.id, session_id="s" * 32, action_id=f"a{batch}-{i}", body_hash="h" * 64,
                                 board="level", period="2026-11-28", type="level_complete", points=1, seq=i,
                                 client_ts=1, result=_RESULT, created_at=1).execute() for i in range(size)]
        before = _blocks(ids)
        with models.database.atomic():
            ledger.record_results([(_RESULT[:-1] + ', "rank": 12345, "previous_rank": 12346, "total": 99999}',
                                    row_id) for row_id in ids])
        after = _blocks(ids)
        kept += sum(before[row_id] == after[row_id] for row_id in ids)
    return kept


_RESULT = ('{"accepted": true, "duplicate": false, "action_id": "9f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b", '
           '"board": "level", "period": "2026-11-28", "score": 123456}')


def _blocks(ids: list[int]) -> dict[int, str]:
    cursor = models.database.execute_sql("SELECT id, (ctid::text::point)[0] FROM actions WHERE id = ANY(%s)",
                                         (ids,))
    return dict(cursor.fetchall())


def test_0003_result_updates_leave_action_rows_on_their_page_on_postgresql(postgres):
    migrations.migrate(postgres)

    assert _pages_kept_by_result_updates() >= 110  # 117 of 120 here; every one in the bench's run


def test_before_0003_result_updates_moved_rows_off_their_full_pages(postgres):
    """The contrast that makes the test above mean something."""
    migrations.migrate(postgres, up_to=2)

    assert _pages_kept_by_result_updates() < 80  # 49 of 120 here
