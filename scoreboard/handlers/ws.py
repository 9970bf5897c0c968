"""GET /ws: the WebSocket transport of the realtime hub (PROTOCOL "Realtime: GET /ws").

Thin: auth, one op per client message, limits; channels and events are the hub's. Outgoing messages
skip tornado's per-message framing: each message becomes one complete WebSocket frame (FIN + text,
unmasked, no compression), built once per message object (the hub hands the same bytes object to every
peer of an event) and written as is: straight to the socket with one send() while nothing is queued
(plain TCP), else appended to the connection's IOStream, whose write future is not awaited. A
connection whose unsent bytes would pass `websocket.max_buffer_bytes` is closed 4008 instead.

Where PROTOCOL is silent: `{"op": "auth"}` is accepted only as the first message and within
`websocket.auth_timeout_s` of the upgrade (later, or after a Bearer upgrade: `invalid_request`, the
connection stays open); a connection with no auth stays an anonymous spectator. `unsubscribe` is
answered `{"op": "unsubscribed", "channel"}` (also when it was not subscribed). Error frames carry
`channel` when the failing message named one. Over `websocket.max_messages_per_s` (token bucket,
burst of the same size) -> close 4029; a refused auth -> error frame `unauthorized`, then close 4001.
Too many connections on this process -> the upgrade is refused with 503 `unavailable`.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

import orjson
import tornado.iostream
import tornado.websocket

from .. import wire
from ..errors import InvalidRequest, ScoreboardError, Unauthorized, Unavailable
from .base import request_id_for

# 4003 (forbidden) is never used: an ACL refusal is an error frame and the connection stays open.
CLOSE_UNAUTHORIZED, CLOSE_TOO_SLOW, CLOSE_RATE_LIMITED = 4001, 4008, 4029
PONG = b'{"op":"pong"}'


def text_frame(message: bytes) -> bytes:
    """One unmasked, unfragmented, uncompressed text frame (RFC 6455 5.2), as a server sends it."""
    size = len(message)
    if size < 126:
        return bytes((0x81, size)) + message
    if size < 0x10000:
        return struct.pack("!BBH", 0x81, 126, size) + message
    return struct.pack("!BBQ", 0x81, 127, size) + message


class _LastFrame:
    """Remembers the frame of the last message: a fan-out asks for the same bytes object N times in a row."""

    def __init__(self) -> None:
        self.pair = (b"", text_frame(b""))

    def of(self, message: bytes) -> bytes:
        pair = self.pair  # one read: another server thread in this process may swap it meanwhile
        if pair[0] is message:
            return pair[1]
        frame = text_frame(message)
        self.pair = (message, frame)
        return frame


_frames = _LastFrame()


class WebSocketHandler(tornado.websocket.WebSocketHandler):
    def initialize(self, app: Any) -> None:
        self.app, self.hub, self.limits = app, app.hub, app.config.websocket
        self.principal = None
        self.out = None
        self.direct = False
        self.received = 0
        self.tokens = float(self.limits.max_messages_per_s)
        self.refilled = self.opened = time.monotonic()
        self.request_id = request_id_for(None)

    # ---- upgrade --------------------------------------------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        try:
            if self.hub.connections >= self.limits.max_connections:
                raise Unavailable("this server has no room for more connections; retry later")
            header = self.request.headers.get("Authorization")
            if header is not None:
                self.principal = await self.hub.authenticate_header(header)
        except ScoreboardError as exc:
            self._refuse(exc)
            return
        await super().get(*args, **kwargs)

    def _refuse(self, error: ScoreboardError) -> None:
        self.set_status(error.status)
        for name, value in error.headers().items():
            self.set_header(name, value)
        self.set_header("X-Request-Id", self.request_id)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(wire.dumps(error.body(self.request_id)))

    def check_origin(self, origin: str) -> bool:
        return True  # no cookies: a connection only gets rights from a token it presents itself

    def get_compression_options(self) -> None:
        return None  # frames are prebuilt once for every connection: no per-connection deflate

    @property
    def max_message_size(self) -> int:
        return self.app.config.server.max_body_bytes

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.out = self.ws_connection.stream
        self.direct = type(self.out) is tornado.iostream.IOStream  # plain TCP: TLS goes through IOStream
        self.opened = self.refilled = time.monotonic()
        self.set_nodelay(True)
        self.hub.attach(self)
        if self.principal is not None:
            self.hub.bind(self, self.principal)

    def on_close(self) -> None:
        self.hub.detach(self)

    # ---- Peer -----------------------------------------------------------------------------------

    def deliver(self, frame: bytes) -> bool:
        out = self.out
        if out is None or self.ws_connection is None or out.closed():
            return False
        data = _frames.of(frame)
        # IOStream's own counters: bytes handed to write() minus bytes the socket took.
        pending = out._total_write_index - out._total_write_done_index
        if pending + len(data) > self.limits.max_buffer_bytes:
            self.app.metrics.ws_slow_closed.inc()
            self._cut(CLOSE_TOO_SLOW, "too slow: fell too far behind")
            return False
        if pending == 0 and self.direct:
            # Nothing queued: one send() straight to the socket, without IOStream's future and bookkeeping.
            try:
                sent = out.socket.send(data)
            except OSError:
                sent = 0  # would block, or a dead peer: IOStream's write below retries and handles the error
            if sent == len(data):
                return True
            if sent:
                data = memoryview(data)[sent:]
        out.write(data)  # the future is not awaited; IOStream consumes its exception itself
        return True

    @classmethod
    def fanout(cls, peers: list[WebSocketHandler]) -> Callable[[bytes], int]:
        """The hub's sender for a group of live peers (`hub.Peer`): `deliver` to each, with its per-peer
        work cut to the socket write. Plain-TCP peers are kept as (IOStream, socket.send) pairs; one whose
        stream has bytes queued, or whose send() fails (would block, closed), takes `deliver`'s path."""
        direct, others, by_stream = [], [], {}
        for peer in peers:
            out = peer.out
            if peer.direct and out is not None and out.socket is not None:
                direct.append((out, out.socket.send))
                by_stream[out] = peer
            else:
                others.append(peer)
        direct_pairs, other_peers = tuple(direct), tuple(others)
        limit = peers[0].limits.max_buffer_bytes if peers else 0

        def send(message: bytes) -> int:
            data = _frames.of(message)
            size = len(data)
            sent = 0
            if size > limit:  # too big for any buffer: deliver cuts each peer off (4008)
                return sum(1 for peer in (*by_stream.values(), *other_peers) if peer.deliver(message))
            for out, send_now in direct_pairs:
                if out._total_write_index == out._total_write_done_index:  # nothing queued (see deliver)
                    try:
                        done = send_now(data)
                    except OSError:
                        done = -1
                    if done == size:
                        sent += 1
                        continue
                    if done > 0:
                        out.write(memoryview(data)[done:])
                        sent += 1
                        continue
                if by_stream[out].deliver(message):
                    sent += 1
            for peer in other_peers:
                if peer.deliver(message):
                    sent += 1
            return sent
        return send

    def _send(self, message: bytes) -> None:
        if self.deliver(message):
            self.app.metrics.ws_frames.inc()

    def _cut(self, code: int, reason: str) -> None:
        self.hub.detach(self)
        self.close(code, reason)

    # ---- client messages ------------------------------------------------------------------------

    async def on_message(self, message: str | bytes) -> None:
        if self.ws_connection is None:
            return  # we closed it; tornado still reads until the peer answers the close
        if not self._allowed():
            self._cut(CLOSE_RATE_LIMITED, "rate limited")
            return
        self.received += 1
        body: dict = {}
        try:
            body = _parse(message)
            op = self.OPS.get(body["op"])
            if op is None:
                raise InvalidRequest(f"unknown op {body['op']!r}", field="op")
            await op(self, body)
        except ScoreboardError as exc:
            self._send_error(exc, body)
            if isinstance(exc, Unauthorized) and body.get("op") == "auth":
                self._cut(CLOSE_UNAUTHORIZED, "unauthorized")

    def _allowed(self) -> bool:
        now, rate = time.monotonic(), self.limits.max_messages_per_s
        self.tokens = min(float(rate), self.tokens + (now - self.refilled) * rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def _send_error(self, error: ScoreboardError, body: dict) -> None:
        frame = {"op": "error", "code": error.code, "message": error.message}
        if isinstance(body.get("channel"), str):
            frame["channel"] = body["channel"]
        self._send(orjson.dumps(frame))

    async def _auth(self, body: dict) -> None:
        if self.principal is not None:
            raise InvalidRequest("this connection is already authenticated")
        if self.received != 1 or time.monotonic() - self.opened > self.limits.auth_timeout_s:
            raise InvalidRequest(f"auth must be the first message, within {self.limits.auth_timeout_s} s")
        self.principal = await self.hub.authenticate(wire.field(body, "token", str))
        self.hub.bind(self, self.principal)
        self._send(orjson.dumps({"op": "authed", "user_id": self.principal.user_id, "role": self.principal.role}))

    async def _subscribe(self, body: dict) -> None:
        channel = wire.field(body, "channel", str)
        await self.hub.subscribe(self, channel, wire.field(body, "since", dict, required=False), self.principal)

    async def _unsubscribe(self, body: dict) -> None:
        channel = wire.field(body, "channel", str)
        await self.hub.unsubscribe(self, channel)
        self._send(orjson.dumps({"op": "unsubscribed", "channel": channel}))

    async def _ping(self, body: dict) -> None:
        self._send(PONG)

    OPS = {"auth": _auth, "subscribe": _subscribe, "unsubscribe": _unsubscribe, "ping": _ping}


def _parse(message: str | bytes) -> dict:
    if isinstance(message, bytes):
        raise InvalidRequest("messages must be text frames holding one JSON object")
    body = wire.loads_object(message.encode())
    if not isinstance(body.get("op"), str):
        raise InvalidRequest("missing field: op", field="op")
    return body
