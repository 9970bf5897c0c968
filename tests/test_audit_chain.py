"""The tamper-evident audit trail of accepted scores (scoreboard.audit), on both backends.

Every accepted action writes exactly one "score.accepted" record in its own transaction. Records are
hash-chained; verify_stored() names the first record whose content or link is wrong, and notices records
removed from the end through the stored chain head. Tampering is done the way an intruder would: raw
SQL on the stored rows.
"""

from __future__ import annotations

import json

import pytest

from scoreboard import audit
from scoreboard.store.models import Action, AuditRecord, Setting

from harness import Http, Player


@pytest.fixture
def srv(server_factory, clock):
    return server_factory(clock=clock)


@pytest.fixture
def alice(srv, clock) -> Player:
    return Player(Http(srv.url), "alice", clock_ms=clock.now_ms)


def records(server) -> list[AuditRecord]:
    return server.call(server.app.store.read(lambda: list(AuditRecord.select().order_by(AuditRecord.id))))


def verify(server) -> audit.Break | None:
    return server.call(server.app.store.read(audit.verify_stored))


def execute(server, sql: str, *params) -> None:
    """Raw SQL on the stored rows (placeholders written as `?`), committed at once."""
    def run() -> None:
        db = server.app.store.db
        with db.atomic():
            db.execute_sql(sql.replace("?", db.param), params)

    server.call(server.app.store.read(run))


def submit_points(player: Player, *points: int) -> None:
    for value in points:
        response = player.submit(value)
        assert response.status == 200, response.raw


# ---- one record per accepted action -------------------------------------------------------------


def test_every_accepted_action_has_exactly_one_score_accepted_record(srv, alice):
    submit_points(alice, 100, 50, 25)

    actions = srv.call(srv.app.store.read(lambda: list(Action.select().order_by(Action.id))))
    trail = records(srv)
    assert len(actions) == 3
    for action in actions:
        matching = [r for r in trail if r.subject == f"action:{action.id}"]
        assert len(matching) == 1
        assert matching[0].kind == "score.accepted"


def test_each_record_holds_the_score_before_and_after_the_action(srv, alice):
    submit_points(alice, 100, 50)

    first, second = records(srv)

    assert json.loads(first.before) == {"score": None}
    assert json.loads(second.before) == {"score": 100}
    after = json.loads(second.after)
    assert after["score"] == 150
    assert {k: after[k] for k in ("points", "type", "board", "period")} == {
        "points": 50, "type": "level_complete", "board": "global", "period": "all"}


def test_a_record_names_the_client_action_id_in_its_after(srv, alice):
    body = alice.body(10)
    assert alice.send(json.dumps(body).encode()).status == 200

    (record,) = records(srv)

    assert json.loads(record.after)["action_id"] == body["action_id"]


def test_a_record_says_who_acted_from_where_and_in_which_request(srv, alice, clock):
    raw = json.dumps(alice.body(10)).encode()
    response = alice.send(raw, headers={"User-Agent": "space-game/1.4", "X-Request-Id": "req-audit-1"})

    (record,) = records(srv)

    assert response.headers["x-request-id"] == "req-audit-1"
    assert (record.actor_id, record.session_id) == (alice.user_id, alice.login["session_id"])
    assert (record.request_id, record.user_agent, record.address) == ("req-audit-1", "space-game/1.4", "127.0.0.1")
    assert record.at == clock.now_ms()


def test_a_rejected_action_writes_no_record(srv, alice):
    submit_points(alice, 10)

    assert alice.submit(5000).status == 422

    assert len(records(srv)) == 1


# ---- the chain ----------------------------------------------------------------------------------


def test_records_are_linked_from_genesis_to_the_stored_head(srv, alice):
    submit_points(alice, 1, 2, 3)

    trail = records(srv)
    head = srv.call(srv.app.store.read(lambda: Setting.get_by_id(audit.HEAD_KEY).value))

    assert [r.prev_hash for r in trail] == [audit.GENESIS] + [r.hash for r in trail[:-1]]
    assert head == trail[-1].hash


def test_an_empty_trail_verifies(srv):
    assert verify(srv) is None


def test_an_intact_chain_verifies(srv, alice, clock):
    bob = Player(Http(srv.url), "bob", clock_ms=clock.now_ms)
    for points in (10, 20, 30):
        submit_points(alice, points)
        submit_points(bob, points + 1)

    assert verify(srv) is None


@pytest.mark.parametrize(("column", "value"), [
    ("after", '{"score":999999}'),
    ("before", '{"score":0}'),
    ("subject", "action:999"),
    ("at", 1),
    ("actor_id", 424242),
])
def test_changing_one_stored_column_of_record_k_breaks_the_chain_at_exactly_k(srv, alice, column, value):
    submit_points(alice, 1, 2, 3, 4, 5)
    k = records(srv)[2].id

    execute(srv, f"UPDATE audit_log SET {column} = ? WHERE id = ?", value, k)

    found = verify(srv)
    assert found is not None
    assert found.record_id == k


def test_an_edited_record_with_a_recomputed_hash_breaks_the_link_to_the_next_record(srv, alice):
    submit_points(alice, 1, 2, 3, 4, 5)
    trail = records(srv)
    k, following = trail[2], trail[3]
    content = {name: getattr(k, name) for name in audit.HASHED_FIELDS} | {"after": '{"score":999999}'}

    execute(srv, "UPDATE audit_log SET after = ?, hash = ? WHERE id = ?", content["after"],
            audit.record_hash(k.prev_hash, content), k.id)

    found = verify(srv)
    assert found is not None
    assert found.record_id == following.id


def test_deleting_the_last_record_is_detected_as_a_head_mismatch(srv, alice):
    submit_points(alice, 1, 2, 3)
    last = records(srv)[-1].id

    execute(srv, "DELETE FROM audit_log WHERE id = ?", last)

    found = verify(srv)
    assert found is not None
    assert found.record_id == -1
    assert "head" in found.problem


def test_deleting_a_record_in_the_middle_breaks_the_chain_at_the_next_record(srv, alice):
    submit_points(alice, 1, 2, 3, 4)
    trail = records(srv)

    execute(srv, "DELETE FROM audit_log WHERE id = ?", trail[1].id)

    found = verify(srv)
    assert found is not None
    assert found.record_id == trail[2].id


def test_the_chain_verifies_in_batches_smaller_than_the_trail(srv, alice):
    submit_points(alice, 1, 2, 3, 4, 5)

    assert srv.call(srv.app.store.read(audit.verify_stored, 2)) is None
