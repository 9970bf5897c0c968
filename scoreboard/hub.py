"""The realtime hub (PROTOCOL "Realtime: GET /ws"): channels, who may read them, resubscribe, live events.

Transport-free: a connection is any `Peer` (the WebSocket handler, a benchmark's fake). Per process the
hub keeps channel -> local peers and holds one bus subscription per channel that has any. An event is
turned into its client message once and the same bytes object goes to every local peer of the channel.

Events and who publishes them:

- `leaderboard:{board}` `top`: conflated. Each accepted action tries to take the board's lease in the
  KV (shared by every process with Redis). The winner waits `broadcast.interval_ms`, deletes the lease,
  then reads the board: an action applied after that read finds the lease free and starts the next
  tick, so no change is missed, and a burst of any size within one interval costs one read and one
  event. The event is published only when the top N differs from the last one published.
- `user:{id}` `score`: by the accepting process, for each accepted action (before the HTTP answer).
- `user:{id}` `rank`: in the same tick, from one page read of `broadcast.rank_notify_depth` entries
  compared with the previous tick's page (kept in the KV): users whose rank changed while their score
  did not (so they did not move themselves; movers got a `score` event). Users pushed out of the depth
  are looked up one by one (at most as many as entered it).
- `admin:alerts` `flag` / `incident`: `publish_alert`, for anti-cheat and admins.

Where PROTOCOL is silent: `subscribed.snapshot` is null when `recovered` is true; the leaderboard
snapshot has the `top` event's data shape; an unknown board is `not_found`; a malformed channel name
is `invalid_request`; anonymous peers get `forbidden` on user/admin channels and `unauthorized` on
leaderboards while `server.public_reads` is false; more than `websocket.max_subscriptions` channels on
one connection is `forbidden`. Subscribing again to a channel already subscribed re-syncs it (a new
`subscribed` reply, and replay from `since` when given) without counting twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

import orjson

from . import periods
from .boards import Boards
from .bus import Bus, Event
from .clock import Clock
from .config import BoardConfig, Config
from .errors import Forbidden, InvalidRequest, ScoreboardError, Unauthorized
from .kv import KV
from .leaderboard import Index, Ranked
from .metrics import Metrics
from .users import Principal, Users

log = logging.getLogger("scoreboard.hub")

ALERTS = "admin:alerts"
ALERT_TYPES = ("flag", "incident")
USER_ID_RE = re.compile(r"[1-9][0-9]{0,15}")
USER_ID_MAX = 2**53 - 1
EVENT_PAYLOAD_HEAD = b'{"type":'
GOING_AWAY = 1001
UNAUTHORIZED_CLOSE = 4001
REVOCATIONS_CHANNEL = "_revocations"  # internal: {"session_id"} whenever a session is revoked anywhere


class Peer(Protocol):
    """One client connection as the hub sees it."""

    def deliver(self, frame: bytes) -> bool:
        """Queue one complete JSON message; must not block. The same bytes object is handed to every
        peer of an event (so a transport may cache its own framing by identity). Returns False when the
        message was dropped (connection closed, or cut off as too slow)."""

    def close(self, code: int, reason: str) -> None: ...

    # Optional, on the class: `fanout(peers: list) -> Callable[[bytes], int]`, one sender for a whole
    # group of live peers of that class (it sends a message to all of them and returns how many took
    # it), built again whenever the group changes. Without it the hub calls `deliver` per peer.


def senders_of(peers: Iterable[Peer]) -> tuple[Callable[[bytes], int], ...]:
    """The senders of one channel's live peers: per peer class its `fanout`, else a `deliver` loop."""
    groups: dict[type, list[Peer]] = {}
    for peer in peers:
        groups.setdefault(type(peer), []).append(peer)
    senders = []
    for cls, group in groups.items():
        fanout = getattr(cls, "fanout", None)
        senders.append(fanout(group) if fanout is not None else _deliver_each(tuple(group)))
    return tuple(senders)


def _deliver_each(peers: tuple[Peer, ...]) -> Callable[[bytes], int]:
    def send(frame: bytes) -> int:
        sent = 0
        for peer in peers:
            if peer.deliver(frame):
                sent += 1
        return sent
    return send


def event_message(channel_head: bytes, event: Event) -> bytes:
    """{"op":"event","channel","epoch","offset","type","data"} spliced from a payload {"type","data"}."""
    payload = event.payload
    if payload.startswith(EVENT_PAYLOAD_HEAD):
        return b"".join((channel_head, str(event.offset).encode(), b",", memoryview(payload)[1:]))
    body = orjson.loads(payload)  # published by someone else's code: re-encode, same shape
    return b"".join((channel_head, str(event.offset).encode(), b",", orjson.dumps(
        {"type": body.get("type"), "data": body.get("data")})[1:]))


