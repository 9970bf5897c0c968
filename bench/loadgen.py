"""The load generator of `bench.submit`: a separate process, lean on purpose (the machine has 2 cores).

`python -m bench.loadgen SPEC.json` reads a plan, builds and signs every request before the clock starts,
opens one HTTP/1.1 keep-alive connection per client, and each client sends its requests back to back
(the next one leaves when the previous answer has been read). The sending is done by bench/loadgen.c,
compiled next to the plan, when a C compiler is at hand (`LOADGEN=python` or no compiler: a Python loop
of bare asyncio Protocols); both give the same results. It prints `measuring` when the measured
phase starts, `done` when it ends, then one JSON line with the results.

Plan (JSON): host, port, warmup_s, seconds, budget (requests built per client), path, and clients:
[{"token", "session_key", "seq_start"}]. Each client signs its own bodies with its session key, seq
strictly increasing from seq_start + 1, a fresh nonce and action id per body. Requests are sent for
warmup_s + seconds; those that complete within the last `seconds` are measured.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson

from scoreboard.signing import sign

POINTS = 10


def build_requests(host: str, port: int, path: str, client: dict, count: int, now_ms: int) -> list[bytes]:
    """`count` complete signed HTTP/1.1 requests of one client, ready to write as they are."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {client['token']}\r\n"
            "Content-Type: application/json\r\n").encode()
    key, seq = client["session_key"], client["seq_start"]
    out = []
    for i in range(1, count + 1):
        body = orjson.dumps({"action_id": uuid.uuid4().hex, "seq": seq + i, "ts": now_ms,
                             "nonce": secrets.token_urlsafe(18),
                             "score_data": {"type": "level_complete", "points": POINTS, "duration_ms": 30_000}})
        out.append(head + b"X-Signature: %s\r\nContent-Length: %d\r\n\r\n%s"
                   % (sign(key, body, path).encode(), len(body), body))
    return out


