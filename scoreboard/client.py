"""An asyncio client for the scoreboard (PROTOCOL v1): HTTP calls, signed submissions, live WebSocket events.

A client library for bots, tests, tools and Python game servers. Unlike the server's use-case modules it
imports tornado (its HTTP and WebSocket clients); nothing in the server imports this module.

    client = ScoreboardClient("http://127.0.0.1:8000")
    await client.login("alice", "correct horse battery")
    result = await client.submit(300, duration_ms=41_250, level=3)   # {"accepted": True, "rank": 3, ...}

    live = client.live(on_event=print)        # authenticated with the client's token (refreshed as needed)
    await live.connect()
    await live.subscribe("leaderboard:global")
    await live.subscribe(f"user:{client.user['user_id']}")

Reconnection (PROTOCOL "Realtime"): exponential backoff with *equal jitter*. Attempt n (0-based) waits
b/2 + U(0, b/2) seconds with b = min(cap, start * factor**n): start 0.5 s, factor 2, cap 30 s, so the first
retry comes after 0.25-0.5 s and no wait exceeds 30 s. Equal jitter keeps a floor of half the step, so a
fleet of clients spreads out after a server restart without any of them retrying in a tight loop. Pass
`jitter="full"` for U(0, b) or `jitter="none"` for b exactly. The attempt counter resets once a new
connection has received its first frame. Every channel is resubscribed with the last `epoch`/`offset` seen.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.httpclient
import tornado.websocket

from .signing import sign

log = logging.getLogger("scoreboard.client")

SIGNED_PATH = "/scores/update"
STATUS_OF_CODE = {
    "invalid_request": 400, "unauthorized": 401, "bad_signature": 401, "stale_timestamp": 401,
    "forbidden": 403, "suspended": 403, "not_found": 404, "replay": 409, "action_conflict": 409,
    "out_of_sequence": 409, "payload_too_large": 413, "score_rejected": 422, "rate_limited": 429,
    "unavailable": 503,
}
CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_TOO_SLOW, CLOSE_RATE_LIMITED = 4001, 4003, 4008, 4029
REFRESH_MARGIN_S = 30.0

Callback = Callable[..., Awaitable[None] | None]


class ClientError(Exception):
    """A PROTOCOL error answer: HTTP `status`, stable `code`, human `message`, and `reason` for score_rejected.

    Transport failures (refused connection, timeout) are `NetworkError`, a subclass with status 0.
    """

    def __init__(self, status: int, code: str, message: str = "", reason: str | None = None, *,
                 retry_after: float | None = None, request_id: str | None = None, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" ({reason})" if reason else ""))
        self.status, self.code, self.message, self.reason = status, code, message, reason
        self.retry_after, self.request_id, self.body = retry_after, request_id, body


class NetworkError(ClientError):
    """The request did not get an HTTP answer; a submission may be retried with the very same bytes."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "network", message)


def sign_body(session_key: str, raw: bytes) -> str:
    """The X-Signature value for a /scores/update body: `v1=` + lowercase hex HMAC-SHA256."""
    return sign(session_key, raw, SIGNED_PATH)


def new_nonce() -> str:
    """24 characters of base64url (18 random bytes): inside PROTOCOL's 16-64."""
    return secrets.token_urlsafe(18)


