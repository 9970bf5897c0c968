"""Statement (scoreboard/store/db.py): SQL generated once per kind of database, then only re-bound.

The submission path's statements must actually be cached (a statement that silently falls back to
peewee every time is only slow, so nothing else would notice), and a cached statement must do exactly
what the peewee query does, None values and values used twice included.
"""

from __future__ import annotations

import pytest

from scoreboard import audit, ledger
from scoreboard.store.db import Statement, execute_all
from scoreboard.store.models import Setting

HOT = ["_FIND_ACTION", "_SCORE_ROW", "_INSERT_ACTION", "_INSERT_SCORE", "_UPDATE_SCORE", "_ADVANCE_SESSION",
       "_USERNAME", "_RECORD_RESULT"]


def _on_db(server, fn):
    """Run fn on the server's writer thread, inside a transaction."""
    return server.call(server.app.store.write(fn))


@pytest.mark.parametrize("name", HOT)
def test_every_statement_of_the_submission_path_compiles_to_cached_sql(server, name):
    statement: Statement = getattr(ledger, name)
    compiled = _on_db(server, statement._compile)
    assert compiled is not None, f"{name} binds something that is not a probe value: it would never be cached"
    sql, order = compiled
    assert sorted(set(order)) == list(range(len(statement.probe)))


@pytest.mark.parametrize("name", ["_ENSURE_HEAD", "_HEAD", "_SET_HEAD", "_INSERT_RECORD"])
def test_every_statement_of_the_audit_chain_compiles_to_cached_sql(server, name):
    statement: Statement = getattr(audit, name)
    compiled = _on_db(server, statement._compile)
    assert compiled is not None, f"{name} binds something that is not a probe value: it would never be cached"
    assert sorted(set(compiled[1])) == list(range(len(statement.probe)))


@pytest.mark.parametrize("backend", ["services"], indirect=True)  # SQLite has one writer and no row locks
def test_the_locked_chain_head_compiles_to_cached_sql_on_postgresql(server):
    name = "_HEAD_LOCKED"
    statement: Statement = getattr(audit, name)
    compiled = _on_db(server, statement._compile)
    assert compiled is not None, f"{name} binds something that is not a probe value: it would never be cached"
    assert sorted(set(compiled[1])) == list(range(len(statement.probe)))


@pytest.mark.parametrize("backend", ["services"], indirect=True)  # SQLite has one writer and no row locks
def test_the_score_row_is_locked_on_postgresql(server):
    sql, _ = _on_db(server, ledger._SCORE_ROW_LOCKED._compile)
    assert sql.upper().endswith("FOR UPDATE")


def test_cached_statements_bind_each_call_s_values_including_a_value_used_twice(server):
    bump = Statement(lambda value, key: Setting.update(value=value).where(
        (Setting.key == key) & (Setting.value != value)), ("v", "k"))
    read = Statement(lambda key: Setting.select(Setting.value).where(Setting.key == key), ("k",))

    def run():
        Setting.insert_many([{"key": "st-a", "value": "1"}, {"key": "st-b", "value": "1"}]).execute()
        first = bump.cursor("2", "st-a").rowcount
        again = bump.cursor("2", "st-a").rowcount  # value != '2' is now false: nothing changes
        other = bump.cursor("3", "st-b").rowcount
        return first, again, other, read.cursor("st-a").fetchone()[0], read.cursor("st-b").fetchone()[0]

    assert _on_db(server, run) == (1, 0, 1, "2", "3")
    assert None not in (bump.compiled.get(type(server.app.store.db)), read.compiled.get(type(server.app.store.db)))


def test_a_none_value_goes_through_peewee_so_is_null_stays_is_null(server):
    find = Statement(lambda value: Setting.select(Setting.key).where(Setting.value == value), ("v",))

    def run():
        Setting.create(key="st-n", value="x")
        return find.cursor("x").fetchall(), find.cursor(None).fetchall()

    assert _on_db(server, run) == ([("st-n",)], [])


def test_a_statement_binding_more_than_its_probes_is_not_cached_but_still_runs(server):
    limited = Statement(lambda key: Setting.select(Setting.value).where(Setting.key == key).limit(1), ("k",))

    def run():
        Setting.create(key="st-l", value="y")
        return limited.cursor("st-l").fetchone()[0]

    assert _on_db(server, run) == "y"
    assert limited.compiled[type(server.app.store.db)] is None


def test_insert_returns_the_new_row_id_on_every_backend(server):
    from scoreboard.store.models import User

    insert = Statement(lambda name, key, hashed, role, status, created: User.insert(
        username=name, username_key=key, password_hash=hashed, role=role, status=status, created_at=created),
        ("n", "k", "h", "r", "s", 1))

    def run():
        ids = [insert.insert(f"st{i}", f"st{i}", "h", "player", "active", 5) for i in range(3)]
        return ids, [User.get_by_id(i).username for i in ids]

    ids, names = _on_db(server, run)
    assert names == ["st0", "st1", "st2"] and ids == sorted(set(ids))
    assert insert.compiled[type(server.app.store.db)] is not None


def _param(server) -> str:
    return server.app.store.db.param


def test_execute_all_runs_statements_in_order_and_answers_with_the_last_ones_rows(server):
    p = _param(server)
    statements = [(f'INSERT INTO settings ("key", "value") VALUES ({p}, {p})', ["ea-1", "first"]),
                  (f'UPDATE settings SET "value" = {p} WHERE "key" = {p}', ["second", "ea-1"]),
                  (f'INSERT INTO settings ("key", "value") VALUES ({p}, {p})', ["ea-2", "third"]),
                  (f'SELECT "key", "value" FROM settings WHERE "key" LIKE {p} ORDER BY "key"', ["ea-%"])]

    rows = _on_db(server, lambda: [tuple(row) for row in execute_all(statements).fetchall()])

    assert rows == [("ea-1", "second"), ("ea-2", "third")]


def test_a_failing_statement_of_execute_all_leaves_the_transaction_unchanged(server):
    p = _param(server)
    statements = [(f'INSERT INTO settings ("key", "value") VALUES ({p}, {p})', ["eb-1", "v"]),
                  (f'INSERT INTO settings ("key", "value") VALUES ({p}, {p})', ["eb-1", "again"]),  # key taken
                  (f'INSERT INTO settings ("key", "value") VALUES ({p}, {p})', ["eb-2", "v"])]

    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        _on_db(server, lambda: execute_all(statements))

    kept = _on_db(server, lambda: Setting.select().where(Setting.key.startswith("eb-")).count())
    assert kept == 0
