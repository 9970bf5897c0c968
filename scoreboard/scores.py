"""Score submission (PROTOCOL "Submitting a score"): the whole path from raw request to live event.

Order: gateway limits -> auth -> signature over the raw bytes -> parse -> freshness (ts window, nonce,
seq) -> action rules -> one transaction (action + score + audit) -> leaderboard index -> response ->
bus event. A 200 is sent only after the transaction committed; a store that is down gives 503 and the
nonce and seq are given back, so the client can retry the very same request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import orjson
import peewee as pw

from . import audit, rules, signing, wire
from .clock import Clock
from .config import Config
from .errors import ActionConflict, OutOfSequence, Replay, ScoreRejected, StaleTimestamp, Unavailable
from .kv import KV, NotGreater
from .leaderboard import Entry, Index
from .periods import period_of
from .ratelimit import Limit, check
from .store.db import Statement, Store
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

    async def submit(self, raw_body: bytes, signature: str | None, authorization: str | None,
                     client: ClientInfo) -> dict:
        now = self.clock.now_ms()
        await check(self.kv, f"rl:a:{client.address}", self.per_address, now)
        principal = await self.users.authenticate(authorization)
        await check(self.kv, f"rl:u:{principal.user_id}", self.per_user, now)
        signing.verify(principal.session_key, raw_body, signature)
        sub = rules.parse(wire.loads_object(raw_body), self.config)
        try:
            reserved = await self._reserve(principal, sub, now)
        except (StaleTimestamp, Replay, OutOfSequence):
            stored = await self._stored_result(principal.user_id, sub)
            if stored is None:
                raise
            return await self._with_rank(stored, principal.user_id, sub)
        rule = rules.check_action(sub, self.config)
        try:
            await self._per_minute(principal.user_id, rule, now)
        except ScoreRejected:
            # A retry (fresh nonce and seq) of a committed action is a duplicate, not one action too many.
            stored = await self._stored_result(principal.user_id, sub)
            if stored is None:
                raise
            return await self._with_rank(stored, principal.user_id, sub)
        try:
            committed = await self.store.write(lambda: self._commit(principal, sub, client, now))
        except Unavailable:
            await self._release(principal, sub, reserved, now)
            raise
        if committed.duplicate_result is not None:
            return await self._with_rank(committed.duplicate_result, principal.user_id, sub)
        return await self._publish(principal, sub, committed, now)

    # ---- freshness ------------------------------------------------------------------------------

    async def _reserve(self, principal: Principal, sub: rules.Submission, now: int) -> int | None:
        if abs(sub.ts - now) > self.window_ms:
            raise StaleTimestamp(f"ts is more than {self.config.signing.window_s} s from server time")
        ttl = 2 * self.window_ms + 1000
        if not await self.kv.set_nx(f"nonce:{principal.user_id}:{sub.nonce}", b"1", now, ttl):
            raise Replay("this nonce was already used")
        try:
            return await self._advance_seq(principal.session_id, sub.seq, now)
        except OutOfSequence:
            await self.kv.delete(f"nonce:{principal.user_id}:{sub.nonce}")
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

    async def _per_minute(self, user_id: int, rule, now: int) -> None:
        decision = await self.kv.rate_limit(f"rule:{user_id}:{rule.name}", rule.max_per_minute, 60_000,
                                            rule.max_per_minute, now)
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
