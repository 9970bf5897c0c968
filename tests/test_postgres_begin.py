"""store.db.PostgresqlDatabase sends BEGIN with a transaction's first statement instead of on its own.

What must hold: a transaction still isolates its writes until COMMIT, and no path leaves a BEGIN waiting
that would swallow later statements meant to commit on their own (PostgreSQL only: SQLite is unchanged).
"""

from __future__ import annotations

import pytest

from scoreboard.store import migrations
from scoreboard.store.db import open_database

from conftest import require_postgres
from harness import create_schema, drop_schema


@pytest.fixture
def databases(unique):
    """Two connections to one fresh schema: the one under test and an observer."""
    url = create_schema(require_postgres(), f"b_{unique}")
    tested, observer = open_database(url), open_database(url)
    migrations.migrate(tested)
    yield tested, observer
    tested.close()
    observer.close()
    drop_schema(url)


def _put(db, key: str) -> None:
    db.execute_sql('INSERT INTO settings ("key", "value") VALUES (%s, %s)', (key, "v"))


def _seen(observer, key: str) -> bool:
    return observer.execute_sql('SELECT 1 FROM settings WHERE "key" = %s', (key,)).fetchone() is not None


def _state_of(observer, pid: int) -> str:
    return observer.execute_sql("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]


def test_the_server_sees_no_transaction_until_its_first_statement(databases):
    tested, observer = databases
    pid = tested.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    with tested.atomic():
        before_any = _state_of(observer, pid)  # an eager BEGIN would already show "idle in transaction"
        _put(tested, "first")
        after_first = _state_of(observer, pid)
    assert (before_any, after_first) == ("idle", "idle in transaction")


def test_writes_in_a_transaction_stay_unseen_until_it_commits(databases):
    tested, observer = databases
    with tested.atomic():
        _put(tested, "inside")
        assert not _seen(observer, "inside")
    assert _seen(observer, "inside")


def test_a_statement_after_an_empty_transaction_commits_on_its_own(databases):
    tested, observer = databases
    with tested.atomic():
        pass
    _put(tested, "after-empty")
    assert _seen(observer, "after-empty")


def test_a_statement_after_a_failed_first_statement_commits_on_its_own(databases):
    tested, observer = databases
    with pytest.raises(Exception, match="(?i)syntax"), tested.atomic():
        tested.execute_sql("SELEC 1")
    _put(tested, "after-failure")
    assert _seen(observer, "after-failure")


def test_a_transaction_rolled_back_before_any_statement_leaves_none_waiting(databases):
    tested, observer = databases
    with pytest.raises(RuntimeError), tested.atomic():
        raise RuntimeError("before any statement")
    _put(tested, "after-rollback")
    assert _seen(observer, "after-rollback")
