"""PROTOCOL "Submitting a score": `action_id` is the idempotency key, and the database has the last word.

A retry of a committed action gets the original answer with "duplicate": true and changes nothing; the
same action_id with other content is action_conflict. "The same body" means the same board and
score_data: the transport fields (nonce, seq, ts) may be fresh on a retry. Both backends, ManualClock.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from scoreboard.store.models import Action, AuditRecord, Score

from harness import Http, Player, encode

SETTINGS = {
    "boards": {"global": {}, "weekly": {"operator": "incr", "reset": "weekly"}},
    "actions": {"level_complete": {"max_points": 1000}, "coin": {"min_points": 1, "max_points": 5,
                                                                "max_per_minute": 1}},
}
RESULT_FIELDS = ("accepted", "action_id", "board", "period", "score", "rank", "previous_rank", "total")


@pytest.fixture
def srv(server_factory, clock):
    return server_factory(SETTINGS, clock=clock)


@pytest.fixture
def alice(srv, clock) -> Player:
    return Player(Http(srv.url), "alice", clock_ms=clock.now_ms)


def stored(server, user_id: int) -> dict:
    """What the database holds for the user: action rows, audit rows and the global score."""
    def read() -> dict:
        score = Score.get_or_none((Score.user == user_id) & (Score.board == "global"))
        return {"actions": Action.select().where(Action.user == user_id).count(),
                "audit": AuditRecord.select().where(AuditRecord.actor_id == user_id).count(),
                "score": score.score if score else None}

    return server.call(server.app.store.read(read))


def writes_settled(server) -> None:
    """Wait until every acknowledged result is recorded (Scores.flush).

    A 200 is sent once the action's transaction committed; the rank it reported is recorded for retries
    by a follow-up write. A retry after a lost response comes after that; this makes the test say so.
    (An empty write job is no barrier for it: results are recorded by the writer process, other jobs
    may run on the thread.)
    """
    server.call(server.app.scores.flush())


def fresh_transport(player: Player, body: dict) -> dict:
    """The same action re-sent as a new request: new nonce, next seq, current ts."""
    renewed = player.body()
    return {**body, "nonce": renewed["nonce"], "seq": renewed["seq"], "ts": renewed["ts"]}


def test_the_same_signed_request_sent_twice_answers_duplicate_with_the_original_result(srv, alice):
    raw = encode(alice.body(250))
    first = alice.send(raw)
    writes_settled(srv)

    retry = alice.send(raw)

    assert (first.status, retry.status) == (200, 200)
    assert (first.json["duplicate"], retry.json["duplicate"]) == (False, True)
    assert {k: retry.json[k] for k in RESULT_FIELDS} == {k: first.json[k] for k in RESULT_FIELDS}


def test_the_same_signed_request_sent_twice_counts_the_score_once(srv, alice):
    raw = encode(alice.body(250))
    assert alice.send(raw).status == 200

    retry = alice.send(raw)

    assert (retry.status, retry.json["duplicate"]) == (200, True)
    assert stored(srv, alice.user_id) == {"actions": 1, "audit": 1, "score": 250}
    standing = alice.http.get(f"/leaderboards/global/users/{alice.user_id}").json
    assert (standing["score"], standing["total"]) == (250, 1)


def test_a_duplicate_reports_the_original_rank_even_after_others_moved_it(srv, alice, clock):
    raw = encode(alice.body(100))
    first = alice.send(raw)
    bob = Player(Http(srv.url), "bob", clock_ms=clock.now_ms)
    assert bob.submit(500).json["rank"] == 1
    writes_settled(srv)

    retry = alice.send(raw)

    assert (retry.json["rank"], retry.json["total"]) == (first.json["rank"], first.json["total"]) == (1, 1)


def test_an_immediate_retry_is_a_duplicate_with_the_committed_score(srv, alice):
    raw = encode(alice.body(250))
    alice.send(raw)

    retry = alice.send(raw)  # possibly before the rank was recorded: the rank is then today's

    assert (retry.status, retry.json["duplicate"], retry.json["score"]) == (200, True, 250)
    assert retry.json["rank"] == 1


def test_the_same_action_id_with_other_points_is_action_conflict(srv, alice):
    first = alice.body(250)
    assert alice.send(encode(first)).status == 200
    other = fresh_transport(alice, first)
    other["score_data"] = {**first["score_data"], "points": 999}

    response = alice.send(encode(other))

    assert (response.status, response.code) == (409, "action_conflict")
    assert stored(srv, alice.user_id) == {"actions": 1, "audit": 1, "score": 250}


def test_the_same_action_id_on_another_board_is_action_conflict(srv, alice):
    first = alice.body(250)
    assert alice.send(encode(first)).status == 200

    response = alice.send(encode({**fresh_transport(alice, first), "board": "weekly"}))

    assert (response.status, response.code) == (409, "action_conflict")


def test_the_same_action_id_with_the_same_nonce_and_other_points_is_action_conflict(alice):
    first = alice.body(250)
    assert alice.send(encode(first)).status == 200

    response = alice.send(encode({**first, "score_data": {**first["score_data"], "points": 1}}))

    assert (response.status, response.code) == (409, "action_conflict")


def test_a_retry_with_fresh_nonce_seq_and_ts_but_the_same_board_and_score_data_is_a_duplicate(srv, alice, clock):
    first = alice.body(250)
    original = alice.send(encode(first))
    clock.advance(30_000)
    writes_settled(srv)

    retry = alice.send(encode(fresh_transport(alice, first)))

    assert (retry.status, retry.json["duplicate"], retry.json["score"]) == (200, True, 250)
    assert retry.json["rank"] == original.json["rank"]
    assert stored(srv, alice.user_id) == {"actions": 1, "audit": 1, "score": 250}


def test_a_retry_naming_the_default_board_explicitly_is_a_duplicate_of_one_that_omitted_it(srv, alice):
    first = alice.body(250)
    assert "board" not in first and alice.send(encode(first)).status == 200

    retry = alice.send(encode({**fresh_transport(alice, first), "board": "global"}))

    assert (retry.status, retry.json["duplicate"]) == (200, True)
    assert stored(srv, alice.user_id)["score"] == 250


def test_a_retry_after_the_nonce_cache_forgot_the_nonce_is_still_a_duplicate(srv, alice):
    body = alice.body(250)
    assert alice.send(encode(body)).status == 200
    srv.call(srv.app.kv.delete(f"nonce:{alice.user_id}:{body['nonce']}"))

    retry = alice.send(encode(body))

    assert (retry.status, retry.json["duplicate"]) == (200, True)
    assert stored(srv, alice.user_id) == {"actions": 1, "audit": 1, "score": 250}


def test_a_retry_after_the_cache_forgot_both_nonce_and_seq_is_still_a_duplicate(srv, alice):
    body = alice.body(250)
    assert alice.send(encode(body)).status == 200
    srv.call(srv.app.kv.delete(f"nonce:{alice.user_id}:{body['nonce']}"))
    srv.call(srv.app.kv.delete(f"seq:{alice.login['session_id']}"))

    retry = alice.send(encode(body))

    assert (retry.status, retry.json["duplicate"]) == (200, True)
    assert stored(srv, alice.user_id) == {"actions": 1, "audit": 1, "score": 250}


def test_a_retry_after_the_signing_window_passed_is_still_a_duplicate(srv, alice, clock):
    raw = encode(alice.body(250))
    assert alice.send(raw).status == 200
    clock.advance(10 * 60_000)

    retry = alice.send(raw)

    assert (retry.status, retry.json["duplicate"], retry.json["score"]) == (200, True, 250)


def test_a_retry_of_a_committed_action_is_a_duplicate_even_when_its_per_minute_cap_is_used_up(srv, alice):
    first = alice.body(1, action_type="coin")
    assert alice.send(encode(first)).status == 200  # coin allows one per minute

    retry = alice.send(encode(fresh_transport(alice, first)))

    assert (retry.status, retry.json.get("duplicate")) == (200, True), retry.raw


def test_a_duplicate_leaves_the_leaderboard_unchanged(srv, alice, clock):
    raw = encode(alice.body(250))
    alice.send(raw)
    standing = f"/leaderboards/global/users/{alice.user_id}"  # not page-cached: the index answers
    before = Http(srv.url).get(standing).json

    assert alice.send(raw).json["duplicate"] is True

    assert Http(srv.url).get(standing).json == before
    assert srv.call(srv.app.index.rank("global:all", "desc", alice.user_id)) == (1, 250)


def test_action_ids_are_per_user_so_two_users_may_use_the_same_one(srv, alice, clock):
    bob = Player(Http(srv.url), "bob", clock_ms=clock.now_ms)
    assert alice.submit(100, action_id="level-3-run-1").json["duplicate"] is False

    response = bob.submit(200, action_id="level-3-run-1")

    assert (response.status, response.json["duplicate"], response.json["score"]) == (200, False, 200)


def test_a_retry_after_the_period_rolled_over_answers_the_original_period_and_adds_nothing_new(srv, clock):
    clock.set(int(datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC).timestamp() * 1000))  # Sunday, end of W48
    alice = Player(Http(srv.url), "alice", clock_ms=clock.now_ms)
    body = alice.body(250, board="weekly")
    assert alice.send(encode(body)).json["period"] == "2026-W48"
    clock.advance(2_000)

    retry = alice.send(encode(fresh_transport(alice, body)))

    assert (retry.status, retry.json["duplicate"], retry.json["period"]) == (200, True, "2026-W48")
    current = Http(srv.url).get("/leaderboards/weekly").json
    assert (current["period"], current["total"]) == ("2026-W49", 0)
