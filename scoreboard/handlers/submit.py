"""`POST /scores/update` on Tornado's HTTP layer, without a RequestHandler.

Submissions are the hot path: a RequestHandler (routing, header bookkeeping, flow control, its own
futures) costs about as much CPU as the submission logic itself. This delegate reads the body with the
same limits as BaseHandler, runs `Scores.submit`, and writes one response, with errors rendered by the
same `base.error_response`. Every other request, and any other method on this path, goes to the
tornado.web.Application unchanged (`Dispatcher`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tornado import httputil

from .. import wire
from ..errors import PayloadTooLarge, ScoreboardError
from ..users import ClientInfo
from .base import BoundedBody, error_response, request_id_for

log = logging.getLogger("scoreboard.http")
SUBMIT_PATH = "/scores/update"
ROUTE = "scores.update"


class Dispatcher(httputil.HTTPServerConnectionDelegate):
    """Hands signed submissions to `SubmitMessage` and everything else to the web application."""

    def __init__(self, app: Any, web_app: httputil.HTTPServerConnectionDelegate) -> None:
        self.app, self.web_app = app, web_app
        self.answering: set[asyncio.Task] = set()  # the event loop keeps only weak references to tasks

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _Undecided(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.web_app.on_close(server_conn)


class _Undecided(httputil.HTTPMessageDelegate):
    """Chooses the delegate once the start line is known, then forwards everything to it."""

    def __init__(self, dispatcher: Dispatcher, server_conn: object, request_conn: httputil.HTTPConnection) -> None:
        self.dispatcher, self.server_conn, self.request_conn = dispatcher, server_conn, request_conn
        self.target: httputil.HTTPMessageDelegate | None = None

    def headers_received(self, start_line, headers: httputil.HTTPHeaders):
        if start_line.method == "POST" and start_line.path.partition("?")[0] == SUBMIT_PATH:
            self.target = SubmitMessage(self.dispatcher.app, self.request_conn, self.dispatcher.answering)
        else:
            self.target = self.dispatcher.web_app.start_request(self.server_conn, self.request_conn)
        return self.target.headers_received(start_line, headers)

    def data_received(self, chunk: bytes):
        return self.target.data_received(chunk)

    def finish(self) -> None:
        self.target.finish()

    def on_connection_close(self) -> None:
        if self.target is not None:
            self.target.on_connection_close()


class SubmitMessage(httputil.HTTPMessageDelegate):
    def __init__(self, app: Any, connection: httputil.HTTPConnection, answering: set[asyncio.Task]) -> None:
        self.app, self.connection, self.answering = app, connection, answering
        self.started = time.perf_counter()
        self.max_body = app.config.server.max_body_bytes
        self.body = BoundedBody(self.max_body)
        self.closed = False
        self.answered = False

    def headers_received(self, start_line, headers: httputil.HTTPHeaders) -> None:
        self.path, self.headers = start_line.path, headers
        self.request_id = request_id_for(headers.get("X-Request-Id"))
        # Read now: with server.xheaders the forwarded address is the connection's only until finish().
        self.address = self.connection.context.remote_ip or ""
        # Past the limit the body is read and dropped; past 64x it is not read at all.
        self.connection.set_max_body_size(self.max_body * 64)
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            # Answered at once, as BaseHandler.prepare does; Tornado closes the connection afterwards.
            self.answered = True
            self._respond(*error_response(413, PayloadTooLarge(f"body over {self.max_body} bytes"),
                                          self.request_id))

    def data_received(self, chunk: bytes) -> None:
        self.body.add(chunk)

    def finish(self) -> None:
        if not self.answered:
            self.answered = True
            task = asyncio.ensure_future(self._answer())
            self.answering.add(task)
            task.add_done_callback(self.answering.discard)

    def on_connection_close(self) -> None:
        # The submission goes on (a commit must not be cut in half); only its answer has nowhere to go.
        self.closed = True

    async def _answer(self) -> None:
        try:
            status, headers, body = 200, {}, wire.dumps(await self._submit())
        except Exception as exc:
            if not isinstance(exc, ScoreboardError):
                log.exception("submission failed", extra={"fields": {"request_id": self.request_id}})
            self.app.metrics.count_submission(getattr(exc, "code", "error"))
            status, headers, body = error_response(500, exc, self.request_id)
        self._respond(status, headers, body)

    async def _submit(self) -> dict:
        raw_body = self.body.content()
        headers = self.headers
        client = ClientInfo(self.address, headers.get("User-Agent", "")[:256], self.request_id)
        result = await self.app.scores.submit(raw_body, headers.get("X-Signature"),
                                              headers.get("Authorization"), client)
        self.app.metrics.count_submission("duplicate" if result["duplicate"] else "accepted")
        return result

    def _respond(self, status: int, headers: dict[str, str], body: bytes) -> None:
        seconds = time.perf_counter() - self.started
        self.app.metrics.observe_request(ROUTE, status, seconds)
        self.app.log_access("POST", self.path, status, seconds, self.request_id)
        if self.closed:
            return
        headers = httputil.HTTPHeaders({"Content-Type": "application/json", "Cache-Control": "no-store",
                                        **headers, "X-Request-Id": self.request_id,
                                        "Content-Length": str(len(body))})
        start = httputil.ResponseStartLine("HTTP/1.1", status, httputil.responses.get(status, "Unknown"))
        self.connection.write_headers(start, headers, body)
        self.connection.finish()
