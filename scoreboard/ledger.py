"""The score transaction, on the writer thread: one submission, or a batch of them written set-wise.

`commit_one` writes the action, the board score, the session's last seq and the audit record of one
submission; `commit_many` does the same for consecutive submissions with a handful of statements for the
lot (Store.register_batch), with the same outcomes. Refusals are decided before any write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import peewee as pw

from . import audit, rules
from .errors import ActionConflict, ScoreboardError
from .periods import period_of
from .store.db import Statement, execute_all, rows_sql
from .store.models import Action, Score, Session, User
from .users import ClientInfo, Principal


class Committed(NamedTuple):
    """What the transaction wrote, or the stored answer when the action was already committed."""

    action_row_id: int
    period: str
    score: int
    previous: int | None
    reached_seq: int
    username: str
    duplicate_result: dict | None = None


def duplicate(row: Action, sub: rules.Submission) -> dict:
    """The stored answer for a retried action, or action_conflict when its content differs."""
    if row.body_hash != sub.content_hash:
        raise ActionConflict("this action_id was already used with a different body")
    return {**orjson.loads(row.result), "duplicate": True}



def commit_one(principal: Principal, sub: rules.Submission, client: ClientInfo, now: int) -> Committed:
    existing = find_action(principal.user_id, sub.action_id)
    if existing is not None:
        return Committed(existing.id, "", 0, None, 0, "", duplicate_result=duplicate(existing, sub))
    board, period = sub.board, period_of(sub.board.reset, now)
    row = _locked_score(board.name, period, principal.user_id)
    old = row.score if row else None
    new = rules.next_score(board.operator, board.order, old, sub.points)
    rules.check_range(board, new)
    # The action row is written with its result at once (the same value an UPDATE used to set).
    result = {"accepted": True, "duplicate": False, "action_id": sub.action_id, "board": board.name,
              "period": period, "score": new}
    action_id = _INSERT_ACTION.insert(
        principal.user_id, principal.session_id, sub.action_id, sub.content_hash, board.name, period, sub.type,
        sub.points, sub.duration_ms, sub.seq, sub.ts, orjson.dumps(result).decode(), "accepted", now)
    reached = action_id if (row is None or new != old) else row.reached_seq
    _save_score(row, board.name, period, principal.user_id, new, reached, now)
    _ADVANCE_SESSION.cursor(sub.seq, principal.session_id)
    ctx = audit.Context(principal.user_id, principal.session_id, client.address, client.user_agent,
                        client.request_id)
    audit.append(ctx, "score.accepted", f"action:{action_id}",
                 {"score": old}, {"score": new, "points": sub.points, "type": sub.type, "board": board.name,
                                  "period": period, "action_id": sub.action_id}, now)
    username = _USERNAME.cursor(principal.user_id).fetchone()[0]
    return Committed(action_id, period, new, old, reached, username)

def commit_many(items: list[tuple[Principal, rules.Submission, ClientInfo, int]]) -> list[tuple[bool, Any]]:
    """`commit_one` for consecutive submissions at once (Store.register_batch), with the same outcomes: a
    handful of set-wise statements for the lot instead of ten each. Refusals are decided before any
    write; a user's several actions chain in queue order."""
    found = _find_actions({(principal.user_id, sub.action_id) for principal, sub, _, _ in items})
    plan = _Plan(found, _locked_scores({_score_key(principal, sub, now) for principal, sub, _, now in items}))
    decisions = []
    for item in items:
        try:
            decisions.append(plan.decide(*item))
        except ScoreboardError as exc:
            decisions.append(exc)
    plan.write()
    return [_outcome(decision, item[1], plan.usernames)
            for decision, item in zip(decisions, items, strict=True)]

def _outcome(decision, sub: rules.Submission, usernames: dict[int, str]) -> tuple[bool, Any]:
    if isinstance(decision, Exception):
        return False, decision
    row, seen_before = decision
    if not seen_before:
        return True, Committed(row.id, row.period, row.new, row.old, row.reached_id(),
                               usernames[row.principal.user_id])
    try:  # an action committed earlier, or earlier in this batch
        return True, Committed(row.id, "", 0, None, 0, "", duplicate_result=duplicate(row, sub))
    except ScoreboardError as exc:
        return False, exc


# The submission's statements, SQL generated once (see Statement); the probes are example values.
_FIND_ACTION = Statement(lambda user_id, action_id: Action.select(Action.id, Action.body_hash, Action.result)
                         .where((Action.user == user_id) & (Action.action_id == action_id)), (1, "a"))
_SCORE_ROW = Statement(lambda board, period, user_id: Score.select(Score.score, Score.reached_seq).where(
    (Score.board == board) & (Score.period == period) & (Score.user == user_id)), ("b", "p", 1))