def backoff_delay(attempt: int, start: float = 0.5, factor: float = 2.0, cap: float = 30.0,
                  jitter: str = "equal", rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based); see the module docstring."""
    step = min(cap, start * factor ** min(attempt, 64))
    if jitter == "full":
        return rand() * step
    if jitter == "equal":
        return step / 2 + rand() * step / 2
    if jitter == "none":
        return step
    raise ValueError(f"jitter must be 'equal', 'full' or 'none', not {jitter!r}")


def _error_from(response: tornado.httpclient.HTTPResponse) -> ClientError:
    body = _json_or_none(response.body)
    error = body.get("error") if isinstance(body, dict) else None
    retry = response.headers.get("Retry-After")
    if not isinstance(error, dict):
        return ClientError(response.code, "http_error", response.reason or "unexpected response", body=body,
                           retry_after=float(retry) if retry else None)
    return ClientError(response.code, str(error.get("code", "")), str(error.get("message", "")),
                       error.get("reason"), retry_after=float(retry) if retry else None,
                       request_id=error.get("request_id") or response.headers.get("X-Request-Id"), body=body)


def _json_or_none(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def _call(callback: Callback | None, *args: Any) -> None:
    """Run a user callback (plain or async); its failure is logged and never stops the client."""
    if callback is None:
        return
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("scoreboard client callback %r failed", callback)


# ---- HTTP -----------------------------------------------------------------------------------------


class ScoreboardClient:
    """One player's (or an anonymous reader's) HTTP session with a scoreboard server.

    Submissions of one client are sent one at a time: `seq` must reach the server in increasing order.
    Use one client per player; clients are cheap.
    """

    def __init__(self, base_url: str, *, http_client: tornado.httpclient.AsyncHTTPClient | None = None,
                 request_timeout: float = 30.0, clock_ms: Callable[[], int] | None = None,
                 user_agent: str = "scoreboard-client-py/1") -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http_client  # owned by the caller; by default tornado's shared per-loop client
        self.request_timeout = request_timeout
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.user_agent = user_agent
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.session_id: str | None = None
        self.session_key: str | None = None
        self.user: dict | None = None
        self.expires_at = 0.0  # time.monotonic() when the access token expires
        self.seq = 0
        self._submit_lock = asyncio.Lock()
        self._refresh_lock = asyncio.Lock()

    @property
    def http(self) -> tornado.httpclient.AsyncHTTPClient:
        if self._http is None:
            self._http = tornado.httpclient.AsyncHTTPClient()
        return self._http

    @property
    def logged_in(self) -> bool:
        return self.access_token is not None

    async def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                      headers: dict | None = None, auth: bool = False) -> Any:
        """One HTTP call; returns the parsed JSON answer (None for 204) or raises ClientError."""
        headers = {"User-Agent": self.user_agent, **(headers or {})}
        if auth:
            headers["Authorization"] = f"Bearer {await self.fresh_token()}"
        if raw is None and body is not None:
            raw = json.dumps(body, separators=(",", ":")).encode()
        if raw is not None:
            headers.setdefault("Content-Type", "application/json")
        request = tornado.httpclient.HTTPRequest(
            self.base_url + path, method=method, headers=headers, body=raw,
            allow_nonstandard_methods=True, request_timeout=self.request_timeout,
            connect_timeout=min(10.0, self.request_timeout))
        try:
            response = await self.http.fetch(request, raise_error=False)
        except (OSError, tornado.httpclient.HTTPClientError) as exc:
            raise NetworkError(f"{method} {path}: {exc}") from exc
        if response.code == 599:
            raise NetworkError(f"{method} {path}: {response.error}")
        if response.code >= 400:
            raise _error_from(response)
        return _json_or_none(response.body)

    # ---- auth ---------------------------------------------------------------------------------

    async def register(self, username: str, password: str) -> dict:
        return await self.request("POST", "/auth/register", {"username": username, "password": password})

    async def login(self, username: str, password: str) -> dict:
        """Open a session; stores the tokens, `session_key` and `user`, and restarts `seq` at 0."""
        answer = await self.request("POST", "/auth/login", {"username": username, "password": password})
        self._store_session(answer)
        self.seq = 0
        return answer

    async def refresh(self) -> dict:
        """Rotate the tokens (same session, same key, `seq` goes on). Only one refresh runs at a time."""
        if self.refresh_token is None:
            raise ClientError(401, "unauthorized", "not logged in")
        spent = self.refresh_token
        async with self._refresh_lock:
            if self.refresh_token != spent:  # another task refreshed while this one waited
                return {"access_token": self.access_token, "refresh_token": self.refresh_token}
            answer = await self.request("POST", "/auth/refresh", {"refresh_token": spent})
            self._store_session(answer)
            return answer

    async def fresh_token(self) -> str:
        """The access token, refreshed first when it expires within 30 s."""
        if self.access_token is None:
            raise ClientError(401, "unauthorized", "not logged in")
        if self.refresh_token and time.monotonic() > self.expires_at - REFRESH_MARGIN_S:
            await self.refresh()
        return self.access_token

    async def logout(self) -> None:
        """Revoke the session on the server and forget it here (even when the server call fails)."""
        if self.access_token is None:
            return
        try:
            await self.request("POST", "/auth/logout", auth=True)
        finally:
            self._forget_session()

    async def me(self) -> dict:
        return await self.request("GET", "/users/me", auth=True)

    def _store_session(self, answer: dict) -> None:
        self.access_token = answer["access_token"]
        self.refresh_token = answer.get("refresh_token")
        self.session_id = answer.get("session_id")
        self.session_key = answer["session_key"]
        self.user = answer.get("user")
        self.expires_at = time.monotonic() + float(answer.get("expires_in") or 0)

    def _forget_session(self) -> None:
        self.access_token = self.refresh_token = self.session_id = self.session_key = None
        self.user, self.expires_at, self.seq = None, 0.0, 0

    # ---- scores -------------------------------------------------------------------------------

    def build_submission(self, points: int, type: str = "level_complete", board: str | None = None,
                         duration_ms: int | None = 30_000, action_id: str | None = None,
                         **extra: Any) -> tuple[bytes, str]:
        """The exact body bytes of the next submission and their X-Signature; takes the next `seq`.

        The body is serialised once here; those same bytes are signed and sent.
        """
        if self.session_key is None:
            raise ClientError(401, "unauthorized", "not logged in")
        self.seq += 1
        score_data: dict[str, Any] = {"type": type, "points": points}
        if duration_ms is not None:
            score_data["duration_ms"] = duration_ms
        score_data.update(extra)
        body: dict[str, Any] = {"action_id": action_id or uuid.uuid4().hex}
        if board is not None:
            body["board"] = board
        body.update(seq=self.seq, ts=self.clock_ms(), nonce=new_nonce(), score_data=score_data)
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return raw, sign_body(self.session_key, raw)

    async def submit(self, points: int, type: str = "level_complete", board: str | None = None,
                     duration_ms: int | None = 30_000, action_id: str | None = None, *, retries: int = 2,
                     **extra: Any) -> dict:
        """Submit one signed action; `extra` goes into score_data (e.g. level=3). Returns the 200 answer.

        On 503 or a lost answer the very same bytes are sent again (up to `retries` times): the server
        answers a committed action with its original result and `"duplicate": true`.
        """
        async with self._submit_lock:
            await self.fresh_token()
            raw, signature = self.build_submission(points, type, board, duration_ms, action_id, **extra)
            return await self.send_signed(raw, signature, retries=retries)

    async def send_signed(self, raw: bytes, signature: str, *, retries: int = 0) -> dict:
        """POST already-built bytes to /scores/update, retrying 503 and network failures."""
        for attempt in range(retries + 1):
            try:
                return await self.request("POST", SIGNED_PATH, raw=raw, headers={"X-Signature": signature},
                                          auth=True)
            except ClientError as exc:
                if attempt == retries or exc.status not in (0, 503):
                    raise
                await asyncio.sleep(backoff_delay(attempt, start=0.2, cap=2.0))
        raise AssertionError("unreachable")

    # ---- leaderboards -------------------------------------------------------------------------

    async def leaderboards(self) -> dict:
        return await self.request("GET", "/leaderboards", auth=self.logged_in)

    async def leaderboard(self, board: str = "global", offset: int = 0, limit: int = 10,
                          period: str | None = None) -> dict:
        query = _query(offset=offset, limit=limit, period=period)
        return await self.request("GET", f"/leaderboards/{_seg(board)}?{query}", auth=self.logged_in)

    async def around(self, board: str, user_id: int, radius: int = 5, period: str | None = None) -> dict:
        query = _query(radius=radius, period=period)
        return await self.request("GET", f"/leaderboards/{_seg(board)}/around/{int(user_id)}?{query}",
                                  auth=self.logged_in)

    async def standing(self, board: str, user_id: int, period: str | None = None) -> dict:
        query = _query(period=period)
        return await self.request("GET", f"/leaderboards/{_seg(board)}/users/{int(user_id)}?{query}",
                                  auth=self.logged_in)

    # ---- realtime -----------------------------------------------------------------------------

    def live(self, **options: Any) -> Live:
        """A `Live` connection authenticated as this client (anonymous when not logged in)."""
        if self.logged_in:
            options.setdefault("token_provider", self.fresh_token)
        return Live(self.base_url, **options)


def _query(**values: Any) -> str:
    return urllib.parse.urlencode({k: v for k, v in values.items() if v is not None})


def _seg(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# ---- WebSocket ------------------------------------------------------------------------------------


def ws_url(base_url: str) -> str:
    """http(s)://host[:port][/prefix] -> ws(s)://host[:port][/prefix]/ws; ws(s):// URLs are kept."""
    parsed = urllib.parse.urlparse(base_url)
    if parsed.scheme in ("ws", "wss"):
        return base_url
    scheme = "wss" if parsed.scheme == "https" else "ws"
    return urllib.parse.urlunparse((scheme, parsed.netloc, parsed.path.rstrip("/") + "/ws", "", "", ""))


