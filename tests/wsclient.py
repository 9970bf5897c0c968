"""A small WebSocket test client for GET /ws: every wait has a timeout, nothing sleeps and hopes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from harness import Http, Player

TIMEOUT = 5.0
PASSWORD = "correct horse battery"  # register_and_login's default


def run(coro) -> Any:
    """Run one async test body on a fresh loop, bounded as a whole."""
    return asyncio.run(asyncio.wait_for(coro, 45))


def ws_url(server) -> str:
    return server.url.replace("http", "ws", 1) + "/ws"


class Ws:
    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, server, token: str | None = None) -> Ws:
        """Connect; with `token` it goes as `Authorization: Bearer` on the upgrade."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = HTTPRequest(ws_url(server), headers=headers, connect_timeout=TIMEOUT, request_timeout=TIMEOUT)
        return cls(await websocket_connect(request))

    @classmethod
    async def authed(cls, server, player: Player) -> Ws:
        """Connect and authenticate with the first message."""
        ws = await cls.open(server)
        reply = await ws.call(op="auth", token=player.login["access_token"])
        assert reply == {"op": "authed", "user_id": player.user_id, "role": player.login["user"]["role"]}, reply
        return ws

    async def send(self, **message: Any) -> None:
        await self.conn.write_message(json.dumps(message))

    async def send_raw(self, text: str | bytes, binary: bool = False) -> None:
        await self.conn.write_message(text, binary=binary)

    async def recv(self, timeout: float = TIMEOUT) -> dict:
        message = await asyncio.wait_for(self.conn.read_message(), timeout)
        assert message is not None, f"closed: {self.conn.close_code} {self.conn.close_reason}"
        return json.loads(message)

    async def call(self, **message: Any) -> dict:
        await self.send(**message)
        return await self.recv()

    async def subscribe(self, channel: str, since: dict | None = None) -> dict:
        message: dict[str, Any] = {"op": "subscribe", "channel": channel}
        if since is not None:
            message["since"] = since
        reply = await self.call(**message)
        assert reply["op"] == "subscribed" and reply["channel"] == channel, reply
        return reply

    async def event(self, type_: str | None = None, timeout: float = TIMEOUT) -> dict:
        frame = await self.recv(timeout)
        assert frame["op"] == "event", frame
        if type_ is not None:
            assert frame["type"] == type_, frame
        return frame

    async def nothing_queued(self) -> None:
        """The server has queued nothing for us: a ping's pong is the very next frame."""
        assert await self.call(op="ping") == {"op": "pong"}

    async def close_code(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes; returns its close code."""
        while await asyncio.wait_for(self.conn.read_message(), timeout) is not None:
            pass
        return self.conn.close_code

    def close(self) -> None:
        self.conn.close()


def make_admin(server, http: Http, username: str) -> Player:
    users = server.app.users
    server.call(users.create_user(username, users.passwords.hash(PASSWORD), "admin"))
    login = http.post("/auth/login", {"username": username, "password": PASSWORD})
    assert login.status == 200, login.raw
    return Player(http, username, login=login.json)


async def submit(player: Player, points: int = 10, **fields: Any):
    """A signed submission off the event loop, so the WebSocket client keeps reading meanwhile."""
    response = await asyncio.to_thread(player.submit, points, **fields)
    assert response.status == 200, response.raw
    return response.json


async def events_out(server) -> None:
    """Wait until the in-process server has published the events of every submission it answered (they
    go out after the answer)."""
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(server.app.scores.events.flush(), server.loop))


class RawClient:
    """A hand-made WebSocket client over a socket with a tiny receive buffer, so the server's backs up."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: sets the window
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "connection closed"
        self.buffer += chunk

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def send(self, message: dict) -> None:
        payload, mask = json.dumps(message).encode(), os.urandom(4)
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes((0x81, 0x80 | len(payload))) + mask + masked)

    def frame(self) -> tuple[int, bytes]:
        first, second = self._take(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", self._take(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self._take(8))[0]
        return first & 0x0F, self._take(size)

    def close_code(self) -> int:
        """Read everything the server still had queued, up to its close frame."""
        while True:
            opcode, payload = self.frame()
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0]