def channel_head(channel: str, epoch: str) -> bytes:
    return b'{"op":"event","channel":' + orjson.dumps(channel) + b',"epoch":' + orjson.dumps(epoch) + b',"offset":'


class _Channel:
    """This process's peers of one channel. A peer is `joining` while its reply is prepared (live events
    wait in its buffer), then `behind` while the bus has not yet brought this process up to what the
    reply and replay already sent it (events up to that offset are skipped), then `live`."""

    def __init__(self, name: str, metrics: Metrics) -> None:
        self.name, self.metrics = name, metrics
        self.live: set[Peer] = set()
        self.joining: dict[Peer, list[tuple[str, int, bytes]]] = {}
        self.behind: dict[Peer, tuple[str, int]] = {}
        self.seen: tuple[str, int] = ("", -1)  # (epoch, offset) of the last event the bus brought
        self._targets: tuple[Callable[[bytes], int], ...] | None = None  # senders_of(live), when current
        self._head: tuple[str, bytes] = ("", b"")

    def __bool__(self) -> bool:
        return bool(self.live or self.joining or self.behind)

    def peers(self) -> list[Peer]:
        return [*self.live, *self.joining, *self.behind]

    def message(self, event: Event) -> bytes:
        epoch, head = self._head
        if epoch != event.epoch:
            head = channel_head(self.name, event.epoch)
            self._head = (event.epoch, head)
        return event_message(head, event)

    def on_event(self, event: Event) -> None:
        """Bus listener (plain function: runs inline, in offset order): build once, hand to every peer."""
        self.seen = (event.epoch, event.offset)
        frame = self.message(event)
        for buffered in self.joining.values():
            buffered.append((event.epoch, event.offset, frame))
        targets = self._targets
        if targets is None:
            targets = self._targets = senders_of(self.live)
        sent = 0
        for send in targets:
            sent += send(frame)
        if self.behind:
            sent += self._release_behind(event, frame)
        self.metrics.ws_frames.inc(sent)

    def _release_behind(self, event: Event, frame: bytes) -> int:
        sent = 0
        for peer, (epoch, last) in list(self.behind.items()):
            if epoch == event.epoch and event.offset < last:
                continue
            if epoch != event.epoch or event.offset > last:
                sent += peer.deliver(frame)
            del self.behind[peer]
            self._go_live(peer)
        return sent

    def join(self, peer: Peer) -> None:
        self.discard(peer)
        self.joining[peer] = []

    def admit(self, peer: Peer, reply: dict, missed: list[Event]) -> None:
        """Reply, then the replayed events, then live events that came meanwhile and were not replayed."""
        buffered = self.joining.pop(peer)
        epoch, last = reply["epoch"], missed[-1].offset if missed else reply["offset"]
        frames = [orjson.dumps(reply)] + [self.message(event) for event in missed]
        for event_epoch, offset, frame in buffered:
            if event_epoch != epoch or offset > last:
                frames.append(frame)
                epoch, last = event_epoch, offset
        self.metrics.ws_frames.inc(sum(1 for frame in frames if peer.deliver(frame)))
        if self.seen[0] == epoch and self.seen[1] >= last:
            self._go_live(peer)
        else:  # what we sent came from history: the bus has yet to bring it here
            self.behind[peer] = (epoch, last)

    def _go_live(self, peer: Peer) -> None:
        self.live.add(peer)
        self._targets = None

    def discard(self, peer: Peer) -> None:
        self.joining.pop(peer, None)
        self.behind.pop(peer, None)
        if peer in self.live:
            self.live.discard(peer)
            self._targets = None