_SCORE_ROW_LOCKED = Statement(lambda *key: _SCORE_ROW.build(*key).for_update(), _SCORE_ROW.probe)
_INSERT_ACTION = Statement(
    lambda user_id, session_id, action_id, body_hash, board, period, kind, points, duration_ms, seq, client_ts,
    result, status, created_at: Action.insert(
        user=user_id, session_id=session_id, action_id=action_id, body_hash=body_hash, board=board, period=period,
        type=kind, points=points, duration_ms=duration_ms, seq=seq, client_ts=client_ts, result=result,
        status=status, created_at=created_at),
    (1, "s", "a", "h", "b", "p", "t", 2, 3, 4, 5, "r", "st", 6))
_INSERT_SCORE = Statement(lambda board, period, user_id, score, reached, now: Score.insert(
    board=board, period=period, user=user_id, score=score, reached_seq=reached, updated_at=now),
    ("b", "p", 1, 2, 3, 4))
_UPDATE_SCORE = Statement(lambda board, period, user_id, score, reached, now: Score.update(
    score=score, reached_seq=reached, updated_at=now).where(
    (Score.board == board) & (Score.period == period) & (Score.user == user_id)), ("b", "p", 1, 2, 3, 4))
_ADVANCE_SESSION = Statement(lambda seq, session_id: Session.update(last_seq=seq).where(
    (Session.id == session_id) & (Session.last_seq < seq)), (1, "s"))
_USERNAME = Statement(lambda user_id: User.select(User.username).where(User.id == user_id), (1,))
_RECORD_RESULT = Statement(lambda result, row_id: Action.update(result=result).where(Action.id == row_id),
                           ("r", 1))


SCORE_BATCH = "score"
RECORD_BATCH = "record"


def batch_capable(db) -> bool:
    """The set-wise path needs INSERT ... RETURNING and UPDATE ... FROM (SQLite 3.35+, any PostgreSQL)."""
    return not isinstance(db, pw.SqliteDatabase) or sqlite3.sqlite_version_info >= (3, 35)


@dataclass(eq=False)
class _Accepted:
    """One accepted submission of a batch; `id` is its action row's, known once the batch's INSERT ran."""

    principal: Principal
    sub: rules.Submission
    client: ClientInfo
    now: int
    period: str
    old: int | None
    new: int
    reached: _Accepted | int  # the action whose id is the score's reached_seq (this one or an earlier one)
    result: str
    id: int = 0

    @property
    def body_hash(self) -> str:
        return self.sub.content_hash

    def reached_id(self) -> int:
        return self.reached if isinstance(self.reached, int) else self.reached.id


class _Plan:
    """A batch of submissions decided in queue order against the stored rows, then written set-wise."""

    def __init__(self, actions: dict[tuple[int, str], Action], scores: dict[tuple, tuple[int, int]]) -> None:
        self.actions: dict[tuple[int, str], Action | _Accepted] = dict(actions)
        self.stored = scores  # (board, period, user_id) -> (score, reached_seq) as stored
        self.scores: dict[tuple, tuple[int, _Accepted | int]] = dict(scores)
        self.accepted: list[_Accepted] = []
        self.usernames: dict[int, str] = {}

    def decide(self, principal: Principal, sub: rules.Submission, client: ClientInfo, now: int):
        """(the earlier action, True) for a duplicate, (this one, False) when accepted; raises the refusal."""
        earlier = self.actions.get((principal.user_id, sub.action_id))
        if earlier is not None:
            return earlier, True
        board, key = sub.board, _score_key(principal, sub, now)
        current = self.scores.get(key)
        old = current[0] if current else None
        new = rules.next_score(board.operator, board.order, old, sub.points)
        rules.check_range(board, new)
        result = {"accepted": True, "duplicate": False, "action_id": sub.action_id, "board": board.name,
                  "period": key[1], "score": new}
        accepted = _Accepted(principal, sub, client, now, key[1], old, new, 0, orjson.dumps(result).decode())
        accepted.reached = accepted if (current is None or new != old) else current[1]
        self.actions[(principal.user_id, sub.action_id)] = accepted
        self.scores[key] = (new, accepted.reached)
        self.accepted.append(accepted)
        return accepted, False

    def write(self) -> None:
        if not self.accepted:
            return
        _insert_actions(self.accepted)
        # The rest has no answer to wait for but the usernames: on PostgreSQL one round trip for all of it.
        writes = [*_score_writes(self.accepted, self.stored), _session_write(self.accepted),
                  *audit.chain_writes([_audit_entry(accepted) for accepted in self.accepted])]
        self.usernames = _usernames({accepted.principal.user_id for accepted in self.accepted}, writes)


