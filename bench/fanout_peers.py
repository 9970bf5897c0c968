"""The baselines of `bench.fanout`: the smallest fan-out servers, one per process.

`python -m bench.fanout_peers --kind tornado|websockets --port N --size BYTES`

- `tornado`: a `tornado.websocket.WebSocketHandler` per subscriber (GET /ws) and, per event, the plain
  loop `for c in subscribers: c.write_message(message)` (a str: a text frame, framed per connection).
- `websockets`: the `websockets` library's asyncio server (`websockets.asyncio.server.serve`) and, per
  event, `websockets.broadcast(subscribers, message)`.

Both have their library defaults otherwise (tornado: no pings; websockets: ping every 20 s, no
compression offered by the load generator). TCP_NODELAY is on in both, as in the scoreboard (asyncio
transports set it themselves; tornado's handler sets it in open()). The trigger is one more WebSocket
connection (GET /pub) on which the load generator sends the event number as a text message; the
message sent to every subscriber carries that number in `seq` and is padded to `--size` bytes, the size
of the scoreboard's `top` event message measured in the same run. GET /healthz answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal

HEAD = '{"op":"event","channel":"leaderboard:global","type":"top","seq":'


def message(seq: int, size: int) -> str:
    """A JSON message of exactly `size` bytes (when size allows) carrying `seq`."""
    head = f'{HEAD}{seq},"pad":"'
    return head + "x" * max(0, size - len(head) - 2) + '"}'


def raise_nofile(want: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve_tornado(port: int, size: int, stopping: asyncio.Event) -> None:
    import tornado.web
    import tornado.websocket

    subscribers: set[tornado.websocket.WebSocketHandler] = set()

    class Subscriber(tornado.websocket.WebSocketHandler):
        def open(self) -> None:
            self.set_nodelay(True)
            subscribers.add(self)

        def on_close(self) -> None:
            subscribers.discard(self)

    class Publisher(tornado.websocket.WebSocketHandler):
        def on_message(self, data: str | bytes) -> None:
            msg = message(int(data), size)
            for conn in subscribers:
                try:
                    conn.write_message(msg)
                except tornado.websocket.WebSocketClosedError:
                    pass

    class Health(tornado.web.RequestHandler):
        def get(self) -> None:
            self.finish(b'{"status": "ok"}')

    app = tornado.web.Application([(r"/ws", Subscriber), (r"/pub", Publisher), (r"/healthz", Health)])
    server = app.listen(port, "127.0.0.1")
    await stopping.wait()
    server.stop()


async def serve_websockets(port: int, size: int, stopping: asyncio.Event) -> None:
    from websockets.asyncio.server import broadcast, serve

    subscribers: set = set()

    async def handler(ws) -> None:
        if ws.request.path == "/pub":
            async for data in ws:
                broadcast(subscribers, message(int(data), size))
            return
        subscribers.add(ws)
        try:
            await ws.wait_closed()
        finally:
            subscribers.discard(ws)

    def process_request(connection, request):
        if request.path == "/healthz":
            return connection.respond(200, '{"status": "ok"}\n')
        return None

    async with serve(handler, "127.0.0.1", port, process_request=process_request, compression=None):
        await stopping.wait()


async def serve(kind: str, port: int, size: int) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await (serve_tornado if kind == "tornado" else serve_websockets)(port, size, stopping)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["tornado", "websockets"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args()
    raise_nofile()
    asyncio.run(serve(args.kind, args.port, args.size))


if __name__ == "__main__":
    main()
