"""Score submission (PROTOCOL "Submitting a score"): the whole path from raw request to live event.

Order: gateway limits -> auth -> signature over the raw bytes -> parse -> freshness (ts window, nonce,
seq) -> action rules -> one transaction (action + score + audit) -> leaderboard index -> response ->
bus event. A 200 is sent only after the transaction committed; a store that is down gives 503 and the
nonce and seq are given back, so the client can retry the very same request.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

import orjson
import peewee as pw

from . import audit, rules, signing, wire
from .clock import Clock
from .config import Config
from .errors import ActionConflict, OutOfSequence, Replay, ScoreboardError, ScoreRejected, StaleTimestamp, Unavailable
from .kv import KV, LimitSpec, NonceUsed, NotGreater, RateDecision, Reserved, SeqUnknown
from .leaderboard import Entry, Index
from .periods import period_of
from .ratelimit import Limit, check
from .store.db import Statement, Store, rows_sql
from .store.models import Action, Score, Session, User
from .users import ClientInfo, Principal, Users

log = logging.getLogger("scoreboard.scores")
SCORES_CHANNEL = "_scores"  # internal: the hub and other processes' caches listen here


@dataclass(frozen=True)
class Committed:
    """What the transaction wrote, or the stored answer when the action was already committed."""

    action_row_id: int
    period: str
    score: int
    previous: int | None
    reached_seq: int
    username: str
    duplicate_result: dict | None = None


class Scores:
    def __init__(self, config: Config, store: Store, kv: KV, index: Index, bus, users: Users,
                 clock: Clock) -> None:
        self.config, self.store, self.kv, self.index, self.bus = config, store, kv, index, bus
        self.users, self.clock = users, clock
        self.per_user = Limit.parse(config.ratelimit.per_user)
        self.per_address = Limit.parse(config.ratelimit.per_address)
        self.window_ms = config.signing.window_s * 1000
        # Called in this process with each accepted action's event (the hub's user and top-N triggers).
        self.accepted_listeners: list = []
        # Board periods whose index missed a committed action (cache down): rebuilt before their next read.
        self.stale_boards: set[str] = set()
        # Acknowledged results waiting to be recorded, and the write job recording the previous ones.
        self.unrecorded: list[tuple[str, int]] = []
        self.recording: asyncio.Future | None = None
        if batch_capable(store.db):
            store.register_batch(SCORE_BATCH, self._commit_many)

    async def submit(self, raw_body: bytes, signature: str | None, authorization: str | None,
                     client: ClientInfo) -> dict:
        now = self.clock.now_ms()
        await check(self.kv, f"rl:a:{client.address}", self.per_address, now)
        principal = await self.users.authenticate(authorization)
        await check(self.kv, f"rl:u:{principal.user_id}", self.per_user, now)
        signing.verify(principal.session_key, raw_body, signature)
        sub = rules.parse(wire.loads_object(raw_body), self.config)
        try:  # checked now, raised in its turn below: it decides whether reserve counts the rule's limit
            rule, refusal = rules.check_action(sub, self.config), None
        except ScoreRejected as exc:
            rule, refusal = None, exc
        try:
            reserved = await self._reserve(principal, sub, now, rule)
        except (StaleTimestamp, Replay, OutOfSequence):
            stored = await self._stored_result(principal.user_id, sub)
            if stored is None:
                raise
            return await self._with_rank(stored, principal.user_id, sub)
        if refusal is not None:
            raise refusal
        try:
            await self._per_minute(principal.user_id, rule, now, reserved.decision)
        except ScoreRejected:
            # A retry (fresh nonce and seq) of a committed action is a duplicate, not one action too many.
            stored = await self._stored_result(principal.user_id, sub)
            if stored is None:
                raise
            return await self._with_rank(stored, principal.user_id, sub)
        try:
            committed = await self.store.write(lambda: self._commit(principal, sub, client, now), SCORE_BATCH,
                                               (principal, sub, client, now))
        except Unavailable:
            await self._release(principal, sub, reserved.previous, now)
            raise
        if committed.duplicate_result is not None:
            return await self._with_rank(committed.duplicate_result, principal.user_id, sub)
        return await self._publish(principal, sub, committed, now)

    # ---- freshness ------------------------------------------------------------------------------

    async def _reserve(self, principal: Principal, sub: rules.Submission, now: int, rule) -> Reserved:
        """Nonce and seq; with a rule, its per-minute limit is counted in the same step (decided later)."""
        if abs(sub.ts - now) > self.window_ms:
            raise StaleTimestamp(f"ts is more than {self.config.signing.window_s} s from server time")
        nonce_key = f"nonce:{principal.user_id}:{sub.nonce}"
        try:  # the nonce and the seq in one step while the cache knows the session's seq
            return await self.kv.reserve(nonce_key, 2 * self.window_ms + 1000, f"seq:{principal.session_id}",
                                         sub.seq, now, self.config.auth.refresh_ttl_s * 1000,
                                         None if rule is None else self._rule_limit(principal.user_id, rule))
        except NonceUsed:
            raise Replay("this nonce was already used") from None
        except NotGreater as exc:
            raise OutOfSequence(f"seq must be greater than {exc.current}") from None
        except SeqUnknown:
            pass  # the nonce is now stored; the seq mark is rebuilt below
        try:
            return Reserved(await self._advance_seq(principal.session_id, sub.seq, now))
        except OutOfSequence:
            await self.kv.delete(nonce_key)
            raise

    async def _advance_seq(self, session_id: str, seq: int, now: int) -> int | None:
        key, ttl = f"seq:{session_id}", self.config.auth.refresh_ttl_s * 1000
        if await self.kv.get(key, now) is None:
            # The cache forgot (restart, eviction): the session row remembers the last committed seq.
            last = await self.store.read(_last_seq, session_id)
            await self.kv.set_nx(key, str(last).encode(), now, ttl)
        try:
            return await self.kv.advance(key, seq, now, ttl)
        except NotGreater as exc:
            raise OutOfSequence(f"seq must be greater than {exc.current}") from None

    async def _release(self, principal: Principal, sub: rules.Submission, previous: int | None, now: int) -> None:
        """Give back what a failed commit reserved, so the same request can be retried."""
        ttl = self.config.auth.refresh_ttl_s * 1000
        try:
            await self.kv.delete(f"nonce:{principal.user_id}:{sub.nonce}")
            await self.kv.retreat(f"seq:{principal.session_id}", sub.seq, previous, now, ttl)
        except Unavailable:
            pass  # the cache is down too; it is rebuilt from the database when it returns

    async def _stored_result(self, user_id: int, sub: rules.Submission) -> dict | None:
        """A retry of a committed action gets its original answer; the same id with other content conflicts."""
        row = await self.store.read(_find_action, user_id, sub.action_id)
        if row is None:
            return None
        return self._duplicate(row, sub)

    def _duplicate(self, row: Action, sub: rules.Submission) -> dict:
        if row.body_hash != sub.content_hash:
            raise ActionConflict("this action_id was already used with a different body")
        return {**orjson.loads(row.result), "duplicate": True}

    async def _with_rank(self, result: dict, user_id: int, sub: rules.Submission) -> dict:
        """A duplicate answered before its first response recorded the rank gets today's rank instead."""
        if "rank" in result:
            return result
        key = f"{sub.board.name}:{result['period']}"
        standing = await self.index.rank(key, sub.board.order, user_id)
        rank = standing[0] if standing else None
        return {**result, "rank": rank, "previous_rank": rank, "total": await self.index.total(key)}

    @staticmethod
    def _rule_limit(user_id: int, rule) -> LimitSpec:
        return LimitSpec(f"rule:{user_id}:{rule.name}", rule.max_per_minute, 60_000, rule.max_per_minute)

    async def _per_minute(self, user_id: int, rule, now: int, decision: RateDecision | None) -> None:
        """The rule's limit, unless reserve already counted it (`decision`)."""
        if decision is None:
            limit = self._rule_limit(user_id, rule)
            decision = await self.kv.rate_limit(limit.key, limit.rate, limit.period_ms, limit.burst, now)
        if not decision.allowed:
            raise ScoreRejected("rate_exceeded", f"at most {rule.max_per_minute} {rule.name} per minute")

    # ---- the transaction (runs on the writer thread) --------------------------------------------

    def _commit(self, principal: Principal, sub: rules.Submission, client: ClientInfo, now: int) -> Committed:
        existing = _find_action(principal.user_id, sub.action_id)
        if existing is not None:
            return Committed(existing.id, "", 0, None, 0, "", duplicate_result=self._duplicate(existing, sub))
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

    def _commit_many(self, items: list[tuple[Principal, rules.Submission, ClientInfo, int]]) -> list[tuple[bool, Any]]:
        """`_commit` for consecutive submissions at once (Store.register_batch), with the same outcomes: a
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
        return [self._outcome(decision, item[1], plan.usernames)
                for decision, item in zip(decisions, items, strict=True)]

    def _outcome(self, decision, sub: rules.Submission, usernames: dict[int, str]) -> tuple[bool, Any]:
        if isinstance(decision, Exception):
            return False, decision
        row, duplicate = decision
        if not duplicate:
            return True, Committed(row.id, row.period, row.new, row.old, row.reached_id(),
                                   usernames[row.principal.user_id])
        try:  # an action committed earlier, or earlier in this batch
            return True, Committed(row.id, "", 0, None, 0, "", duplicate_result=self._duplicate(row, sub))
        except ScoreboardError as exc:
            return False, exc

    # ---- after commit ---------------------------------------------------------------------------

    async def _publish(self, principal: Principal, sub: rules.Submission, committed: Committed, now: int) -> dict:
        board, period = sub.board, committed.period
        entry = Entry(principal.user_id, committed.score, committed.reached_seq, committed.username)
        try:
            rank, previous_rank, total = await self.index.apply(f"{board.name}:{period}", board.order, entry)
        except Unavailable:
            # Committed is committed: acknowledge without a rank rather than invite a retry of a done action.
            log.warning("index unavailable after commit of action %s; board %s marked stale", sub.action_id,
                        board.name)
            self.stale_boards.add(f"{board.name}:{period}")
            rank = previous_rank = total = None
        result = {"accepted": True, "duplicate": False, "action_id": sub.action_id, "board": board.name,
                  "period": period, "score": committed.score, "rank": rank, "previous_rank": previous_rank,
                  "total": total}
        # Recorded for retries after the fact: the acknowledgement does not wait on a second transaction.
        self._record(committed.action_row_id, orjson.dumps(result).decode())
        event = {"user_id": principal.user_id, "username": committed.username, "board": board.name,
                 "period": period, "score": committed.score, "previous_score": committed.previous,
                 "rank": rank, "previous_rank": previous_rank, "total": total, "action_id": sub.action_id,
                 "type": sub.type, "points": sub.points, "at": now}
        try:
            await self.bus.publish(SCORES_CHANNEL, wire.dumps(event))
            for listener in self.accepted_listeners:
                await listener(event)
        except Unavailable:
            log.warning("score event for action %s not published: bus unavailable", sub.action_id)
        return result

    def _record(self, row_id: int, result: str) -> None:
        """Store an acknowledged result in its action row. One write job at a time takes all that gathered
        meanwhile, so under load the results cost one savepoint per group commit, not one each."""
        self.unrecorded.append((result, row_id))
        if self.recording is None:
            self._record_unrecorded()

    def _record_unrecorded(self) -> None:
        results, self.unrecorded = self.unrecorded, []
        self.recording = asyncio.ensure_future(self.store.write(lambda: _record_results(results)))
        self.recording.add_done_callback(self._recorded)

    def _recorded(self, future: asyncio.Future) -> None:
        self.recording = None
        _log_failure(future)
        if self.unrecorded:
            self._record_unrecorded()


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
        _write_scores(self.accepted, self.stored)
        _advance_sessions(self.accepted)
        audit.append_many([_audit_entry(accepted) for accepted in self.accepted])
        self.usernames = _usernames({accepted.principal.user_id for accepted in self.accepted})


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


def _find_actions(keys: set[tuple[int, str]]) -> dict[tuple[int, str], Action]:
    """The committed actions among (user_id, action_id) keys, with what a duplicate needs."""
    sql = (_values(("user_id", "action_id"), len(keys)) + 'SELECT a."id", a."user_id", a."action_id", '
           'a."body_hash", a."result" FROM v JOIN actions a ON a."user_id" = v.user_id AND a."action_id" = v.action_id')
    rows = Action._meta.database.execute_sql(sql, _flat(keys)).fetchall()
    return {(row[1], row[2]): Action(id=row[0], body_hash=row[3], result=row[4]) for row in rows}


def _locked_scores(keys: set[tuple[str, str, int]]) -> dict[tuple[str, str, int], tuple[int, int]]:
    """The stored score rows of the keys, locked on PostgreSQL (in key order, as other processes lock them)."""
    db = Score._meta.database
    sql = (_values(("board", "period", "user_id"), len(keys)) + 'SELECT s."board", s."period", s."user_id", '
           's."score", s."reached_seq" FROM v JOIN scores s ON s."board" = v.board AND s."period" = v.period '
           'AND s."user_id" = v.user_id')
    if isinstance(db.obj, pw.PostgresqlDatabase):
        sql += ' ORDER BY s."board", s."period", s."user_id" FOR UPDATE OF s'
    rows = db.execute_sql(sql, _flat(keys)).fetchall()
    return {(row[0], row[1], row[2]): (row[3], row[4]) for row in rows}


_ACTION_COLUMNS = ("user_id", "session_id", "action_id", "body_hash", "board", "period", "type", "points",
                   "duration_ms", "seq", "client_ts", "result", "status", "created_at")


def _insert_actions(accepted: list[_Accepted]) -> None:
    """One INSERT of the batch's action rows (ids rise in queue order); sets each one's id."""
    columns = ", ".join(f'"{name}"' for name in _ACTION_COLUMNS)
    sql = (f"INSERT INTO actions ({columns}) VALUES {rows_sql(len(accepted), len(_ACTION_COLUMNS))} "
           'RETURNING "id", "user_id", "action_id"')
    params = _flat((a.principal.user_id, a.principal.session_id, a.sub.action_id, a.sub.content_hash, a.sub.board.name,
                    a.period, a.sub.type, a.sub.points, a.sub.duration_ms, a.sub.seq, a.sub.ts, a.result, "accepted",
                    a.now) for a in accepted)
    ids = {(row[1], row[2]): row[0] for row in Action._meta.database.execute_sql(sql, params).fetchall()}
    for a in accepted:
        a.id = ids[(a.principal.user_id, a.sub.action_id)]


def _write_scores(accepted: list[_Accepted], stored: dict) -> None:
    """Each touched score row's final value: one UPDATE of the stored rows, one INSERT of the new ones."""
    final: dict[tuple, tuple] = {}
    for a in accepted:  # later actions of the same row overwrite earlier ones: the last one stands
        key = _score_key(a.principal, a.sub, a.now)
        final[key] = (*key, a.new, a.reached_id(), a.now)
    db = Score._meta.database
    updates = [row for key, row in final.items() if key in stored]
    inserts = [row for key, row in final.items() if key not in stored]
    names = ("board", "period", "user_id", "score", "reached_seq", "updated_at")
    if updates:
        db.execute_sql(_values(names, len(updates)) + 'UPDATE scores SET "score" = v.score, '
                       '"reached_seq" = v.reached_seq, "updated_at" = v.updated_at FROM v WHERE scores."board" = '
                       'v.board AND scores."period" = v.period AND scores."user_id" = v.user_id', _flat(updates))
    if inserts:
        columns = ", ".join(f'"{name}"' for name in names)
        db.execute_sql(f"INSERT INTO scores ({columns}) VALUES {rows_sql(len(inserts), len(names))}",
                       _flat(inserts))


