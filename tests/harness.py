"""Real servers for tests: the app in a thread on a free port, or as a separate process.

Each server gets its own database (a SQLite file, or a PostgreSQL schema) and its own Redis key prefix,
so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from scoreboard.app import App
from scoreboard.clock import Clock
from scoreboard.config import from_dict

FAST_ARGON2 = {"argon2_time_cost": 2, "argon2_memory_kib": 19_456}


def raw_config(backend: str, workdir: Path, redis_url: str, postgres_url: str) -> dict:
    """Settings for one test server; the caller merges its own on top."""
    tag = uuid.uuid4().hex[:12]
    raw: dict[str, Any] = {"auth": dict(FAST_ARGON2), "server": {"log_level": "warning"}}
    if backend == "embedded":
        raw["database"] = {"url": f"sqlite:///{workdir / f'sb-{tag}.db'}"}
    else:
        raw["database"] = {"url": create_schema(postgres_url, f"t_{tag}")}
        raw["redis"] = {"url": redis_url, "prefix": f"sbtest:{tag}:"}
    return raw


def merge(base: dict, extra: dict) -> dict:
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def create_schema(postgres_url: str, schema: str) -> str:
    with psycopg2.connect(postgres_url) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    return f"{postgres_url}?options=-csearch_path%3D{schema}"


def drop_schema(url: str) -> None:
    if "search_path%3D" not in url:
        return
    base, schema = url.split("?")[0], url.rsplit("%3D", 1)[1]
    with psycopg2.connect(base) as conn, conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def drop_redis_prefix(redis_url: str, prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start:start + 500])
    finally:
        await client.aclose()


def cleanup(raw: dict) -> None:
    drop_schema(raw["database"]["url"])
    redis = raw.get("redis")
    if redis:
        asyncio.run(drop_redis_prefix(redis["url"], redis["prefix"]))


class ServerThread:
    """The app on its own event loop in a background thread, listening on a free 127.0.0.1 port."""

    def __init__(self, raw: dict, clock: Clock | None = None) -> None:
        self.raw = raw
        self.config = from_dict(raw, env={})
        self.app = App(self.config, clock)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self.call(self.app.start(0, "127.0.0.1"))
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, coro, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.call(self.app.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class ServerProcess:
    """`python -m scoreboard.app` as a child process, configured through a TOML file."""

    def __init__(self, raw: dict, workdir: Path, extra_env: dict | None = None, port: int | None = None) -> None:
        self.port = port or free_port()  # pass the old port to restart a stopped server in its place
        self.config_path = workdir / f"server-{self.port}.toml"
        self.config_path.write_text(to_toml(raw))
        env = {**os.environ, **(extra_env or {})}
        self.log_path = workdir / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scoreboard.app", "--config", str(self.config_path), "--port", str(self.port),
             "--host", "127.0.0.1"],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=self.log_path.open("wb"))
        self.url = f"http://127.0.0.1:{self.port}"
        wait_healthy(self.url, self.proc, self.log_path)

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if it has not exited within 10 s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 15) -> float:
    """Poll /healthz until it answers; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if Http(url).get("/healthz").status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server did not become healthy: {log_path.read_text()[-2000:]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def to_toml(raw: dict) -> str:
    lines = []
    for section, values in raw.items():
        tables = {k: v for k, v in values.items() if isinstance(v, dict)}
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if scalars:
            lines.append(f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in scalars.items()]
        for name, table in tables.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines).replace("= true", "= true").replace("= false", "= false") + "\n"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    raw: bytes
    json: Any = field(default=None)

    @property
    def code(self) -> str | None:
        return (self.json or {}).get("error", {}).get("code") if isinstance(self.json, dict) else None


class Http:
    """A plain HTTP/1.1 client that sends exactly the bytes it is given."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        parsed = urllib.parse.urlparse(base_url)
        self.host, self.port = parsed.hostname, parsed.port
        self.token = token

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> Response:
        headers = dict(headers or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            parsed = json.loads(raw) if raw and "json" in (resp.getheader("Content-Type") or "") else None
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, raw, parsed)
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw) -> Response:
        return self.request("POST", path, body, **kw)

    def with_token(self, token: str) -> Http:
        clone = Http.__new__(Http)
        clone.host, clone.port, clone.token = self.host, self.port, token
        return clone


def register_and_login(http: Http, username: str, password: str = "correct horse battery") -> dict:
    created = http.post("/auth/register", {"username": username, "password": password})
    assert created.status == 201, created.raw
    login = http.post("/auth/login", {"username": username, "password": password})
    assert login.status == 200, login.raw
    return login.json


class Player:
    """A logged-in test player that signs its submissions exactly as PROTOCOL says."""

    def __init__(self, http: Http, username: str, login: dict | None = None, clock_ms=None) -> None:
        self.login = login or register_and_login(http, username)
        self.http = http.with_token(self.login["access_token"])
        self.user_id = self.login["user"]["user_id"]
        self.seq = 0
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    def body(self, points: int = 10, action_type: str = "level_complete", **fields) -> dict:
        self.seq += 1
        body = {"action_id": uuid.uuid4().hex, "seq": self.seq, "ts": self.clock_ms(),
                "nonce": uuid.uuid4().hex, "score_data": {"type": action_type, "points": points,
                                                         "duration_ms": 30_000}}
        body.update(fields)
        return body

    def send(self, raw: bytes, signature: str | None = None, headers: dict | None = None) -> Response:
        from scoreboard.signing import sign

        headers = dict(headers or {})
        headers["X-Signature"] = signature if signature is not None else sign(self.login["session_key"], raw)
        return self.http.post("/scores/update", raw, headers=headers)

    def submit(self, points: int = 10, **fields) -> Response:
        return self.send(json.dumps(self.body(points, **fields)).encode())


def encode(body: dict) -> bytes:
    return json.dumps(body).encode()