def _score_key(principal: Principal, sub: rules.Submission, now: int) -> tuple[str, str, int]:
    return sub.board.name, period_of(sub.board.reset, now), principal.user_id


def _audit_entry(a: _Accepted) -> tuple:
    ctx = audit.Context(a.principal.user_id, a.principal.session_id, a.client.address, a.client.user_agent,
                        a.client.request_id)
    sub = a.sub
    return (ctx, "score.accepted", f"action:{a.id}", {"score": a.old},
            {"score": a.new, "points": sub.points, "type": sub.type, "board": sub.board.name, "period": a.period,
             "action_id": sub.action_id}, a.now)


def _values(names: tuple[str, ...], rows: int) -> str:
    """`WITH v(names) AS (VALUES ...)`: a batch's rows as a table both databases can join."""
    return f"WITH v({', '.join(names)}) AS (VALUES {rows_sql(rows, len(names))}) "


def _flat(rows) -> list:
    return [value for row in rows for value in row]


def _select(head: str, columns: tuple[str, ...], rest: str, params: list,
            writes_first: Sequence[tuple[str, list]] = ()) -> list:
    """The rows of `head SELECT columns rest`, run after `writes_first` (store.db.execute_all). SQLite hands
    them over as one JSON row: the sqlite3 module lets go of the GIL around every row it steps to, and
    getting it back from a busy event loop cost more per row than the query itself (psycopg2 receives all
    rows in one call)."""
    if isinstance(Action._meta.database.obj, pw.SqliteDatabase):
        sql = f"{head}SELECT json_group_array(json_array({', '.join(columns)})) {rest}"
        return orjson.loads(execute_all([*writes_first, (sql, params)]).fetchone()[0])
    return execute_all([*writes_first, (f"{head}SELECT {', '.join(columns)} {rest}", params)]).fetchall()


def _find_actions(keys: set[tuple[int, str]]) -> dict[tuple[int, str], Action]:
    """The committed actions among (user_id, action_id) keys, with what a duplicate needs."""
    rows = _select(_values(("user_id", "action_id"), len(keys)),
                   ('a."id"', 'a."user_id"', 'a."action_id"', 'a."body_hash"', 'a."result"'),
                   'FROM v JOIN actions a ON a."user_id" = v.user_id AND a."action_id" = v.action_id', _flat(keys))
    return {(row[1], row[2]): Action(id=row[0], body_hash=row[3], result=row[4]) for row in rows}


def _locked_scores(keys: set[tuple[str, str, int]]) -> dict[tuple[str, str, int], tuple[int, int]]:
    """The stored score rows of the keys, locked on PostgreSQL (in key order, as other processes lock them)."""
    rest = ('FROM v JOIN scores s ON s."board" = v.board AND s."period" = v.period AND s."user_id" = v.user_id')
    if isinstance(Score._meta.database.obj, pw.PostgresqlDatabase):
        rest += ' ORDER BY s."board", s."period", s."user_id" FOR UPDATE OF s'
    rows = _select(_values(("board", "period", "user_id"), len(keys)),
                   ('s."board"', 's."period"', 's."user_id"', 's."score"', 's."reached_seq"'), rest, _flat(keys))
    return {(row[0], row[1], row[2]): (row[3], row[4]) for row in rows}


_ACTION_COLUMNS = ("user_id", "session_id", "action_id", "body_hash", "board", "period", "type", "points",
                   "duration_ms", "seq", "client_ts", "result", "status", "created_at")


def _insert_actions(accepted: list[_Accepted]) -> None:
    """One INSERT of the batch's action rows (ids rise in queue order); sets each one's id."""
    db = Action._meta.database
    columns = ", ".join(f'"{name}"' for name in _ACTION_COLUMNS)
    sql = f"INSERT INTO actions ({columns}) VALUES {rows_sql(len(accepted), len(_ACTION_COLUMNS))}"
    params = _flat((a.principal.user_id, a.principal.session_id, a.sub.action_id, a.sub.content_hash, a.sub.board.name,
                    a.period, a.sub.type, a.sub.points, a.sub.duration_ms, a.sub.seq, a.sub.ts, a.result, "accepted",
                    a.now) for a in accepted)
    if isinstance(db.obj, pw.SqliteDatabase):
        # No RETURNING: each returned row would be a GIL hand-off (see _select). An AUTOINCREMENT key gives
        # the rows of one INSERT consecutive ids in VALUES order, the last one being lastrowid.
        cursor = db.execute_sql(sql, params)
        if cursor.rowcount != len(accepted):
            raise RuntimeError(f"inserted {cursor.rowcount} of {len(accepted)} action rows")
        first = cursor.lastrowid - len(accepted) + 1
        for offset, a in enumerate(accepted):
            a.id = first + offset
        return
    rows = db.execute_sql(sql + ' RETURNING "id", "user_id", "action_id"', params).fetchall()
    ids = {(row[1], row[2]): row[0] for row in rows}
    for a in accepted:
        a.id = ids[(a.principal.user_id, a.sub.action_id)]


