"""A client that stops reading is closed 4008 before it costs memory; the others keep receiving."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

from wsclient import Ws, run

MAX_BUFFER = 65_536
BLOB = "x" * 60_000  # one event is nearly the whole allowance


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


def test_a_client_that_stops_reading_is_closed_4008_while_others_keep_receiving(server_factory):
    server = server_factory({"websocket": {"max_buffer_bytes": MAX_BUFFER}})
    hub, metrics = server.app.hub, server.app.metrics.registry

    async def pending() -> list[int]:
        return [p.out._total_write_index - p.out._total_write_done_index for p in hub.peers("leaderboard:global")]

    async def body():
        slow = RawClient(server.port)
        slow.send({"op": "subscribe", "channel": "leaderboard:global"})
        assert json.loads(slow.frame()[1])["op"] == "subscribed"
        reader = await Ws.open(server)
        await reader.subscribe("leaderboard:global")
        published = 0
        while metrics.get_sample_value("scoreboard_ws_slow_consumers_closed_total") == 0:
            assert published < 500, "the slow client was never cut off"
            await asyncio.to_thread(server.call, hub.publish("leaderboard:global", "top", {"n": published,
                                                                                           "blob": BLOB}))
            published += 1
            assert (await reader.event("top"))["data"]["n"] == published - 1
            assert max(await asyncio.to_thread(server.call, pending())) <= MAX_BUFFER
        assert len(hub.peers("leaderboard:global")) == 1  # the reader only
        await asyncio.to_thread(server.call, hub.publish("leaderboard:global", "top", {"n": published}))
        assert (await reader.event("top"))["data"] == {"n": published}
        assert await asyncio.to_thread(slow.close_code) == 4008
        slow.sock.close()
        reader.close()

    run(body())
