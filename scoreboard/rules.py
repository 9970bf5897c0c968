"""Validation of one score action: the shape of the body and the rules of its action type.

Pure: no storage and no clock. The per-minute cap needs counters, so scores.py applies it with the KV.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

import orjson

from . import wire
from .config import ActionRule, BoardConfig, Config
from .errors import InvalidRequest, ScoreRejected

ACTION_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")


class Submission(NamedTuple):
    action_id: str
    board: BoardConfig
    seq: int
    ts: int
    nonce: str
    type: str
    points: int
    duration_ms: int | None
    score_data: dict
    content_hash: str  # what "the same body" means for a retry: board and score_data, not the transport fields


def parse(body: dict, config: Config) -> Submission:
    action_id = wire.matching(body, "action_id", ACTION_ID_RE, "1-64 characters of [A-Za-z0-9_-]")
    board_name = wire.field(body, "board", str, required=False, default="global")
    board = config.board(board_name)
    if board is None:
        raise InvalidRequest(f"unknown board: {board_name}", field="board")
    seq = wire.bounded_int(body, "seq", 1, wire.MAX_ABS)
    ts = wire.bounded_int(body, "ts", 0, wire.MAX_ABS)
    nonce = wire.matching(body, "nonce", NONCE_RE, "16-64 characters of base64url")
    data = wire.field(body, "score_data", dict)
    kind = wire.field(data, "type", str)
    points = wire.field(data, "points", int)
    duration = wire.field(data, "duration_ms", int, required=False)
    if duration is not None and duration < 0:
        raise InvalidRequest("duration_ms must not be negative", field="duration_ms")
    content = orjson.dumps({"board": board.name, "score_data": data}, option=orjson.OPT_SORT_KEYS)
    return Submission(action_id, board, seq, ts, nonce, kind, points, duration, data,
                      hashlib.sha256(content).hexdigest())


def check_action(submission: Submission, config: Config) -> ActionRule:
    """The action's rule, once the points and duration satisfy it."""
    rule = config.action(submission.type)
    if rule is None:
        raise ScoreRejected("unknown_action", f"unknown action type: {submission.type}")
    if submission.points > rule.max_points:
        raise ScoreRejected("points_over_max", f"points above {rule.max_points} for {rule.name}")
    if submission.points < rule.min_points:
        raise ScoreRejected("points_under_min", f"points below {rule.min_points} for {rule.name}")
    if rule.min_duration_ms and (submission.duration_ms or 0) < rule.min_duration_ms:
        raise ScoreRejected("too_fast", f"{rule.name} takes at least {rule.min_duration_ms} ms")
    return rule


def next_score(operator: str, order: str, old: int | None, points: int) -> int:
    """The board score after applying `points` with the board's operator."""
    if old is None:
        return points
    if operator == "incr":
        return old + points
    if operator == "set":
        return points
    better = points > old if order == "desc" else points < old
    return points if better else old


def check_range(board: BoardConfig, score: int) -> None:
    if not board.min_score <= score <= board.max_score:
        raise ScoreRejected("score_out_of_range", f"score would leave [{board.min_score}, {board.max_score}]")