def _advance_sessions(accepted: list[_Accepted]) -> None:
    """Each session's last_seq raised to the highest seq of the batch (as one UPDATE per action would)."""
    highest: dict[str, int] = {}
    for a in accepted:
        highest[a.principal.session_id] = max(a.sub.seq, highest.get(a.principal.session_id, a.sub.seq))
    Session._meta.database.execute_sql(
        _values(("id", "last_seq"), len(highest)) + 'UPDATE sessions SET "last_seq" = v.last_seq FROM v '
        'WHERE sessions."id" = v.id AND sessions."last_seq" < v.last_seq', _flat(highest.items()))


def _usernames(user_ids: set[int]) -> dict[int, str]:
    sql = f'SELECT "id", "username" FROM users WHERE "id" IN ({", ".join([User._meta.database.param] * len(user_ids))})'
    return dict(User._meta.database.execute_sql(sql, list(user_ids)).fetchall())


def _record_results(results: list[tuple[str, int]]) -> None:
    for result, row_id in results:
        _RECORD_RESULT.cursor(result, row_id)


def _find_action(user_id: int, action_id: str) -> Action | None:
    """The committed action (id, body_hash and result only: what a duplicate needs), if any."""
    row = _FIND_ACTION.cursor(user_id, action_id).fetchone()
    return None if row is None else Action(id=row[0], body_hash=row[1], result=row[2])


def _last_seq(session_id: str) -> int:
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




def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not record the acknowledged result: %s", future.exception())
