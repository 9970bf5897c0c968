"""scoreboard.rules, pure: the shape of a submission body, its action rule, and how points make a score.

No server, no storage, no clock: every function here is a plain computation over a Config.
"""

from __future__ import annotations

import pytest

from scoreboard import rules
from scoreboard.config import BoardConfig, from_dict
from scoreboard.errors import InvalidRequest, ScoreRejected

MAX_EXACT = 2**53 - 1
CONFIG = from_dict({
    "boards": {
        "global": {},
        "capped": {"min_score": -50, "max_score": 100},
    },
    "actions": {
        "level_complete": {"min_points": 0, "max_points": 1000},
        "boss": {"min_points": 10, "max_points": 500, "min_duration_ms": 60_000},
    },
})


def body(**overrides) -> dict:
    """A valid body; `score_data` overrides merge into the default score_data."""
    data = {"type": "level_complete", "points": 300, "duration_ms": 41_250, "level": 3}
    data.update(overrides.pop("score_data", {}))
    out = {"action_id": "c0a8-action_1", "seq": 17, "ts": 1_795_000_000_000, "nonce": "3q2-7wAAAAAAAAAA",
           "score_data": data}
    out.update(overrides)
    return out


def without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


def submission(**score_data) -> rules.Submission:
    return rules.parse(body(score_data=score_data), CONFIG)


# ---- parse: a valid body ------------------------------------------------------------------------


def test_parse_reads_every_field_of_a_valid_body():
    sub = rules.parse(body(), CONFIG)

    assert (sub.action_id, sub.board.name, sub.seq, sub.ts, sub.nonce) == (
        "c0a8-action_1", "global", 17, 1_795_000_000_000, "3q2-7wAAAAAAAAAA")
    assert (sub.type, sub.points, sub.duration_ms) == ("level_complete", 300, 41_250)
    assert sub.score_data == {"type": "level_complete", "points": 300, "duration_ms": 41_250, "level": 3}


def test_parse_defaults_the_board_to_global():
    assert rules.parse(body(), CONFIG).board == CONFIG.board("global")


def test_parse_uses_the_named_board():
    assert rules.parse(body(board="capped"), CONFIG).board == CONFIG.board("capped")


def test_parse_leaves_duration_unset_when_absent():
    data = without(body()["score_data"], "duration_ms")

    assert rules.parse({**body(), "score_data": data}, CONFIG).duration_ms is None


def test_parse_accepts_the_largest_exact_points():
    assert rules.parse(body(score_data={"points": MAX_EXACT}), CONFIG).points == MAX_EXACT


def test_parse_accepts_negative_points_for_the_rules_to_judge():
    assert rules.parse(body(score_data={"points": -5}), CONFIG).points == -5


def test_parse_accepts_action_id_of_64_characters():
    assert rules.parse(body(action_id="a" * 64), CONFIG).action_id == "a" * 64


def test_parse_accepts_nonce_of_16_and_64_characters():
    assert rules.parse(body(nonce="n" * 16), CONFIG).nonce == "n" * 16
    assert rules.parse(body(nonce="n" * 64), CONFIG).nonce == "n" * 64


# ---- parse: the content identity of a retry -----------------------------------------------------


def test_content_hash_ignores_the_transport_fields():
    first = rules.parse(body(), CONFIG)
    retry = rules.parse(body(action_id="other", seq=99, ts=1_795_000_999_000, nonce="x" * 20), CONFIG)

    assert first.content_hash == retry.content_hash


def test_content_hash_does_not_depend_on_key_order_in_score_data():
    data = body()["score_data"]
    reordered = dict(reversed(list(data.items())))

    assert rules.parse(body(), CONFIG).content_hash == rules.parse({**body(), "score_data": reordered},
                                                                    CONFIG).content_hash


def test_content_hash_of_an_omitted_board_equals_the_explicit_default_board():
    assert rules.parse(body(), CONFIG).content_hash == rules.parse(body(board="global"), CONFIG).content_hash


def test_content_hash_changes_with_the_points():
    assert submission(points=300).content_hash != submission(points=301).content_hash


def test_content_hash_changes_with_any_score_data_field():
    assert submission(level=3).content_hash != submission(level=4).content_hash


def test_content_hash_changes_with_the_board():
    assert rules.parse(body(), CONFIG).content_hash != rules.parse(body(board="capped"), CONFIG).content_hash


# ---- parse: invalid bodies ----------------------------------------------------------------------

INVALID = {
    "missing action_id": (without(body(), "action_id"), "action_id"),
    "missing seq": (without(body(), "seq"), "seq"),
    "missing ts": (without(body(), "ts"), "ts"),
    "missing nonce": (without(body(), "nonce"), "nonce"),
    "missing score_data": (without(body(), "score_data"), "score_data"),
    "missing type": ({**body(), "score_data": without(body()["score_data"], "type")}, "type"),
    "missing points": ({**body(), "score_data": without(body()["score_data"], "points")}, "points"),
    "null seq": (body(seq=None), "seq"),
    "empty action_id": (body(action_id=""), "action_id"),
    "action_id of 65 characters": (body(action_id="a" * 65), "action_id"),
    "action_id with a dot": (body(action_id="a.b"), "action_id"),
    "action_id with non-ASCII letters": (body(action_id="é"), "action_id"),
    "action_id as a number": (body(action_id=12), "action_id"),
    "nonce of 15 characters": (body(nonce="n" * 15), "nonce"),
    "nonce of 65 characters": (body(nonce="n" * 65), "nonce"),
    "nonce with padding": (body(nonce="n" * 16 + "=="), "nonce"),
    "board as a number": (body(board=1), "board"),
    "unknown board": (body(board="nope"), "board"),
    "seq as a string": (body(seq="17"), "seq"),
    "seq as a float": (body(seq=17.0), "seq"),
    "seq as a bool": (body(seq=True), "seq"),
    "seq zero": (body(seq=0), "seq"),
    "seq beyond 2^53-1": (body(seq=MAX_EXACT + 1), "seq"),
    "ts negative": (body(ts=-1), "ts"),
    "ts beyond 2^53-1": (body(ts=MAX_EXACT + 1), "ts"),
    "score_data as a list": ({**body(), "score_data": [1]}, "score_data"),
    "type as a number": (body(score_data={"type": 7}), "type"),
    "points as a string": (body(score_data={"points": "300"}), "points"),
    "points as a float": (body(score_data={"points": 300.5}), "points"),
    "points as a bool": (body(score_data={"points": True}), "points"),
    "points beyond 2^53-1": (body(score_data={"points": MAX_EXACT + 1}), "points"),
    "points below -(2^53-1)": (body(score_data={"points": -MAX_EXACT - 1}), "points"),
    "duration_ms negative": (body(score_data={"duration_ms": -1}), "duration_ms"),
    "duration_ms as a string": (body(score_data={"duration_ms": "41250"}), "duration_ms"),
}