def _score_writes(accepted: list[_Accepted], stored: dict) -> list[tuple[str, list]]:
    """Each touched score row's final value: one UPDATE of the stored rows, one INSERT of the new ones."""
    final: dict[tuple, tuple] = {}
    for a in accepted:  # later actions of the same row overwrite earlier ones: the last one stands
        key = _score_key(a.principal, a.sub, a.now)
        final[key] = (*key, a.new, a.reached_id(), a.now)
    updates = [row for key, row in final.items() if key in stored]
    inserts = [row for key, row in final.items() if key not in stored]
    names = ("board", "period", "user_id", "score", "reached_seq", "updated_at")
    writes = []
    if updates:
        writes.append((_values(names, len(updates)) + 'UPDATE scores SET "score" = v.score, '
                       '"reached_seq" = v.reached_seq, "updated_at" = v.updated_at FROM v WHERE scores."board" = '
                       'v.board AND scores."period" = v.period AND scores."user_id" = v.user_id', _flat(updates)))
    if inserts:
        columns = ", ".join(f'"{name}"' for name in names)
        writes.append((f"INSERT INTO scores ({columns}) VALUES {rows_sql(len(inserts), len(names))}",
                       _flat(inserts)))
    return writes


def _session_write(accepted: list[_Accepted]) -> tuple[str, list]:
    """Each session's last_seq raised to the highest seq of the batch (as one UPDATE per action would)."""
    highest: dict[str, int] = {}
    for a in accepted:
        highest[a.principal.session_id] = max(a.sub.seq, highest.get(a.principal.session_id, a.sub.seq))
    return (_values(("id", "last_seq"), len(highest)) + 'UPDATE sessions SET "last_seq" = v.last_seq FROM v '
            'WHERE sessions."id" = v.id AND sessions."last_seq" < v.last_seq', _flat(highest.items()))


def _usernames(user_ids: set[int], writes_first: list[tuple[str, list]]) -> dict[int, str]:
    rest = f'FROM users WHERE "id" IN ({", ".join([User._meta.database.param] * len(user_ids))})'
    return dict(_select("", ('"id"', '"username"'), rest, list(user_ids), writes_first))


RECORD_CHUNK = 1000  # rows per UPDATE: 2,000 parameters, well inside SQLite's limit


def record_results(results: list[tuple[str, int]]) -> None:
    """Store acknowledged results in their action rows: one UPDATE per chunk where the database can join a
    VALUES list (each statement is a GIL hand-off for the writer thread), else one per row."""
    if not batch_capable(Action._meta.database.obj):
        for result, row_id in results:
            _RECORD_RESULT.cursor(result, row_id)
        return
    for start in range(0, len(results), RECORD_CHUNK):
        chunk = [(row_id, result) for result, row_id in results[start:start + RECORD_CHUNK]]
        Action._meta.database.execute_sql(
            _values(("id", "result"), len(chunk)) + 'UPDATE actions SET "result" = v.result FROM v '
            'WHERE actions."id" = v.id', _flat(chunk))


def record_many(items: list[list[tuple[str, int]]]) -> list[tuple[bool, Any]]:
    """`record_results` for several jobs' results at once (Store.register_batch)."""
    record_results([result for results in items for result in results])
    return [(True, None)] * len(items)


def find_action(user_id: int, action_id: str) -> Action | None:
    """The committed action (id, body_hash and result only: what a duplicate needs), if any."""
    row = _FIND_ACTION.cursor(user_id, action_id).fetchone()
    return None if row is None else Action(id=row[0], body_hash=row[1], result=row[2])


def last_seq(session_id: str) -> int:
    return Session.select(Session.last_seq).where(Session.id == session_id).scalar() or 0


def _locked_score(board: str, period: str, user_id: int) -> Score | None:
    """The user's score row, locked on PostgreSQL so concurrent processes apply one user's actions in turn."""
    locked = isinstance(Score._meta.database.obj, pw.PostgresqlDatabase)
    row = (_SCORE_ROW_LOCKED if locked else _SCORE_ROW).cursor(board, period, user_id).fetchone()
    return None if row is None else Score(board=board, period=period, user=user_id, score=row[0],
                                          reached_seq=row[1])


def _save_score(row: Score | None, board: str, period: str, user_id: int, score: int, reached: int,
                now: int) -> None:
    if row is None:
        _INSERT_SCORE.cursor(board, period, user_id, score, reached, now)
        return
    _UPDATE_SCORE.cursor(board, period, user_id, score, reached, now)
