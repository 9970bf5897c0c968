"""The baseline of `bench.submit`: the smallest Tornado server that answers a POST with a small JSON body.

`python -m bench.hello --port N [--uvloop]`. Same Tornado, same HTTP/1.1 keep-alive path, no work: the
ceiling that one Python process on this machine can reach, against which the scoreboard is compared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import tornado.web

from scoreboard.config import ServerConfig

BODY = b'{"accepted": true, "duplicate": false}'


class Hello(tornado.web.RequestHandler):
    def post(self, *_args) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(BODY)

    def get(self, *_args) -> None:  # the readiness probe
        self.finish(b'{"status": "ok"}')


async def serve(port: int) -> None:
    app = tornado.web.Application([(r"/.*", Hello)])
    server = app.listen(port, "127.0.0.1")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--cpu", default="", help="pin to these CPUs (comma-separated), as server.cpu_affinity does")
    args = parser.parse_args()
    if args.cpu:  # parsed as server.cpu_affinity is; only the small config module, not the app, is imported
        os.sched_setaffinity(0, ServerConfig(cpu_affinity=args.cpu).cpus)
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