class Hub:
    def __init__(self, config: Config, bus: Bus, kv: KV, index: Index, boards: Boards, users: Users,
                 clock: Clock, metrics: Metrics) -> None:
        self.config, self.bus, self.kv, self.index = config, bus, kv, index
        self.boards, self.users, self.clock, self.metrics = boards, users, clock, metrics
        self.interval_ms = config.broadcast.interval_ms
        self._channels: dict[str, _Channel] = {}
        self._peers: dict[Peer, set[str]] = {}
        self._sessions: dict[str, set[Peer]] = {}  # session id -> its authenticated connections here
        self._session_of: dict[Peer, str] = {}
        self._expiries: dict[Peer, asyncio.TimerHandle] = {}  # authenticated connections: token expiry
        self._boundaries: dict[str, asyncio.TimerHandle] = {}  # board -> its next period's start
        self._leased: set[str] = set()  # boards whose tick this process runs and has not released yet
        self._tasks: set[asyncio.Task] = set()
        self._token = uuid.uuid4().hex.encode()

    # ---- connections ----------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._peers)

    def attach(self, peer: Peer) -> None:
        self._peers.setdefault(peer, set())
        self.metrics.ws_connections.set(len(self._peers))

    def bind(self, peer: Peer, principal: Principal) -> None:
        """Remember whose session the connection speaks for, so revoking the session closes it; and close
        it 4001 when its token expires (past the leeway), as the next HTTP request would be refused. The
        clients refresh the token and reconnect, resuming each channel from its last offset."""
        if peer not in self._peers:
            return  # it closed while its token was being checked
        self._session_of[peer] = principal.session_id
        self._sessions.setdefault(principal.session_id, set()).add(peer)
        if principal.token_expires_s:
            expires_ms = (principal.token_expires_s + self.config.auth.leeway_s) * 1000
            delay_s = max(0.0, (expires_ms - self.clock.now_ms()) / 1000)
            self._expiries[peer] = asyncio.get_running_loop().call_later(delay_s, self._expire, peer)

    def _expire(self, peer: Peer) -> None:
        self.detach(peer)
        peer.close(UNAUTHORIZED_CLOSE, "token expired")

    def on_revoked(self, event: Event) -> None:
        """Bus listener (`REVOCATIONS_CHANNEL`): a session was revoked on some process; close its sockets."""
        session_id = orjson.loads(event.payload)["session_id"]
        for peer in list(self._sessions.get(session_id, ())):
            self.detach(peer)
            peer.close(UNAUTHORIZED_CLOSE, "session revoked")

    async def announce_revoked(self, session_id: str) -> None:
        await self.bus.publish(REVOCATIONS_CHANNEL, orjson.dumps({"session_id": session_id}))

    def detach(self, peer: Peer) -> None:
        """Forget the peer and all its subscriptions now; bus subscriptions left empty go in the background."""
        expiry = self._expiries.pop(peer, None)
        if expiry is not None:
            expiry.cancel()
        session_id = self._session_of.pop(peer, None)
        if session_id is not None:
            peers = self._sessions.get(session_id, set())
            peers.discard(peer)
            if not peers:
                self._sessions.pop(session_id, None)
        for channel in self._peers.pop(peer, ()):
            self._unsubscribe_later(channel, self._leave(peer, channel))
        self.metrics.ws_connections.set(len(self._peers))

    def peers(self, channel: str) -> list[Peer]:
        state = self._channels.get(channel)
        return [] if state is None else state.peers()

    async def authenticate(self, token: str) -> Principal:
        return await self.users.principal(token, allow_suspended=True)

    async def authenticate_header(self, authorization: str | None) -> Principal:
        return await self.users.authenticate(authorization, allow_suspended=True)

    # ---- subscriptions --------------------------------------------------------------------------

    async def subscribe(self, peer: Peer, channel: str, since: Any = None,
                        principal: Principal | None = None) -> dict:
        """Check access, then deliver to `peer` the `subscribed` reply and, when `since` can be
        recovered, the missed events; live events follow with neither gap nor duplicate. Returns the reply."""
        target = self._authorize(principal, channel)
        resume = _since(since)
        channels = self._peers.setdefault(peer, set())
        limit = self.config.websocket.max_subscriptions
        if channel not in channels and len(channels) >= limit:
            raise Forbidden(f"at most {limit} subscriptions per connection")
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel(channel, self.metrics)
        state.join(peer)
        channels.add(channel)
        try:
            await self.bus.subscribe(channel, state.on_event)
            reply, missed = await self._catch_up(channel, target, resume)
        except BaseException:
            channels.discard(channel)
            self._unsubscribe_later(channel, self._leave(peer, channel))
            raise
        if peer in state.joining:  # else the peer left while we waited
            state.admit(peer, reply, missed)
        if target[0] == "leaderboard":
            self._watch_period(target[1])
        return reply

    async def unsubscribe(self, peer: Peer, channel: str) -> None:
        channels = self._peers.get(peer)
        if channels is not None:
            channels.discard(channel)
        listener = self._leave(peer, channel)
        if listener is not None:
            await self.bus.unsubscribe(channel, listener)

    def _leave(self, peer: Peer, channel: str):
        """Drop the peer from the channel; returns the channel's bus listener when that emptied it."""
        state = self._channels.get(channel)
        if state is None:
            return None
        state.discard(peer)
        if state:
            return None
        del self._channels[channel]
        return state.on_event

    def _unsubscribe_later(self, channel: str, listener) -> None:
        if listener is not None:
            self._spawn(self.bus.unsubscribe(channel, listener))

    async def _catch_up(self, channel: str, target: tuple[str, str], resume: tuple[str, int] | None):
        if resume is not None:
            missed = await self.bus.history(channel, *resume)
            if missed is not None:
                offset = missed[-1].offset if missed else resume[1]
                return _reply(channel, resume[0], offset, True, None), missed
        # Position before snapshot: an event in between is both in the snapshot and sent, never lost.
        epoch, offset = await self.bus.position(channel)
        return _reply(channel, epoch, offset, False, await self._snapshot(target)), []

    def _authorize(self, principal: Principal | None, channel: str) -> tuple[str, str]:
        kind, arg = _parse_channel(channel)
        if kind == "leaderboard":
            if principal is None and not self.config.server.public_reads:
                raise Unauthorized("authenticate to read leaderboards")
            self.boards.board(arg)
            return kind, arg
        if principal is None:
            raise Forbidden("anonymous spectators may only subscribe to leaderboard channels")
        if principal.is_admin or (kind == "user" and int(arg) == principal.user_id):
            return kind, arg
        raise Forbidden(f"not allowed to subscribe to {channel}")

    async def _snapshot(self, target: tuple[str, str]) -> dict:
        kind, arg = target
        if kind == "leaderboard":
            page = orjson.loads((await self.boards.page(arg, 0, self.config.broadcast.top_n, None)).body)
            return {"board": page["board"], "period": page["period"], "entries": page["entries"]}
        if kind == "user":
            return {"boards": await self.boards.standings_of(int(arg))}
        return {}

    # ---- publishing -----------------------------------------------------------------------------

    async def publish(self, channel: str, type_: str, data: dict) -> Event:
        """Publish one event on a channel (every process's subscribers get it, and it enters history)."""
        return await self.bus.publish(channel, envelope(type_, data))

    async def publish_alert(self, type_: str, data: dict) -> Event:
        """An `admin:alerts` event: `flag` (anti-cheat flag raised or resolved) or `incident`."""
        if type_ not in ALERT_TYPES:
            raise ValueError(f"alert type must be one of {ALERT_TYPES}, got {type_!r}")
        return await self.publish(ALERTS, type_, data)

    def accepted_messages(self, event: dict) -> list[tuple[str, bytes]]:
        """`scores.accepted_messages` entry: the user's `score` event, published with the score event."""
        data = {"board": event["board"], "period": event["period"], "score": event["score"], "rank": event["rank"],
                "previous_rank": event["previous_rank"], "action_id": event["action_id"]}
        return [(f"user:{event['user_id']}", envelope("score", data))]

    async def on_accepted(self, event: dict) -> None:
        """`scores.accepted_listeners` entry: a top-N tick for the board."""
        try:
            await self._claim_tick(event["board"])
        except ScoreboardError as exc:
            log.warning("top-N tick after action %s not claimed: %s", event.get("action_id"), exc)
        except Exception:
            log.exception("top-N tick after action %s not claimed", event.get("action_id"))

    async def _claim_tick(self, board: str) -> None:
        if board in self._leased:  # our own tick has not released the lease yet: it will read after this
            return
        ttl = max(10 * self.interval_ms, 1000)
        if await self.kv.set_nx(f"hub:lease:{board}", self._token, self.clock.now_ms(), ttl):
            self._leased.add(board)
            self._spawn(self._tick(board))

    async def _tick(self, board: str) -> None:
        try:
            await asyncio.sleep(self.interval_ms / 1000)
        finally:
            self._leased.discard(board)
        try:
            await self.kv.delete(f"hub:lease:{board}")
            await self.refresh(board)
        except ScoreboardError as exc:
            log.warning("top-N tick for board %s failed: %s", board, exc)

    async def refresh(self, name: str) -> None:
        """One tick: read the board once, publish `rank` events to moved users and `top` if it changed."""
        board = self.boards.board(name)
        period = self.boards.period(board, None)
        key = await self.boards.ensure_loaded(board, period)
        depth = self.config.broadcast.rank_notify_depth
        entries = await self.index.page(key, board.order, 0, max(self.config.broadcast.top_n, depth))
        if depth > 0:
            await self._publish_ranks(board, period, key, entries[:depth])
        await self._publish_top(board.name, period, entries[:self.config.broadcast.top_n])

    def _watch_period(self, name: str) -> None:
        """While the board has subscribers here, tick at each period start: they see the new (empty) top
        at the reset, not at its first submission. Re-armed at most every hour, so a moved clock is caught."""
        reset = self.boards.board(name).reset
        if name in self._boundaries or reset == "never" or not self._channels.get(f"leaderboard:{name}"):
            return
        now = self.clock.now_ms()
        delay_ms = min(max(periods.next_boundary_ms(reset, now) - now, 50), 3_600_000)
        self._boundaries[name] = asyncio.get_running_loop().call_later(delay_ms / 1000, self._at_boundary, name)

    def _at_boundary(self, name: str) -> None:
        del self._boundaries[name]
        self._spawn(self._claim_tick(name))  # the tick publishes only if the top changed (a new period did)
        self._watch_period(name)

    async def _publish_top(self, board: str, period: str, entries: list[Ranked]) -> None:
        data = {"board": board, "period": period, "entries": [
            {"rank": e.rank, "user_id": e.user_id, "username": e.username, "score": e.score} for e in entries]}
        payload = envelope("top", data)
        digest, key, now = hashlib.blake2b(payload, digest_size=16).digest(), f"hub:top:{board}", self.clock.now_ms()
        if await self.kv.get(key, now) == digest:
            return
        await self.bus.publish(f"leaderboard:{board}", payload)
        await self.kv.set(key, digest, now)

    async def _publish_ranks(self, board: BoardConfig, period: str, key: str, entries: list[Ranked]) -> None:
        current = [[e.user_id, e.rank, e.score] for e in entries]
        store_key, now = f"hub:ranks:{board.name}", self.clock.now_ms()
        raw = await self.kv.get(store_key, now)
        await self.kv.set(store_key, orjson.dumps({"period": period, "ranks": current}), now)
        previous = orjson.loads(raw) if raw else None
        if previous is None or previous["period"] != period:
            return
        moved, dropped = moved_ranks(previous["ranks"], current)
        for user_id, old_rank, old_score in dropped:
            found = await self.index.rank(key, board.order, user_id)
            if found is not None and found[1] == old_score and found[0] != old_rank:
                moved.append((user_id, found[0], old_rank))
        for user_id, rank, previous_rank in moved:
            await self.publish(f"user:{user_id}", "rank", {"board": board.name, "period": period, "rank": rank,
                                                           "previous_rank": previous_rank})

    # ---- lifecycle ------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("hub background task failed: %r", task.exception())

    async def close(self) -> None:
        """Cancel ticks and close every connection with 1001 (going away). The bus closes after."""
        for timer in self._boundaries.values():
            timer.cancel()
        self._boundaries.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for peer in list(self._peers):
            peer.close(GOING_AWAY, "server shutting down")
        self._peers.clear()
        self._channels.clear()