@pytest.mark.parametrize(("raw", "field"), list(INVALID.values()), ids=list(INVALID))
def test_parse_rejects_an_invalid_field_as_invalid_request_naming_it(raw, field):
    with pytest.raises(InvalidRequest) as raised:
        rules.parse(raw, CONFIG)

    assert raised.value.code == "invalid_request"
    assert raised.value.extra.get("field") == field


# ---- check_action -------------------------------------------------------------------------------


def rejection(sub: rules.Submission) -> str:
    with pytest.raises(ScoreRejected) as raised:
        rules.check_action(sub, CONFIG)
    assert raised.value.code == "score_rejected"
    return raised.value.reason


def test_check_action_returns_the_rule_of_the_type():
    assert rules.check_action(submission(), CONFIG) == CONFIG.action("level_complete")


def test_check_action_rejects_an_unknown_type():
    assert rejection(submission(type="teleport")) == "unknown_action"


def test_check_action_rejects_points_over_max():
    assert rejection(submission(points=1001)) == "points_over_max"


def test_check_action_accepts_points_equal_to_max():
    assert rules.check_action(submission(points=1000), CONFIG).name == "level_complete"


def test_check_action_rejects_points_under_min():
    assert rejection(submission(points=-1)) == "points_under_min"


def test_check_action_accepts_points_equal_to_min():
    assert rules.check_action(submission(type="boss", points=10, duration_ms=60_000), CONFIG).name == "boss"


def test_check_action_rejects_a_duration_under_the_minimum_as_too_fast():
    assert rejection(submission(type="boss", points=100, duration_ms=59_999)) == "too_fast"


def test_check_action_accepts_a_duration_equal_to_the_minimum():
    assert rules.check_action(submission(type="boss", points=100, duration_ms=60_000), CONFIG).name == "boss"


def test_check_action_treats_a_missing_duration_as_too_fast_when_the_rule_has_a_minimum():
    data = {"type": "boss", "points": 100}

    assert rejection(rules.parse({**body(), "score_data": data}, CONFIG)) == "too_fast"


def test_check_action_needs_no_duration_when_the_rule_has_no_minimum():
    data = {"type": "level_complete", "points": 100}

    assert rules.check_action(rules.parse({**body(), "score_data": data}, CONFIG), CONFIG).name == "level_complete"


def test_check_action_checks_points_before_duration():
    assert rejection(submission(type="boss", points=501, duration_ms=1)) == "points_over_max"


# ---- next_score ---------------------------------------------------------------------------------


@pytest.mark.parametrize("operator", ["incr", "best", "set"])
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_next_score_of_a_first_action_is_its_points(operator, order):
    assert rules.next_score(operator, order, None, 42) == 42


def test_next_score_incr_adds_the_points():
    assert rules.next_score("incr", "desc", 100, 42) == 142


def test_next_score_incr_adds_negative_points():
    assert rules.next_score("incr", "desc", 100, -30) == 70


def test_next_score_set_replaces_even_with_a_worse_score():
    assert rules.next_score("set", "desc", 100, 5) == 5


def test_next_score_best_desc_keeps_the_higher_score():
    assert rules.next_score("best", "desc", 100, 150) == 150
    assert rules.next_score("best", "desc", 100, 50) == 100


def test_next_score_best_asc_keeps_the_lower_score():
    assert rules.next_score("best", "asc", 100, 50) == 50
    assert rules.next_score("best", "asc", 100, 150) == 100


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_next_score_best_keeps_the_old_score_on_a_tie(order):
    assert rules.next_score("best", order, 100, 100) == 100


# ---- check_range --------------------------------------------------------------------------------


@pytest.mark.parametrize("score", [-50, 0, 100])
def test_check_range_accepts_scores_inside_the_board_range_inclusive(score):
    rules.check_range(CONFIG.board("capped"), score)


@pytest.mark.parametrize("score", [-51, 101])
def test_check_range_rejects_scores_outside_the_board_range(score):
    with pytest.raises(ScoreRejected) as raised:
        rules.check_range(CONFIG.board("capped"), score)

    assert raised.value.reason == "score_out_of_range"


def test_the_default_board_range_keeps_an_incr_total_exact_in_a_double():
    board = BoardConfig("global")
    total = rules.next_score("incr", "desc", MAX_EXACT - 5, 10)

    with pytest.raises(ScoreRejected) as raised:
        rules.check_range(board, total)

    assert raised.value.reason == "score_out_of_range"
