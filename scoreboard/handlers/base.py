"""The one place errors are rendered, request ids assigned and bodies bounded."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import tornado.web

from .. import wire
from ..errors import InvalidRequest, NotFound, PayloadTooLarge, ScoreboardError
from ..ids import random_hex
from ..users import ClientInfo, Principal

log = logging.getLogger("scoreboard.http")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
TORNADO_CODES = {400: InvalidRequest, 404: NotFound, 405: InvalidRequest, 413: PayloadTooLarge}


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """Bodies are streamed so an oversized one is refused with a 413 body instead of a dropped connection."""

    route = "other"

    def initialize(self, app: Any) -> None:
        self.app = app
        self.started = time.perf_counter()
        self.body = BoundedBody(app.config.server.max_body_bytes)

    @property
    def max_body(self) -> int:
        return self.app.config.server.max_body_bytes

    def prepare(self) -> None:
        self.request_id = request_id_for(self.request.headers.get("X-Request-Id"))
        self.set_header("X-Request-Id", self.request_id)
        self.set_header("Cache-Control", "no-store")
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise PayloadTooLarge(f"body over {self.max_body} bytes")
        # Past the limit the body is read and dropped; past 64x it is not read at all.
        self.request.connection.set_max_body_size(self.max_body * 64)

    def data_received(self, chunk: bytes) -> None:
        self.body.add(chunk)

    @property
    def raw_body(self) -> bytes:
        return self.body.content()

    def json_body(self) -> dict:
        return wire.loads_object(self.raw_body)

    def client_info(self) -> ClientInfo:
        return ClientInfo(self.request.remote_ip or "", self.request.headers.get("User-Agent", "")[:256],
                          self.request_id)

    async def principal(self, allow_suspended: bool = False) -> Principal:
        return await self.app.users.authenticate(self.request.headers.get("Authorization"), allow_suspended)

    def send_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(wire.dumps(value))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if not hasattr(self, "request_id"):
            self.request_id = request_id_for(None)
        # send_error() cleared the headers prepare() set, so the id goes on again here.
        status, headers, body = error_response(status_code, exc_info[1] if exc_info else None, self.request_id)
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.finish(body)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, ScoreboardError | tornado.web.HTTPError):
            return  # expected refusals are logged once by the access log with their status
        super().log_exception(typ, value, tb)

    def on_finish(self) -> None:
        self.app.metrics.observe_request(self.route, self.get_status(), time.perf_counter() - self.started)


class BoundedBody:
    """A request body arriving in chunks: kept up to `limit` bytes; past that, read and dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.received = 0
        self.too_large = False

    def add(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limit:
            self.too_large = True
            self.chunks.clear()
        elif not self.too_large:
            self.chunks.append(chunk)

    def content(self) -> bytes:
        if self.too_large:
            raise PayloadTooLarge(f"body over {self.limit} bytes")
        return b"".join(self.chunks)


def request_id_for(incoming: str | None) -> str:
    """The client's X-Request-Id when it is a sane token, else a fresh one."""
    return incoming if incoming and REQUEST_ID_RE.fullmatch(incoming) else random_hex(128)


def error_response(status_code: int, exc: BaseException | None, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the PROTOCOL error for an exception (or a bare Tornado status)."""
    error = _as_protocol_error(status_code, exc)
    headers = {**error.headers(), "X-Request-Id": request_id, "Content-Type": "application/json",
               "Cache-Control": "no-store"}
    return error.status, headers, wire.dumps(error.body(request_id))


def _as_protocol_error(status_code: int, exc: BaseException | None) -> ScoreboardError:
    if isinstance(exc, ScoreboardError):
        return exc
    if isinstance(exc, tornado.web.HTTPError):
        status_code = exc.status_code
    cls = TORNADO_CODES.get(status_code)
    if cls is not None:
        return cls(_tornado_message(status_code, exc))
    return ScoreboardError("internal server error")


def _tornado_message(status_code: int, exc: Any) -> str:
    if status_code == 405:
        return "method not allowed"
    if status_code == 404:
        return "no such endpoint"
    reason = getattr(exc, "log_message", None) or getattr(exc, "reason", None)
    return str(reason or "bad request")


class NotFoundHandler(BaseHandler):
    route = "unknown"

    def prepare(self) -> None:
        super().prepare()
        raise NotFound("no such endpoint")
