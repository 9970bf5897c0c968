"""Score submissions committed set-wise (Scores._commit_many, Store.register_batch) do exactly what the
one-by-one path (Scores._commit, each in its own savepoint) does.

One batch with everything that can happen between neighbours in the writer's queue: a user's actions
chaining on one score row, a retry of an action committed earlier in the same batch and of one committed
before it, a reused action_id with another body, a refusal (score_out_of_range) followed by an action of
the same row that must not see the refused score, a score that does not change (reached_seq stays), two
users and two boards. Both paths run on the same data inside a savepoint that is then rolled back; the
outcomes and the rows written (action ids compared by their order) must be equal. Both backends.
"""

from __future__ import annotations

import uuid

import orjson
import pytest

from scoreboard import audit, ledger, rules
from scoreboard.errors import ScoreboardError
from scoreboard.store.models import Action, AuditRecord, Score, Session
from scoreboard.users import ClientInfo, Principal

from harness import Http, register_and_login

SETTINGS = {
    "boards": {"global": {}, "capped": {"operator": "incr", "max_score": 100}, "best": {"operator": "best"}},
    "actions": {"level_complete": {"min_points": 0, "max_points": 1000, "max_per_minute": 1000}},
}


@pytest.fixture
def srv(server_factory, clock):
    return server_factory(SETTINGS, clock=clock)


def _principal(server, login: dict) -> Principal:
    user_id = login["user"]["user_id"]
    session_id = server.call(server.app.store.read(
        lambda: Session.select(Session.id).where(Session.user == user_id).scalar()))
    return Principal(user_id, session_id, "player", "active", login["session_key"])


def _submission(server, seq: int, now: int, points: int, action_id: str | None = None, board: str = "global"):
    body = {"action_id": action_id or uuid.uuid4().hex, "board": board, "seq": seq, "ts": now,
            "nonce": uuid.uuid4().hex, "score_data": {"type": "level_complete", "points": points}}
    return rules.parse(body, server.app.config)


def _scenario(srv, clock) -> tuple[list[tuple], tuple]:
    http = Http(srv.url)
    alice = _principal(srv, register_and_login(http, "alice"))
    bob = _principal(srv, register_and_login(http, "bob"))
    now = clock.now_ms()
    client = ClientInfo("127.0.0.1", "tests", "req-1")

    def item(who, seq, points, action_id=None, board="global"):
        return who, _submission(srv, seq, now + seq, points, action_id, board), client, now + seq

    earlier = item(alice, 1, 7, "a0")
    items = [
        item(alice, 2, 10, "a1"),
        item(alice, 3, 5, "a2"),                     # chains on a1's score: 22
        item(bob, 1, 80, "b1", "capped"),
        item(alice, 4, 10, "a1"),                    # retry of a1 (same body): duplicate of this batch's row
        item(alice, 5, 11, "a1"),                    # a1 with another body: action_conflict
        item(bob, 2, 30, "b2", "capped"),            # 110 > 100: score_out_of_range
        item(bob, 3, 20, "b3", "capped"),            # 100: sees 80, not the refused 110
        item(bob, 4, 0, "b4", "capped"),             # 100 again: reached_seq stays b3's
        item(alice, 6, 7, "a0"),                     # retry of an action committed before the batch
        item(bob, 5, 50, "b5", "best"),
        item(bob, 6, 40, "b6", "best"),              # not better: the score and its reached_seq stay b5's
        item(alice, 7, 3, "a3"),
    ]
    return items, earlier


def _snapshot(action_ids_before: int) -> dict:
    """The rows the batch wrote, action ids replaced by their order among them."""
    actions = list(Action.select().where(Action.id > action_ids_before).order_by(Action.id).dicts())
    order = {row["id"]: index for index, row in enumerate(actions)}
    named = lambda row_id: order.get(row_id, row_id)  # noqa: E731 (ids from before the batch stay as they are)
    records = list(AuditRecord.select().order_by(AuditRecord.id))
    assert audit.verify(records) is None
    return {
        "actions": [{**row, "id": named(row["id"])} for row in actions],
        "scores": sorted((s.board, s.period, s.user_id, s.score, named(s.reached_seq), s.updated_at)
                         for s in Score.select()),
        "sessions": sorted(Session.select(Session.id, Session.last_seq).tuples()),
        "audit": [(r.kind, r.actor_id, r.session_id, r.address, r.user_agent, r.request_id,
                   named(int(r.subject.removeprefix("action:"))), r.before, r.after, r.at) for r in records],
        "named": named,
    }


def _normal(outcome: tuple, named) -> tuple:
    ok, value = outcome
    if not ok:
        return False, type(value).__name__, str(value), getattr(value, "reason", None)
    return True, named(value.action_row_id), value.period, value.score, value.previous, named(value.reached_seq), \
        value.username, value.duplicate_result


def _one_by_one(items: list[tuple]) -> list[tuple]:
    db = Score._meta.database
    outcomes = []
    for item in items:
        try:
            with db.atomic():
                outcomes.append((True, ledger.commit_one(*item)))
        except ScoreboardError as exc:
            outcomes.append((False, exc))
    return outcomes


def _run_and_undo(path, items: list[tuple]) -> tuple[list, dict]:
    db = Score._meta.database
    with db.atomic() as savepoint:
        before = Action.select(Action.id).order_by(Action.id.desc()).limit(1).scalar() or 0
        outcomes = path(items)
        snapshot = _snapshot(before)
        savepoint.rollback()
    named = snapshot.pop("named")
    return [_normal(outcome, named) for outcome in outcomes], snapshot


def test_a_batch_committed_set_wise_matches_the_same_jobs_committed_one_by_one(srv, clock):
    items, earlier = _scenario(srv, clock)
    srv.call(srv.app.store.write(lambda: ledger.commit_one(*earlier)))

    def both() -> tuple:
        return _run_and_undo(ledger.commit_many, items), _run_and_undo(_one_by_one, items)

    (together, rows_together), (one_by_one, rows_one_by_one) = srv.call(srv.app.store.write(both))

    assert together == one_by_one
    assert rows_together == rows_one_by_one
    kinds = [outcome[1] if not outcome[0] else ("duplicate" if outcome[7] else "accepted") for outcome in together]
    assert kinds == ["accepted", "accepted", "accepted", "duplicate", "ActionConflict", "ScoreRejected",
                     "accepted", "accepted", "duplicate", "accepted", "accepted", "accepted"]
    assert [outcome[3] for outcome in together if outcome[0] and not outcome[7]] == [17, 22, 80, 100, 100, 50, 50, 25]
    assert orjson.loads(rows_together["actions"][0]["result"])["score"] == 17
