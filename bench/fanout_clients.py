"""The load generator of `bench.fanout`: N WebSocket subscribers and one trigger, in one process.

`python -m bench.fanout_clients PLAN.json` (the orchestrator starts it). Lean on purpose, the machine
has 2 cores and the server under test needs one: no WebSocket library, an `asyncio.Protocol` per
connection with a hand-written upgrade request and a minimal frame reader (server frames are unmasked:
parse the 2-10 byte header, skip the payload). Only a handful of sample connections decode payloads, to
learn which trigger each event belongs to.

Protocol with the orchestrator, over stdout/stdin: prints `ready N` once N connections are open (and
subscribed, for the scoreboard), waits for a line on stdin, then sends triggers at a steady rate and
prints one JSON line with the results.

Plan (JSON): host, port, path, subscribers, subscribe (a client message to send after the upgrade, or
null), rate (triggers/s), warmup_s, seconds, server_pid, trigger: "http" (pre-signed requests in
`requests`, base64, written back to back on one keep-alive connection) or "ws" (a text frame holding
the trigger number, on one more WebSocket connection to `trigger_path`), decode: "score" (the trigger
number is read from the bench player's score in a `top` event: user_id, score_base, points) or "seq"
(from the `seq` field of a baseline's message).

What it measures, all on this process's clock (CLOCK_MONOTONIC, shared with nothing else):
- every subscriber counts the event frames it receives; the k-th event frame of every connection is the
  same event (all subscribed before the first trigger, every event goes to every subscriber, in order);
  per event k the time of the last arrival over all connections and how many connections got it;
- frames received and the server's CPU time (/proc/PID/stat utime+stime, all threads) are read at the
  start and the end of the measured window (the scheduled send times of the first and one-past-last
  measured trigger);
- latency of a measured trigger = last arrival of its event - the moment the trigger was written (and,
  to show where the time goes, the same for the first arrival).
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import struct
import sys
import time

import orjson

HANDSHAKE_KEY = base64.b64encode(b"bench.fanout.key").decode()
CONNECT_CONCURRENCY = 64
CONNECT_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 20.0
SAMPLES = 16
TICK = os.sysconf("SC_CLK_TCK")


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root may raise the hard limit too); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((want, max(want, hard) if hard != resource.RLIM_INFINITY else hard),
                   (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, unfragmented client frame (RFC 6455 5.2/5.3)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 0x10000:
        head = struct.pack("!BBH", 0x80 | opcode, 0xFE, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, size)
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def upgrade_request(host: str, port: int, path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {HANDSHAKE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


class Shared:
    """What all subscribers of this process write into: per-event arrival stats and counters."""

    def __init__(self, capacity: int, decode) -> None:
        self.last = [0.0] * capacity  # event k -> latest arrival over all connections
        self.first = [0.0] * capacity  # event k -> earliest arrival
        self.got = [0] * capacity  # event k -> connections that received it
        self.capacity = capacity
        self.frames = 0  # event frames received, all connections
        self.overflow = 0
        self.ready = 0
        self.closed: dict[str, int] = {}  # close code -> connections
        self.trigger_of: dict[int, int] = {}  # event k -> trigger number (from the sample connections)
        self.conflicts = 0
        self.payload_size = 0
        self.decode = decode

    def sample(self, k: int, payload: bytes) -> None:
        trigger = self.decode(payload)
        if trigger is None:
            return
        known = self.trigger_of.setdefault(k, trigger)
        if known != trigger:
            self.conflicts += 1
        self.payload_size = len(payload)


class Subscriber(asyncio.Protocol):
    __slots__ = ("shared", "request", "subscribe", "sample", "transport", "buf", "state", "count", "ready",
                 "error")

    def __init__(self, shared: Shared, request: bytes, subscribe: bytes | None, sample: bool) -> None:
        self.shared, self.request, self.subscribe, self.sample = shared, request, subscribe, sample
        self.transport = None
        self.buf = b""
        self.state = 0  # 0: upgrading, 1: waiting for the `subscribed` reply, 2: live
        self.count = 0  # event frames received
        self.ready = asyncio.get_running_loop().create_future()
        self.error = ""

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(self.error or f"connection lost: {exc}"))
        self.transport = None

    def _fail(self, reason: str) -> None:
        self.error = reason
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.state == 0:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self._fail(f"upgrade refused: {data[:end].splitlines()[0].decode(errors='replace')}")
                return
            data = data[end + 4:]
            if self.subscribe is None:
                self._live()
            else:
                self.state = 1
                self.transport.write(self.subscribe)
        pos, size = 0, len(data)
        shared = self.shared
        while size - pos >= 2:
            length = data[pos + 1] & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if size - pos < 4:
                    break
                length, start = (data[pos + 2] << 8) | data[pos + 3], pos + 4
            else:
                if size - pos < 10:
                    break
                length, start = int.from_bytes(data[pos + 2:pos + 10], "big"), pos + 10
            end = start + length
            if end > size:
                break
            opcode = data[pos] & 0x0F
            if opcode == 1:
                if self.state == 2:
                    k = self.count
                    self.count = k + 1
                    shared.frames += 1
                    if k < shared.capacity:
                        got = shared.got[k] = shared.got[k] + 1
                        if got == 1:
                            shared.first[k] = now
                        if now > shared.last[k]:
                            shared.last[k] = now
                        if self.sample:
                            shared.sample(k, data[start:end])
                    else:
                        shared.overflow += 1
                elif data.startswith(b'{"op":"subscribed"', start):
                    self._live()
                else:
                    self._fail(f"unexpected reply: {data[start:end][:200].decode(errors='replace')}")
                    return
            elif opcode == 9:  # ping: answer with a pong carrying the same payload
                self.transport.write(client_frame(10, data[start:end]))
            elif opcode == 8:
                code = str(int.from_bytes(data[start:start + 2], "big")) if length >= 2 else "none"
                shared.closed[code] = shared.closed.get(code, 0) + 1
                self._fail(f"closed by the server: {code}")
                return
            pos = end
        if pos < size:
            self.buf = data[pos:]

    def _live(self) -> None:
        self.state = 2
        self.shared.ready += 1
        if not self.ready.done():
            self.ready.set_result(None)


class Trigger(asyncio.Protocol):
    """The trigger connection: HTTP (pre-signed submissions, answers read and checked) or WebSocket."""

    def __init__(self, request: bytes | None) -> None:
        self.request = request
        self.ready = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.upgraded = request is None
        self.answers = 0
        self.statuses: dict[str, int] = {}
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.request is not None:
            transport.write(self.request)
        else:
            self.ready.set_result(None)

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"trigger connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(self.buf[:end].decode(errors="replace")))
                return
            self.upgraded, self.buf = True, self.buf[end + 4:]
            self.ready.set_result(None)
            return
        if self.request is not None:
            self.buf = b""  # a WebSocket trigger: the baseline never answers
            return
        while True:  # HTTP answers to the submissions
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = content_length(head)
            if len(self.buf) < end + 4 + length:
                return
            status = head[9:12].decode()
            if status != "200":
                key = f"{status} {self.buf[end + 4:end + 4 + length][:120].decode(errors='replace')}"
                self.statuses[key] = self.statuses.get(key, 0) + 1
            self.answers += 1
            self.buf = self.buf[end + 4 + length:]


def content_length(head: bytes) -> int:
    at = head.lower().find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    stop = head.find(b"\r\n", at + 2)
    return int(head[at + 17:stop if stop > 0 else len(head)])


def make_decoder(plan: dict):
    if plan["decode"] == "seq":
        def decode(payload: bytes) -> int | None:
            return orjson.loads(payload).get("seq")
        return decode
    user_id, base, points = plan["user_id"], plan["score_base"], plan["points"]

    def decode(payload: bytes) -> int | None:
        body = orjson.loads(payload)
        for entry in body.get("data", {}).get("entries", ()):
            if entry["user_id"] == user_id:
                return (entry["score"] - base) // points - 1
        return None
    return decode


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


async def connect_all(plan: dict, shared: Shared) -> list[Subscriber]:
    loop = asyncio.get_running_loop()
    host, port, n = plan["host"], plan["port"], plan["subscribers"]
    request = upgrade_request(host, port, plan["path"])
    subscribe = client_frame(1, orjson.dumps(plan["subscribe"])) if plan.get("subscribe") else None
    every = max(1, n // SAMPLES)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    subscribers: list[Subscriber] = []

    async def one(i: int) -> None:
        async with gate:
            for attempt in range(5):
                proto = Subscriber(shared, request, subscribe, i % every == 0)
                try:
                    await loop.create_connection(lambda proto=proto: proto, host, port)
                    await asyncio.wait_for(proto.ready, 30)
                    subscribers.append(proto)
                    return
                except (TimeoutError, OSError) as exc:
                    if proto.transport is not None:
                        proto.transport.close()
                    if attempt == 4:
                        raise RuntimeError(f"subscriber {i}: {proto.error or exc!r}") from None
                    await asyncio.sleep(0.1 * (attempt + 1))

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), CONNECT_TIMEOUT_S)
    return subscribers


async def open_trigger(plan: dict) -> Trigger:
    loop = asyncio.get_running_loop()
    request = upgrade_request(plan["host"], plan["port"], plan["trigger_path"]) if plan["trigger"] == "ws" else None
    proto = Trigger(request)
    await loop.create_connection(lambda: proto, plan["host"], plan["port"])
    await asyncio.wait_for(proto.ready, 10)
    return proto


async def run(plan: dict) -> dict:
    nofile = raise_nofile()
    rate, warmup_n = plan["rate"], round(plan["warmup_s"] * plan["rate"])
    measured_n = max(1, round(plan["seconds"] * rate))
    total = warmup_n + measured_n
    shared = Shared(total + 64, make_decoder(plan))
    started = time.perf_counter()
    subscribers = await connect_all(plan, shared)
    connect_s = time.perf_counter() - started
    if plan["trigger"] == "http":
        triggers = [base64.b64decode(r) for r in plan["requests"]]
        if len(triggers) < total:
            raise SystemExit(f"{len(triggers)} pre-signed requests for {total} triggers")
    else:
        triggers = [client_frame(1, str(i).encode()) for i in range(total)]
    trigger = await open_trigger(plan)
    print(f"ready {len(subscribers)} nofile={nofile} connect_s={connect_s:.1f}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    pid = plan["server_pid"]
    sent_at = [0.0] * total
    start = time.perf_counter() + 0.2
    window_at = (start + warmup_n / rate, start + total / rate)
    marks: list[tuple[float, int, float, float]] = []  # (time, frames, server cpu, own cpu)

    async def window() -> None:
        for at in window_at:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            marks.append((time.perf_counter(), shared.frames, process_cpu(pid), time.process_time()))

    watcher = asyncio.ensure_future(window())
    write = trigger.transport.write
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        write(triggers[i])
        sent_at[i] = time.perf_counter()
    await watcher

    # Drain: until every connection has every event the samples saw (or nothing moves for 2 s).
    deadline, last_frames, still_since = time.perf_counter() + DRAIN_TIMEOUT_S, -1, time.perf_counter()
    while time.perf_counter() < deadline:
        top = max((s.count for s in subscribers), default=0)
        answered = plan["trigger"] != "http" or trigger.answers >= total
        if answered and top and all(s.count == top for s in subscribers) and len(shared.trigger_of) \
                and max(shared.trigger_of.values()) >= total - 1:
            break
        if shared.frames != last_frames:
            last_frames, still_since = shared.frames, time.perf_counter()
        elif time.perf_counter() - still_since > 2.0 and answered:
            break
        await asyncio.sleep(0.05)

    live = sum(1 for s in subscribers if s.transport is not None and s.state == 2)
    latencies, firsts, incomplete = [], [], 0
    seen = set()
    for k, i in shared.trigger_of.items():
        if not warmup_n <= i < total:
            continue
        seen.add(i)
        if shared.got[k] < live:
            incomplete += 1
            continue
        latencies.append(shared.last[k] - sent_at[i])
        firsts.append(shared.first[k] - sent_at[i])
    (t0, f0, c0, o0), (t1, f1, c1, o1) = marks
    elapsed, frames, cpu = t1 - t0, f1 - f0, c1 - c0
    for s in subscribers:
        if s.transport is not None:
            s.transport.close()
    trigger.transport.close()
    return {
        "subscribers": len(subscribers), "live_at_end": live, "connect_s": connect_s, "nofile": nofile,
        "rate": rate, "triggers": total, "measured_triggers": measured_n, "window_s": elapsed,
        "frames": frames, "server_cpu_s": cpu, "frames_per_cpu_s": frames / cpu if cpu > 0 else 0.0,
        "server_cpu_share": cpu / elapsed if elapsed > 0 else 0.0,
        "frames_per_s": frames / elapsed if elapsed > 0 else 0.0,
        "loadgen_cpu_share": (o1 - o0) / elapsed if elapsed > 0 else 0.0,
        "events_measured": len(latencies), "missing_triggers": measured_n - len(seen), "incomplete": incomplete,
        "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies, default=0.0) * 1000, "first_p50_ms": percentile(firsts, 50) * 1000,
        "conflicts": shared.conflicts, "overflow": shared.overflow, "closed": shared.closed,
        "payload_size": shared.payload_size, "trigger_statuses": trigger.statuses, "answers": trigger.answers,
    }


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        plan = orjson.loads(f.read())
    if plan.get("uvloop"):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(run(plan))
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