class _Fatal(Exception):
    """The server refused us in a way reconnecting cannot fix (4001 without a fresh token, 4003)."""

    def __init__(self, error: ClientError) -> None:
        super().__init__(str(error))
        self.error = error


class Live:
    """A self-healing WebSocket connection to /ws with per-channel resume.

    States (`state`, reported to `on_state(state, info)`): "idle", "connecting", "live", "reconnecting"
    (info: {"delay": seconds, "attempt": n, "close_code": c}) and "closed" (info: {"error": ClientError|None}).

    Callbacks, plain functions or coroutines, run in frame order on the reader task:
      on_event(channel, type, data)       every event
      on_snapshot(channel, snapshot)      state sync after a (re)subscribe that could not be recovered
      on(channel, type, callback)         per channel and type ("*" matches any); the callback gets
                                          (channel, type, data); type "snapshot" gets snapshots
      on_error(ClientError)               error frames not tied to a pending request
    """

    def __init__(self, base_url: str, token: str | None = None, *,
                 token_provider: Callable[[], Awaitable[str] | str] | None = None,
                 auth: str = "header", on_event: Callback | None = None, on_snapshot: Callback | None = None,
                 on_state: Callback | None = None, on_error: Callback | None = None,
                 backoff_start: float = 0.5, backoff_factor: float = 2.0, backoff_cap: float = 30.0,
                 jitter: str = "equal", rand: Callable[[], float] = random.random,
                 connect_timeout: float = 10.0, ping_interval: float | None = None,
                 ping_timeout: float | None = None) -> None:
        if auth not in ("header", "message"):
            raise ValueError("auth must be 'header' (Authorization on the upgrade) or 'message' (op auth)")
        self.url = ws_url(base_url)
        self.token, self.token_provider, self.auth = token, token_provider, auth
        self.on_event_cb, self.on_snapshot_cb = on_event, on_snapshot
        self.on_state_cb, self.on_error_cb = on_state, on_error
        self.backoff = {"start": backoff_start, "factor": backoff_factor, "cap": backoff_cap, "jitter": jitter,
                        "rand": rand}
        self.connect_timeout, self.ping_interval, self.ping_timeout = connect_timeout, ping_interval, ping_timeout
        self.state = "idle"
        self.error: ClientError | None = None
        self.identity: dict | None = None  # {"user_id", "role"} once authenticated
        self.positions: dict[str, tuple[str, int]] = {}  # channel -> (epoch, last offset seen)
        self.channels: dict[str, None] = {}  # wanted channels, in subscription order
        self.connections = 0  # successful connections so far (1 + reconnections)
        self._handlers: list[tuple[str, str, Callback]] = []
        self._conn: tornado.websocket.WebSocketClientConnection | None = None
        self._task: asyncio.Task | None = None
        self._live = asyncio.Event()
        self._wake = asyncio.Event()
        self._closing = False
        self._pending: dict[str, list[asyncio.Future]] = {}  # subscribe() calls waiting for "subscribed"
        self._in_flight: list[str] = []  # channels sent in a subscribe, not yet answered
        self._pings: list[tuple[asyncio.Future, float]] = []
        self._authed: asyncio.Future | None = None
        self._token_text: str | None = None
        self._unauthorized = 0  # 401s in a row without a working connection in between
        self._confirmed: dict[str, dict] = {}  # channel -> its "subscribed" frame on this connection

    # ---- public API ---------------------------------------------------------------------------

    def on(self, channel: str, type: str, callback: Callback) -> Callable[[], None]:
        """Call `callback(channel, type, data)` for matching events; returns a function that removes it."""
        entry = (channel, type, callback)
        self._handlers.append(entry)
        return lambda: self._handlers.remove(entry) if entry in self._handlers else None

    async def connect(self, timeout: float | None = None) -> None:
        """Start the connection task and wait until it is live (it keeps retrying with backoff meanwhile).

        Raises ClientError when the server refused us for good, TimeoutError after `timeout`.
        """
        if self._task is None or self._task.done():
            self._closing, self.error = False, None
            self._task = asyncio.create_task(self._run(), name="scoreboard-live")
        live = asyncio.ensure_future(self._live.wait())
        try:
            done, _ = await asyncio.wait({live, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            live.cancel()
        if self._live.is_set():
            return
        if self._task.done():
            raise self.error or ClientError(0, "closed", "the live connection was closed")
        raise TimeoutError(f"not live after {timeout} s (state {self.state})")

    async def subscribe(self, channel: str, timeout: float | None = None) -> dict:
        """Subscribe (resuming from the last epoch/offset seen on this channel); returns the `subscribed`
        frame. Raises ClientError on an error frame (e.g. forbidden), after which the channel is dropped."""
        if channel in self._confirmed and self._live.is_set():
            return self._confirmed[channel]
        future = asyncio.get_running_loop().create_future()
        self._pending.setdefault(channel, []).append(future)
        if channel in self.channels and channel in self._in_flight:
            return await asyncio.wait_for(future, timeout)  # its subscribe is on the way already
        self.channels[channel] = None
        if self._conn is not None and self._live.is_set():
            await self._send_subscribe(channel)
        return await asyncio.wait_for(future, timeout)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.pop(channel, None)
        self.positions.pop(channel, None)
        self._confirmed.pop(channel, None)
        if self._conn is not None and self._live.is_set():
            await self._send({"op": "unsubscribe", "channel": channel})

    async def ping(self, timeout: float = 10.0) -> float:
        """Send {"op": "ping"} and wait for the pong; returns the round trip in seconds."""
        future = asyncio.get_running_loop().create_future()
        self._pings.append((future, time.monotonic()))
        await self._send({"op": "ping"})
        return await asyncio.wait_for(future, timeout)

    async def reconnect(self) -> None:
        """Drop the current connection and connect again at once (e.g. after logging in with a new token)."""
        if self._conn is not None:
            self._conn.close(1000, "reconnect")
        self._wake.set()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._conn is not None:
            self._conn.close(1000, "client closed")
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        await self._set_state("closed", {"error": self.error})

    # ---- connection loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        attempt, close_code = 0, None
        while not self._closing:
            await self._set_state("connecting" if self.connections == 0 else "reconnecting",
                                  {"attempt": attempt, "delay": 0.0, "close_code": close_code})
            try:
                got_frames, close_code = await self._session()
            except _Fatal as fatal:
                self.error = fatal.error
                break
            if got_frames:
                attempt = 0
            if self._closing:
                break
            if self._wake.is_set():  # reconnect() asked for an immediate new connection
                self._wake.clear()
                continue
            delay = backoff_delay(attempt, **self.backoff)
            attempt += 1
            await self._set_state("reconnecting", {"attempt": attempt, "delay": delay, "close_code": close_code})
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
                self._wake.clear()
            except TimeoutError:
                pass
        self._live.clear()
        self._fail_waiters(self.error or ClientError(0, "closed", "the live connection was closed"))
        await self._set_state("closed", {"error": self.error})

    async def _session(self) -> tuple[bool, int | None]:
        """One connection from open to close; returns (received any frame, close code)."""
        try:
            conn = await self._open()
        except _Fatal:
            raise
        except Exception as exc:  # refused, reset, timeout, non-101 answer: retry with backoff
            log.debug("live connect to %s failed: %s", self.url, exc)
            return False, None
        self._conn = conn
        reader = asyncio.ensure_future(self._read(conn))
        try:
            if self.auth == "message" and self._token_text:
                await self._authenticate(reader)
            await self._resubscribe()
            self.connections += 1
            self._live.set()
            await self._set_state("live", {"url": self.url, "connections": self.connections})
            await reader
        except _Fatal:
            conn.close()
            reader.cancel()
            raise
        except (tornado.websocket.WebSocketClosedError, TimeoutError, ClientError) as exc:
            log.debug("live connection to %s ended: %r", self.url, exc)
            conn.close()
        finally:
            self._live.clear()
            self._conn = None
            self._in_flight.clear()
            self._confirmed.clear()
            for future, _ in self._pings:
                if not future.done():
                    future.set_exception(ClientError(0, "closed", "connection lost before the pong"))
            self._pings.clear()
        got_frames = await reader
        return got_frames, self._check_close(conn, got_frames)

    async def _resubscribe(self) -> None:
        """Send a subscribe (with `since` where known) for every wanted channel, including any added meanwhile."""
        sent: set[str] = set()
        while todo := [channel for channel in self.channels if channel not in sent]:
            for channel in todo:
                sent.add(channel)
                await self._send_subscribe(channel)

    async def _open(self) -> tornado.websocket.WebSocketClientConnection:
        headers = {}
        self._token_text = await self._token()
        if self._token_text and self.auth == "header":
            headers["Authorization"] = f"Bearer {self._token_text}"
        request = tornado.httpclient.HTTPRequest(self.url, headers=headers, connect_timeout=self.connect_timeout,
                                                 request_timeout=self.connect_timeout)
        try:
            return await tornado.websocket.websocket_connect(
                request, ping_interval=self.ping_interval, ping_timeout=self.ping_timeout)
        except tornado.httpclient.HTTPClientError as exc:
            if exc.code == 403:
                raise _Fatal(ClientError(403, "forbidden", f"WebSocket upgrade refused: {exc}")) from exc
            if exc.code == 401:
                self._refused(ClientError(401, "unauthorized", f"WebSocket upgrade refused: {exc}"))
            raise

    def _refused(self, error: ClientError) -> None:
        """A 401 is fatal without a token provider, or when a freshly provided token is refused again."""
        self._unauthorized += 1
        if self.token_provider is None or self._unauthorized > 1:
            raise _Fatal(error)

    async def _token(self) -> str | None:
        if self.token_provider is None:
            return self.token
        try:
            token = self.token_provider()
            return await token if inspect.isawaitable(token) else token
        except ClientError as exc:
            if exc.status in (401, 403):
                raise _Fatal(exc) from exc
            raise

    async def _authenticate(self, reader: asyncio.Future) -> None:
        """Send {"op": "auth"} and wait for "authed" (an error frame or a close ends the wait)."""
        self._authed = asyncio.get_running_loop().create_future()
        await self._send({"op": "auth", "token": self._token_text})
        done, _ = await asyncio.wait({self._authed, reader}, timeout=self.connect_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._authed in done:
            self._authed.result()  # raises _Fatal for an error frame
        elif not done:
            raise TimeoutError("no answer to op auth")

    def _check_close(self, conn: tornado.websocket.WebSocketClientConnection, got_frames: bool) -> int | None:
        code, reason = conn.close_code, conn.close_reason or ""
        if self._closing:
            return code
        if code == CLOSE_UNAUTHORIZED:
            self._refused(ClientError(401, "unauthorized", reason or "the server closed with 4001"))
        elif code == CLOSE_FORBIDDEN:
            raise _Fatal(ClientError(403, "forbidden", reason or "the server closed with 4003"))
        elif got_frames:
            self._unauthorized = 0
        return code

    async def _read(self, conn: tornado.websocket.WebSocketClientConnection) -> bool:
        got_frames = False
        while True:
            message = await conn.read_message()
            if message is None:
                return got_frames
            try:
                frame = json.loads(message)
            except ValueError:
                log.warning("live: ignoring a frame that is not JSON: %.80r", message)
                continue
            got_frames = True
            if isinstance(frame, dict):
                await self._dispatch(frame)

    # ---- frames -------------------------------------------------------------------------------

    async def _dispatch(self, frame: dict) -> None:
        op = frame.get("op")
        if op == "event":
            await self._on_event(frame)
        elif op == "subscribed":
            await self._on_subscribed(frame)
        elif op == "pong":
            if self._pings:
                future, sent = self._pings.pop(0)
                if not future.done():
                    future.set_result(time.monotonic() - sent)
        elif op == "authed":
            self.identity = {"user_id": frame.get("user_id"), "role": frame.get("role")}
            if self._authed is not None and not self._authed.done():
                self._authed.set_result(frame)
        elif op == "error":
            await self._on_error(frame)

    async def _on_event(self, frame: dict) -> None:
        channel, epoch, offset = frame.get("channel"), frame.get("epoch"), frame.get("offset")
        if channel not in self.channels:
            return  # a late event for a channel we left
        known = self.positions.get(channel)
        if known and known[0] == epoch and isinstance(offset, int) and offset <= known[1]:
            return  # already seen (a replay overlapping what we had)
        if isinstance(offset, int):
            self.positions[channel] = (epoch, offset)
        kind, data = frame.get("type"), frame.get("data")
        await _call(self.on_event_cb, channel, kind, data)
        for wanted_channel, wanted_type, callback in list(self._handlers):
            if wanted_channel in (channel, "*") and wanted_type in (kind, "*"):
                await _call(callback, channel, kind, data)

    async def _on_subscribed(self, frame: dict) -> None:
        channel = frame.get("channel")
        if channel not in self.channels:
            return
        if channel in self._in_flight:
            self._in_flight.remove(channel)
        self._confirmed[channel] = frame
        known = self.positions.get(channel)
        recovered = bool(frame.get("recovered"))
        # Recovered: the missed events follow and move the position themselves.
        if not recovered or known is None or known[0] != frame.get("epoch"):
            if isinstance(frame.get("offset"), int):
                self.positions[channel] = (frame.get("epoch"), frame["offset"])
        if not recovered and "snapshot" in frame:
            await _call(self.on_snapshot_cb, channel, frame["snapshot"])
            for wanted_channel, wanted_type, callback in list(self._handlers):
                if wanted_channel in (channel, "*") and wanted_type == "snapshot":
                    await _call(callback, channel, "snapshot", frame["snapshot"])
        for future in self._pending.pop(channel, []):
            if not future.done():
                future.set_result(frame)

    async def _on_error(self, frame: dict) -> None:
        code = str(frame.get("code", ""))
        error = ClientError(STATUS_OF_CODE.get(code, 0), code, str(frame.get("message", "")), frame.get("reason"))
        if self._authed is not None and not self._authed.done():
            self._authed.set_exception(_Fatal(error))
            return
        channel = frame.get("channel") or (self._in_flight[0] if self._in_flight else None)
        if channel is None:
            await _call(self.on_error_cb, error)
            return
        if channel in self._in_flight:
            self._in_flight.remove(channel)
        self.channels.pop(channel, None)
        self.positions.pop(channel, None)
        waiters = self._pending.pop(channel, [])
        for future in waiters:
            if not future.done():
                future.set_exception(error)
        if not waiters:
            await _call(self.on_error_cb, error)

    # ---- helpers ------------------------------------------------------------------------------

    async def _send_subscribe(self, channel: str) -> None:
        frame: dict[str, Any] = {"op": "subscribe", "channel": channel}
        known = self.positions.get(channel)
        if known is not None:
            frame["since"] = {"epoch": known[0], "offset": known[1]}
        self._in_flight.append(channel)
        await self._send(frame)

    async def _send(self, frame: dict) -> None:
        if self._conn is None:
            raise ClientError(0, "closed", "not connected")
        await self._conn.write_message(json.dumps(frame, separators=(",", ":")))

    async def _set_state(self, state: str, info: dict) -> None:
        if state == self.state and state in ("closed", "idle"):
            return
        self.state = state
        await _call(self.on_state_cb, state, info)

    def _fail_waiters(self, error: ClientError) -> None:
        for futures in self._pending.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._pending.clear()
