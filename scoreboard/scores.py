"""Score submission (PROTOCOL "Submitting a score"): the whole path from raw request to live event.

Checks, in the order their refusals take precedence: gateway limits -> auth -> signature over the raw
bytes -> parse -> freshness (ts window, nonce, seq) -> action rules. Once the caller is known, the limits
are counted in the same KV step as the nonce and seq (`KV.reserve`'s gates: one Redis call, not two); a
request refused before that step is counted against them on its way out, so its 429 still comes first.
Then one transaction (action + score + audit) -> leaderboard index -> response -> bus events and the
result record, each through an Outbox (one call for everything acknowledged meanwhile). A 200 is sent
only after the transaction committed; a store that is down gives 503 and the nonce and seq are given
back, so the client can retry the very same request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson

from . import ledger, rules, signing, wire
from .clock import Clock
from .config import Config
from .errors import OutOfSequence, Replay, ScoreboardError, ScoreRejected, StaleTimestamp, Unavailable
from .kv import KV, LimitSpec, NonceUsed, NotGreater, RateDecision, Refused, Reserved, SeqUnknown
from .leaderboard import Entry, Index
from .outbox import Outbox
from .periods import period_of
from .ratelimit import Limit, check_all, rate_limited
from .store.db import Store
from .users import ClientInfo, Principal, Users

log = logging.getLogger("scoreboard.scores")
SCORES_CHANNEL = "_scores"  # internal: every accepted action, for consumers such as anti-cheat


class Scores:
    def __init__(self, config: Config, store: Store, kv: KV, index: Index, bus, users: Users,
                 clock: Clock, stale_boards: set[str]) -> None:
        self.config, self.store, self.kv, self.index, self.bus = config, store, kv, index, bus
        self.users, self.clock = users, clock
        self.per_user = Limit.parse(config.ratelimit.per_user)
        self.per_address = Limit.parse(config.ratelimit.per_address)
        self.window_ms = config.signing.window_s * 1000
        # Called with each accepted action's event: the messages to publish with it, in the same bus call
        # (the hub's user event), then the listeners in this process (page caches, the hub's top-N tick).
        self.accepted_messages: list[Callable[[dict], list[tuple[str, bytes]]]] = []
        self.accepted_listeners: list[Callable[[dict], Awaitable[None]]] = []
        # Board periods whose index missed a committed action (cache down): Boards rebuilds them before
        # their next read.
        self.stale_boards = stale_boards
        # Recorded for retries after the fact: the acknowledgement waits on no second transaction, and
        # under load one write job records every result that gathered while the previous one ran.
        self.results = Outbox(self._record_results, lambda results: f"{len(results)} acknowledged results")
        # Published after the acknowledgement (the order: rank, respond, publish): the events of
        # every action acknowledged in a loop turn in one bus call, off the response path.
        self.events = Outbox(self._publish_events,
                             lambda actions: "events of actions " + ", ".join(action for action, _ in actions))
        if ledger.batch_capable(store.db):
            store.register_batch(ledger.SCORE_BATCH, ledger.commit_many, offload=True)
            store.register_batch(ledger.RECORD_BATCH, ledger.record_many, offload=True)
        store.rerun_listeners.append(self.on_rerun)

    def on_rerun(self, jobs: list[tuple[str | None, object]]) -> None:
        """These (batch key, item) jobs run again after their first outcome was lost (Store.rerun_listeners).
        An action that did commit then answers as a duplicate and never reaches the index: its board
        period is rebuilt before its next read."""
        for key, item in jobs:
            if key == ledger.SCORE_BATCH:
                _, sub, _, now = item
                self.stale_boards.add(f"{sub.board.name}:{period_of(sub.board.reset, now)}")

    async def submit(self, raw_body: bytes, signature: str | None, authorization: str | None,
                     client: ClientInfo) -> dict:
        now = self.clock.now_ms()
        principal = await self._authenticated(authorization, client, now)
        gates = self._gates(principal, client)
        try:
            signing.verify(principal.session_key, raw_body, signature)
            sub = rules.parse(wire.loads_object(raw_body), self.config)
        except ScoreboardError:
            await check_all(self.kv, gates, now)  # a 429 comes first, and the refused request counts too
            raise
        try:  # checked now, raised in its turn below: it decides whether reserve counts the rule's limit
            rule, refusal = rules.check_action(sub, self.config), None
        except ScoreRejected as exc:
            rule, refusal = None, exc
        try:
            reserved = await self._reserve(principal, sub, now, rule, gates)
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
            committed = await self.store.write(lambda: ledger.commit_one(principal, sub, client, now),
                                               ledger.SCORE_BATCH, (principal, sub, client, now))
        except Unavailable:
            await self._release(principal, sub, reserved.previous, now)
            raise
        if committed.duplicate_result is not None:
            return await self._with_rank(committed.duplicate_result, principal.user_id, sub)
        return await self._publish(principal, sub, committed, now)

    async def _authenticated(self, authorization: str | None, client: ClientInfo, now: int) -> Principal:
        """Auth; a request that it refuses still counts against its address (and a 429 comes first)."""
        try:
            return await self.users.authenticate(authorization)
        except ScoreboardError:
            await check_all(self.kv, [_spec(f"rl:a:{client.address}", self.per_address)], now)
            raise

    def _gates(self, principal: Principal, client: ClientInfo) -> list[LimitSpec]:
        """The gateway limits of a known caller, counted in this order before anything else."""
        return [_spec(f"rl:a:{client.address}", self.per_address),
                _spec(f"rl:u:{principal.user_id}", self.per_user)]

    # ---- freshness ------------------------------------------------------------------------------

    async def _reserve(self, principal: Principal, sub: rules.Submission, now: int, rule,
                       gates: list[LimitSpec]) -> Reserved:
        """The gates, then nonce and seq; with a rule, its per-minute limit is counted in the same step
        (decided later)."""
        if abs(sub.ts - now) > self.window_ms:
            await check_all(self.kv, gates, now)
            raise StaleTimestamp(f"ts is more than {self.config.signing.window_s} s from server time")
        nonce_key = f"nonce:{principal.user_id}:{sub.nonce}"
        try:  # the nonce and the seq in one step while the cache knows the session's seq
            return await self.kv.reserve(nonce_key, 2 * self.window_ms + 1000, f"seq:{principal.session_id}",
                                         sub.seq, now, self.config.auth.refresh_ttl_s * 1000,
                                         None if rule is None else self._rule_limit(principal.user_id, rule),
                                         gates)
        except Refused as exc:
            raise rate_limited(exc.decision) from None
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
            last = await self.store.read(ledger.last_seq, session_id)
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
        row = await self.store.read(ledger.find_action, user_id, sub.action_id)
        if row is None:
            return None
        return ledger.duplicate(row, sub)

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

    # ---- after commit ---------------------------------------------------------------------------

    async def _publish(self, principal: Principal, sub: rules.Submission, committed: ledger.Committed,
                       now: int) -> dict:
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
        self.results.put((orjson.dumps(result).decode(), committed.action_row_id))
        event = {"user_id": principal.user_id, "username": committed.username, "board": board.name,
                 "period": period, "score": committed.score, "previous_score": committed.previous,
                 "rank": rank, "previous_rank": previous_rank, "total": total, "action_id": sub.action_id,
                 "type": sub.type, "points": sub.points, "at": now}
        self.events.put((sub.action_id, self._messages(event)))
        # This process's own listeners run before the answer (its page cache drops before the client can
        # read it again), and whether or not the bus is up.
        for listener in self.accepted_listeners:
            await listener(event)
        return result

    def _messages(self, event: dict) -> list[tuple[str, bytes]]:
        """The score event and the messages of `accepted_messages` (the hub's user event) for one action."""
        messages = [(SCORES_CHANNEL, wire.dumps(event))]
        for source in self.accepted_messages:
            try:
                messages += source(event)
            except Exception:  # committed is committed: a broken source costs its own message only
                log.exception("no message from %r for action %s", source, event["action_id"])
        return messages

    async def _record_results(self, results: list[tuple[str, int]]) -> None:
        await self.store.write(lambda: ledger.record_results(results), ledger.RECORD_BATCH, results)

    async def _publish_events(self, actions: list[tuple[str, list[tuple[str, bytes]]]]) -> None:
        await self.bus.publish_many([message for _, messages in actions for message in messages])

    async def flush(self) -> None:
        """Wait until every acknowledged action's events are published and its result recorded: on shutdown,
        before the bus and the store close."""
        await self.events.flush()
        await self.results.flush()


def _spec(key: str, limit: Limit) -> LimitSpec:
    return LimitSpec(key, limit.rate, limit.period_ms, limit.burst)