class Client(asyncio.Protocol):
    """One keep-alive connection sending its requests back to back, as a bare Protocol: no stream reader,
    no coroutine per request. The load generator shares a core with whatever the scoreboard runs beside
    its server (PostgreSQL, Redis, the writer process): every microsecond spent here is taken from them."""

    def __init__(self, requests: list[bytes]) -> None:
        self.requests = requests
        self.latencies: list[float] = []  # seconds, measured requests only
        self.statuses: dict[str, int] = {}  # "404 not_found" -> count, non-200 of the measured phase
        self.sent = 0
        self.exhausted = False
        self.buffer = b""
        self.started = 0.0
        self.window: tuple[list[float], list[float]] = ([0.0], [0.0])
        self.transport: asyncio.Transport | None = None
        self.finished: asyncio.Future | None = None

    async def run(self, host: str, port: int, until: list[float], measure_from: list[float]) -> None:
        """Send back to back until the clock passes until[0]."""
        self.window = (until, measure_from)
        self.finished = asyncio.get_running_loop().create_future()
        await asyncio.get_running_loop().create_connection(lambda: self, host, port)
        try:
            await self.finished
        finally:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_exception(exc or ConnectionError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self.buffer = buffer
            return
        head = buffer[:end + 4]
        length = _content_length(head)
        if len(buffer) < end + 4 + length:
            self.buffer = buffer
            return
        self.buffer = b""  # one request in flight: nothing can follow its answer
        finished = time.perf_counter()
        self.sent += 1
        until, measure_from = self.window
        if self.started >= measure_from[0] and finished <= until[0]:
            self.latencies.append(finished - self.started)
            status = head[9:12]
            if status != b"200":
                _count_error(self.statuses, status.decode(), buffer[end + 4:end + 4 + length])
        self._send()

    def _send(self) -> None:
        if self.sent == len(self.requests):
            self.exhausted = True
            self.finished.set_result(None)
            return
        self.started = time.perf_counter()
        if self.started >= self.window[0][0]:
            self.finished.set_result(None)
            return
        self.transport.write(self.requests[self.sent])


def _count_error(statuses: dict[str, int], status: str, body: bytes) -> None:
    code = ""
    try:
        code = orjson.loads(body)["error"]["code"]
    except Exception:  # not our error shape: the status alone says enough
        pass
    key = f"{status} {code}".strip()
    statuses[key] = statuses.get(key, 0) + 1


def _content_length(head: bytes) -> int:
    at = head.lower().find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = head.find(b"\r\n", at + 2)
    return int(head[at + 17:end])


def build_all(plan: dict) -> tuple[list[list[bytes]], float]:
    """Every client's requests, and the seconds it took to build them (before any clock starts)."""
    now_ms = time.time_ns() // 1_000_000
    built = time.perf_counter()
    requests = [build_requests(plan["host"], plan["port"], plan.get("path", "/scores/update"), c, plan["budget"],
                               now_ms) for c in plan["clients"]]
    return requests, time.perf_counter() - built


async def run(plan: dict, requests: list[list[bytes]]) -> dict:
    """The Python load generator (no C compiler at hand)."""
    clients = [Client(own) for own in requests]
    start = time.perf_counter()
    measure_from = [start + plan["warmup_s"]]
    until = [start + plan["warmup_s"] + plan["seconds"]]
    cpu_at_start: list[float] = []
    watcher = asyncio.ensure_future(_announce(measure_from[0], cpu_at_start))
    await asyncio.gather(*(c.run(plan["host"], plan["port"], until, measure_from) for c in clients))
    cpu_end = time.process_time()
    await watcher
    print("done", flush=True)
    statuses: dict[str, int] = {}
    for client in clients:
        for key, count in client.statuses.items():
            statuses[key] = statuses.get(key, 0) + count
    return summary(plan, sorted(x for c in clients for x in c.latencies), statuses,
                   sent=sum(c.sent for c in clients), exhausted=sum(c.exhausted for c in clients),
                   cpu_s=cpu_end - cpu_at_start[0] if cpu_at_start else 0.0)


def run_native(plan: dict, requests: list[list[bytes]], binary: Path, workdir: Path) -> dict:
    """The C load generator (bench/loadgen.c): same plan, same window, same results."""
    files = {name: workdir / f"loadgen-{os.getpid()}.{name}" for name in ("requests", "latencies", "errors")}
    with files["requests"].open("wb") as out:
        out.write(struct.pack("<I", len(requests)))
        for own in requests:
            out.write(struct.pack("<I", len(own)))
            for request in own:
                out.write(struct.pack("<I", len(request)) + request)
    args = [str(binary), plan["host"], str(plan["port"]), str(plan["warmup_s"]), str(plan["seconds"]),
            *(str(path) for path in files.values())]
    counts: list[str] = []
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:  # "measuring" and "done" passed on as they come: bench.submit times by them
            if line.strip() in ("measuring", "done"):
                print(line.strip(), flush=True)
            else:
                counts = line.split()
    if proc.returncode != 0 or len(counts) != 3:
        raise RuntimeError(f"the C load generator failed (exit {proc.returncode})")
    sent, exhausted, cpu_s = counts
    packed = files["latencies"].read_bytes()
    latencies = sorted(micros / 1e6 for micros in struct.unpack(f"<{len(packed) // 4}I", packed))
    statuses: dict[str, int] = {}
    for line in files["errors"].read_bytes().splitlines():
        _count_error(statuses, line[:3].decode(), line[4:])
    for path in files.values():
        path.unlink()
    return summary(plan, latencies, statuses, sent=int(sent), exhausted=int(exhausted), cpu_s=float(cpu_s))


def native_binary(workdir: Path) -> Path | None:
    """bench/loadgen.c compiled into workdir, once; None without a C compiler."""
    binary = workdir / "loadgen"
    if binary.exists():
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("no C compiler: the Python load generator runs (it costs more CPU per request)", file=sys.stderr)
        return None
    subprocess.run([compiler, "-O2", "-o", str(binary), str(Path(__file__).with_suffix(".c"))], check=True)
    return binary


def summary(plan: dict, latencies: list[float], statuses: dict[str, int], sent: int, exhausted: int,
            cpu_s: float) -> dict:
    """The results line bench.submit reads; `latencies` sorted, in seconds."""
    elapsed = plan["seconds"]
    return {
        "clients": len(plan["clients"]),
        "measured": len(latencies),
        "elapsed_s": elapsed,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": _percentile(latencies, 50) * 1000,
        "p99_ms": _percentile(latencies, 99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else 0.0,
        "non_200": statuses,
        "exhausted": exhausted,
        "sent": sent,
        "loadgen_cpu_s": cpu_s,
    }


async def _announce(at: float, cpu_at_start: list[float]) -> None:
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    cpu_at_start.append(time.process_time())
    print("measuring", flush=True)


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        plan = orjson.loads(f.read())
    if plan.get("cpus"):
        os.sched_setaffinity(0, plan["cpus"])
    requests, build_s = build_all(plan)
    workdir = Path(sys.argv[1]).parent
    binary = None if os.environ.get("LOADGEN") == "python" else native_binary(workdir)
    result = run_native(plan, requests, binary, workdir) if binary else asyncio.run(run(plan, requests))
    result["build_s"] = build_s
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
