"""PROTOCOL "Errors" for POST /scores/update: every refusal with its exact status and code, and nothing stored.

Each rejection is checked against the database: the rows of actions, scores and audit_log are counted
before and after, and must not change. Bodies that should fail a later check are signed correctly, so
they get past the signature check. Both backends; time comes from a ManualClock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from scoreboard.signing import new_session_key, sign
from scoreboard.store.models import Action, AuditRecord, Score

from harness import Http, Player, Response, encode

WINDOW_S = 300  # signing.window_s default
SETTINGS = {
    "boards": {"global": {}, "capped": {"operator": "incr", "max_score": 100}},
    "actions": {
        "level_complete": {"min_points": 0, "max_points": 1000, "max_per_minute": 1000},
        "boss": {"min_points": 0, "max_points": 1000, "min_duration_ms": 60_000, "max_per_minute": 1000},
        "coin": {"min_points": 1, "max_points": 5, "max_per_minute": 3},
    },
}


@pytest.fixture
def srv(server_factory, clock):
    return server_factory(SETTINGS, clock=clock)


@pytest.fixture
def alice(srv, clock) -> Player:
    return Player(Http(srv.url), "alice", clock_ms=clock.now_ms)


def row_counts(server) -> tuple[int, int, int]:
    def count() -> tuple[int, int, int]:
        return Action.select().count(), Score.select().count(), AuditRecord.select().count()

    return server.call(server.app.store.read(count))


@contextmanager
def database_unchanged(server) -> Iterator[None]:
    before = row_counts(server)
    yield
    assert row_counts(server) == before, "a rejected submission changed the database"


def assert_error(response: Response, status: int, code: str, reason: str | None = None) -> None:
    assert response.status == status, response.raw
    assert response.code == code, response.raw
    error = response.json["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    if reason is not None:
        assert error["reason"] == reason


# ---- 401 bad_signature --------------------------------------------------------------------------


def flip(raw: bytes, position: int) -> bytes:
    return raw[:position] + bytes([raw[position] ^ 0x01]) + raw[position + 1:]


POSITIONS = {
    "first byte": lambda raw, body: 0,
    "inside action_id": lambda raw, body: raw.index(body["action_id"].encode()) + 5,
    "inside points": lambda raw, body: raw.index(b'"points": ') + len(b'"points": '),
    "last byte": lambda raw, body: len(raw) - 1,
}


@pytest.mark.parametrize("where", list(POSITIONS.values()), ids=list(POSITIONS))
def test_one_flipped_body_byte_is_bad_signature(srv, alice, where):
    body = alice.body(123)
    raw = encode(body)
    signature = sign(alice.login["session_key"], raw)

    with database_unchanged(srv):
        response = alice.send(flip(raw, where(raw, body)), signature=signature)

    assert_error(response, 401, "bad_signature")


def test_a_missing_signature_header_is_bad_signature(srv, alice):
    with database_unchanged(srv):
        response = alice.http.post("/scores/update", encode(alice.body()))

    assert_error(response, 401, "bad_signature")


def test_an_uppercase_hex_signature_is_bad_signature(srv, alice):
    raw = encode(alice.body())
    digest = sign(alice.login["session_key"], raw).removeprefix("v1=")

    with database_unchanged(srv):
        response = alice.send(raw, signature="v1=" + digest.upper())

    assert_error(response, 401, "bad_signature")


@pytest.mark.parametrize("prefix", ["v2=", "sha256=", ""])
def test_a_signature_with_another_prefix_is_bad_signature(srv, alice, prefix):
    raw = encode(alice.body())
    digest = sign(alice.login["session_key"], raw).removeprefix("v1=")

    with database_unchanged(srv):
        response = alice.send(raw, signature=prefix + digest)

    assert_error(response, 401, "bad_signature")


def test_a_signature_made_with_another_key_is_bad_signature(srv, alice):
    raw = encode(alice.body())

    with database_unchanged(srv):
        response = alice.send(raw, signature=sign(new_session_key(), raw))

    assert_error(response, 401, "bad_signature")


def test_a_signature_over_another_path_is_bad_signature(srv, alice):
    raw = encode(alice.body())

    with database_unchanged(srv):
        response = alice.send(raw, signature=sign(alice.login["session_key"], raw, path="/scores/other"))

    assert_error(response, 401, "bad_signature")


# ---- 401 stale_timestamp ------------------------------------------------------------------------


@pytest.mark.parametrize("offset_s", [-(WINDOW_S + 1), WINDOW_S + 1], ids=["past", "future"])
def test_a_ts_beyond_the_window_is_stale_timestamp(srv, alice, clock, offset_s):
    body = alice.body(ts=clock.now_ms() + offset_s * 1000)

    with database_unchanged(srv):
        response = alice.send(encode(body))

    assert_error(response, 401, "stale_timestamp")


@pytest.mark.parametrize("offset_s", [-(WINDOW_S - 1), WINDOW_S - 1], ids=["past", "future"])
def test_a_ts_just_inside_the_window_is_accepted(srv, alice, clock, offset_s):
    response = alice.send(encode(alice.body(ts=clock.now_ms() + offset_s * 1000)))

    assert response.status == 200, response.raw


def test_the_window_follows_signing_window_s(server_factory, clock):
    player = Player(Http(server_factory({"signing": {"window_s": 10}}, clock=clock).url), "bob",
                    clock_ms=clock.now_ms)

    assert player.send(encode(player.body(ts=clock.now_ms() - 9_000))).status == 200
    assert_error(player.send(encode(player.body(ts=clock.now_ms() - 11_000))), 401, "stale_timestamp")


# ---- 409 replay and out_of_sequence -------------------------------------------------------------


def test_a_reused_nonce_with_another_action_id_is_replay(srv, alice):
    first = alice.body()
    assert alice.send(encode(first)).status == 200

    with database_unchanged(srv):
        response = alice.send(encode(alice.body(nonce=first["nonce"])))

    assert_error(response, 409, "replay")


def test_a_seq_equal_to_the_last_accepted_is_out_of_sequence(srv, alice):
    first = alice.body()
    assert alice.send(encode(first)).status == 200

    with database_unchanged(srv):
        response = alice.send(encode(alice.body(seq=first["seq"])))

    assert_error(response, 409, "out_of_sequence")


def test_a_seq_lower_than_the_last_accepted_is_out_of_sequence(srv, alice):
    assert alice.send(encode(alice.body(seq=10))).status == 200

    with database_unchanged(srv):
        response = alice.send(encode(alice.body(seq=9)))

    assert_error(response, 409, "out_of_sequence")


def test_seq_may_skip_numbers(alice):
    assert alice.send(encode(alice.body(seq=3))).status == 200

    assert alice.send(encode(alice.body(seq=50))).status == 200


def test_an_out_of_sequence_request_does_not_burn_its_nonce(alice):
    assert alice.send(encode(alice.body(seq=10))).status == 200
    late = alice.body(seq=9)
    assert_error(alice.send(encode(late)), 409, "out_of_sequence")

    response = alice.send(encode({**late, "seq": 11}))

    assert response.status == 200, response.raw


def test_seq_counts_per_session_so_a_new_login_starts_again(srv, alice):
    assert alice.send(encode(alice.body(seq=10))).status == 200
    login = Http(srv.url).post("/auth/login", {"username": "alice", "password": "correct horse battery"}).json
    second = Player(Http(srv.url), "alice", login=login, clock_ms=alice.clock_ms)

    assert second.send(encode(second.body(seq=1))).status == 200


# ---- 422 score_rejected -------------------------------------------------------------------------


def test_an_unknown_action_type_is_rejected(srv, alice):
    with database_unchanged(srv):
        response = alice.submit(10, action_type="teleport")

    assert_error(response, 422, "score_rejected", "unknown_action")


def test_points_over_the_rules_maximum_are_rejected(srv, alice):
    with database_unchanged(srv):
        response = alice.submit(1001)

    assert_error(response, 422, "score_rejected", "points_over_max")


def test_points_under_the_rules_minimum_are_rejected(srv, alice):
    with database_unchanged(srv):
        response = alice.submit(-1)

    assert_error(response, 422, "score_rejected", "points_under_min")


def test_an_action_faster_than_min_duration_ms_is_too_fast(srv, alice):
    body = alice.body(100, action_type="boss")
    body["score_data"]["duration_ms"] = 59_999

    with database_unchanged(srv):
        response = alice.send(encode(body))

    assert_error(response, 422, "score_rejected", "too_fast")


def test_an_action_exactly_at_min_duration_ms_is_accepted(srv, alice):
    body = alice.body(100, action_type="boss")
    body["score_data"]["duration_ms"] = 60_000

    assert alice.send(encode(body)).status == 200


def test_the_fourth_action_within_a_minute_of_a_three_per_minute_type_is_rate_exceeded(srv, alice):
    for _ in range(3):
        assert alice.submit(1, action_type="coin").status == 200

    with database_unchanged(srv):
        response = alice.submit(1, action_type="coin")

    assert_error(response, 422, "score_rejected", "rate_exceeded")


def test_the_per_minute_cap_frees_up_as_the_minute_passes(alice, clock):
    for _ in range(3):
        assert alice.submit(1, action_type="coin").status == 200
    assert alice.submit(1, action_type="coin").status == 422
    clock.advance(20_000)  # one slot of three per minute comes back every 20 s

    assert alice.submit(1, action_type="coin").status == 200


def test_the_per_minute_cap_counts_each_action_type_on_its_own(alice):
    for _ in range(3):
        assert alice.submit(1, action_type="coin").status == 200
    assert alice.submit(1, action_type="coin").status == 422

    assert alice.submit(1).status == 200


def test_a_score_leaving_the_boards_range_is_score_out_of_range(srv, alice):
    assert alice.submit(80, board="capped").status == 200

    with database_unchanged(srv):
        response = alice.submit(30, board="capped")

    assert_error(response, 422, "score_rejected", "score_out_of_range")


def test_a_score_reaching_the_boards_max_exactly_is_accepted(alice):
    assert alice.submit(80, board="capped").status == 200

    response = alice.submit(20, board="capped")

    assert (response.status, response.json["score"]) == (200, 100)


# ---- 400 invalid_request (correctly signed) -----------------------------------------------------

MAX_EXACT = 2**53 - 1


def _drop(field: str):
    return lambda body: {k: v for k, v in body.items() if k != field}


def _drop_data(field: str):
    return lambda body: {**body, "score_data": {k: v for k, v in body["score_data"].items() if k != field}}


def _set(field: str, value):
    return lambda body: {**body, field: value}


def _set_data(field: str, value):
    return lambda body: {**body, "score_data": {**body["score_data"], field: value}}


INVALID_BODIES = {  # one case per kind; tests/test_rules.py checks every field of the shape
    "missing nonce": _drop("nonce"),
    "missing score_data.points": _drop_data("points"),
    "seq as a string": _set("seq", "17"),
    "points as a float": _set_data("points", 10.0),
    "action_id with spaces": _set("action_id", "not an id"),
    "unknown board": _set("board", "nope"),
    "points of 2^53": _set_data("points", MAX_EXACT + 1),
    "points as a bool": _set_data("points", True),
}


@pytest.mark.parametrize("mutate", list(INVALID_BODIES.values()), ids=list(INVALID_BODIES))
def test_a_signed_body_with_an_invalid_field_is_invalid_request(srv, alice, mutate):
    with database_unchanged(srv):
        response = alice.send(encode(mutate(alice.body())))

    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("raw", [b'{"action_id": "a1", "seq": ', b"[1, 2, 3]", b'{"action_id": "\xff\xfe"}'],
                         ids=["truncated", "array", "invalid utf-8"])
def test_a_signed_body_that_is_not_a_json_object_is_invalid_request(srv, alice, raw):
    with database_unchanged(srv):
        response = alice.send(raw)

    assert_error(response, 400, "invalid_request")


# ---- 401 unauthorized ---------------------------------------------------------------------------


def test_a_submission_without_a_token_is_unauthorized(srv, alice):
    raw = encode(alice.body())

    with database_unchanged(srv):
        response = Http(srv.url).post("/scores/update", raw,
                                      headers={"X-Signature": sign(alice.login["session_key"], raw)})

    assert_error(response, 401, "unauthorized")


def test_a_submission_with_a_malformed_token_is_unauthorized(srv, alice):
    raw = encode(alice.body())

    with database_unchanged(srv):
        response = alice.send(raw, headers={"Authorization": "Bearer not.a.jwt"})

    assert_error(response, 401, "unauthorized")


def test_a_submission_with_a_logged_out_token_is_unauthorized(srv, alice):
    assert alice.http.post("/auth/logout").status == 204

    with database_unchanged(srv):
        response = alice.submit(10)

    assert_error(response, 401, "unauthorized")


# ---- 413 payload_too_large ----------------------------------------------------------------------


def padded(player: Player, size: int) -> bytes:
    """A valid signed-able body of exactly `size` bytes (padding in an extra score_data field)."""
    body = player.body(10)
    body["score_data"]["pad"] = ""
    base = len(encode(body))
    body["score_data"]["pad"] = "x" * (size - base)
    raw = encode(body)
    assert len(raw) == size
    return raw


def test_a_body_over_max_body_bytes_is_payload_too_large(srv, alice):
    with database_unchanged(srv):
        response = alice.send(padded(alice, srv.config.server.max_body_bytes + 1))

    assert_error(response, 413, "payload_too_large")


def test_a_body_of_exactly_max_body_bytes_is_accepted(srv, alice):
    response = alice.send(padded(alice, srv.config.server.max_body_bytes))

    assert response.status == 200, response.raw[:300]


# ---- 429 rate_limited ---------------------------------------------------------------------------


def test_six_concurrent_submissions_against_five_per_minute_accept_exactly_five(server_factory, clock):
    server = server_factory({"ratelimit": {"per_user": "5/m"}}, clock=clock)
    http = Http(server.url)
    first = Player(http, "alice", clock_ms=clock.now_ms)
    # One user, six sessions: each session's seq is its own, so arrival order cannot matter.
    players = [first] + [
        Player(http, "alice", clock_ms=clock.now_ms,
               login=http.post("/auth/login", {"username": "alice", "password": "correct horse battery"}).json)
        for _ in range(5)]
    bodies = [encode(p.body(10)) for p in players]
    start = threading.Barrier(len(players))

    def fire(index: int) -> Response:
        start.wait()
        return players[index].send(bodies[index])

    with ThreadPoolExecutor(len(players)) as pool:
        responses = list(pool.map(fire, range(len(players))))

    assert sorted(r.status for r in responses) == [200] * 5 + [429]
    limited = next(r for r in responses if r.status == 429)
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-limit"] == "5"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert row_counts(server)[0] == 5


def test_a_rate_limited_user_may_submit_again_after_retry_after(server_factory, clock):
    server = server_factory({"ratelimit": {"per_user": "2/m"}}, clock=clock)
    player = Player(Http(server.url), "alice", clock_ms=clock.now_ms)
    assert [player.submit(1).status for _ in range(2)] == [200, 200]
    limited = player.submit(1)
    assert_error(limited, 429, "rate_limited")

    clock.advance(int(limited.headers["retry-after"]) * 1000)

    assert player.submit(1).status == 200


def test_the_per_address_limit_comes_before_authentication_and_counts_refused_tokens(server_factory, clock):
    server = server_factory({"ratelimit": {"per_address": "3/m"}}, clock=clock)
    player = Player(Http(server.url), "alice", clock_ms=clock.now_ms)
    bad = {"Authorization": "Bearer not-a-token"}

    assert player.send(encode(player.body(1)), headers=bad).status == 401  # counted: 1 of 3
    assert player.submit(1).status == 200
    assert player.submit(1).status == 200
    limited_bad = player.send(encode(player.body(1)), headers=bad)
    limited = player.submit(1)

    assert_error(limited_bad, 429, "rate_limited")  # 429, not 401: the address limit is checked first
    assert_error(limited, 429, "rate_limited")
    assert limited.headers["x-ratelimit-limit"] == "3"
    assert limited.headers["x-ratelimit-remaining"] == "0"


USED_NONCE = "nonce-used-once-already"
# Each request refused after authentication, with the refusal it gets while under the limit.
REFUSED_AFTER_AUTH = {
    "bad signature": (lambda player, clock: player.send(encode(player.body(1)), signature="sha256=" + "0" * 64),
                      401, "bad_signature"),
    "invalid body": (lambda player, clock: player.send(b"[1, 2, 3]"), 400, "invalid_request"),
    "stale ts": (lambda player, clock: player.send(encode(player.body(1, ts=clock.now_ms() - 3_600_000))),
                 401, "stale_timestamp"),
    "replayed nonce": (lambda player, clock: player.send(encode({**player.body(1), "nonce": USED_NONCE})),
                       409, "replay"),
}


@pytest.mark.parametrize(("refused", "status", "code"), list(REFUSED_AFTER_AUTH.values()),
                         ids=list(REFUSED_AFTER_AUTH))
def test_a_request_refused_after_authentication_counts_against_the_user_limit_and_then_gets_429(
        server_factory, clock, refused, status, code):
    server = server_factory({"ratelimit": {"per_user": "3/m"}}, clock=clock)
    player = Player(Http(server.url), "alice", clock_ms=clock.now_ms)
    assert player.send(encode({**player.body(1), "nonce": USED_NONCE})).status == 200  # counted: 1 of 3

    assert_error(refused(player, clock), status, code)  # counted: 2 of 3
    assert player.submit(1).status == 200  # counted: 3 of 3

    with database_unchanged(server):
        over = refused(player, clock)
    assert_error(over, 429, "rate_limited")  # 429 before the request's own refusal
    assert over.headers["x-ratelimit-limit"] == "3"