def moved_ranks(previous: list[list[int]], current: list[list[int]]):
    """Compare two [user_id, rank, score] pages. Returns (moved, dropped): moved = [(user_id, rank,
    previous_rank)] for users on both pages whose rank changed but score did not; dropped = the previous
    rows of users no longer on the page."""
    now = {user_id: (rank, score) for user_id, rank, score in current}
    moved, dropped = [], []
    for user_id, old_rank, old_score in previous:
        found = now.get(user_id)
        if found is None:
            dropped.append((user_id, old_rank, old_score))
        elif found[1] == old_score and found[0] != old_rank:
            moved.append((user_id, found[0], old_rank))
    return moved, dropped


def _parse_channel(channel: str) -> tuple[str, str]:
    kind, sep, arg = channel.partition(":")
    if kind == "leaderboard" and sep and arg:
        return kind, arg
    if kind == "user" and USER_ID_RE.fullmatch(arg) and int(arg) <= USER_ID_MAX:
        return kind, arg
    if channel == ALERTS:
        return "admin", "alerts"
    raise InvalidRequest(f"unknown channel {channel!r}: use leaderboard:{{board}}, user:{{user_id}} or {ALERTS}",
                         field="channel")


def _since(value: Any) -> tuple[str, int] | None:
    if value is None:
        return None
    epoch = value.get("epoch") if isinstance(value, dict) else None
    offset = value.get("offset") if isinstance(value, dict) else None
    if not isinstance(epoch, str) or isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidRequest("since must be {\"epoch\": string, \"offset\": integer >= 0}", field="since")
    return epoch, offset


def _reply(channel: str, epoch: str, offset: int, recovered: bool, snapshot: dict | None) -> dict:
    return {"op": "subscribed", "channel": channel, "epoch": epoch, "offset": offset, "recovered": recovered,
            "snapshot": snapshot}


def envelope(type_: str, data: dict) -> bytes:
    """A channel event as subscribers receive it: its type and its data."""
    return orjson.dumps({"type": type_, "data": data})
