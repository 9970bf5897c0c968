"""Realtime fan-out: `python -m bench.fanout [--subscribers 1000,10000] [--seconds 10] [--rate N]
[--backend embedded|services]`.

For each subscriber count N, three servers in turn, each its own process on 127.0.0.1, each facing the
same load generator (`bench.fanout_clients`, a separate process: N WebSocket clients and one trigger):

1. the scoreboard (`python -m scoreboard.app` under `ulimit -n 65536`, or the hard limit if lower): N
   anonymous spectators subscribed to `leaderboard:global`; the trigger is a real signed
   `POST /scores/update` of one bench player (pre-signed, one keep-alive connection, written at a steady
   rate). Nine seeded players make the `top` event a full top 10. `broadcast.interval_ms` is 5 ms and the
   rate at most 25/s, so every submission is its own top-N tick and its own event: the benchmark
   measures the fan-out of every event, not conflation (a merged tick shows as a missing trigger). The
   latency therefore includes the submission itself (signature, transaction, index), the 5 ms tick wait
   and the board read.
2. the Tornado baseline (`bench.fanout_peers --kind tornado`): `write_message(msg)` in a loop over the
   connections;
3. the websockets baseline (`--kind websockets`): `websockets.broadcast(connections, msg)`.

Baselines send a message of the size of the scoreboard's `top` event message and are triggered by a
one-line WebSocket message on one more connection, far cheaper than a signed submission. So two figures:
- all-in: frames the clients received in the measured window / the server process's CPU time (utime +
  stime, all threads) over the same window: everything the server spent, the submissions included;
- fan-out only: the same, with each event's own cost taken out: before the runs, each server gets the
  same trigger at 25/s with one subscriber, and its CPU per event (the submission, for the scoreboard)
  times the events of the window is subtracted.
Latency: trigger written -> the last of the N clients received that event (p50/p99 over the measured
events; at 4 events/s for 10 s, p99 is the slowest of 40). Memory (scoreboard): VmRSS with N connections
open and subscribed, nothing sent yet, minus VmRSS just before they connected, over N.

Default rate: 40,000 frames/s in all (25 events/s at 1k, 4/s at 10k). The write_message loop cannot keep
up with that on one core: it falls behind, so its latency grows through the run; its frames per
CPU-second are then those of a saturated loop, its best case.

Targets (issue "Realtime hub"): >= 3.5x the write_message loop and >= 1.2x websockets.broadcast() in
frames per server CPU-second, p99 < 250 ms at 10k subscribers, <= 20 KB per idle connection at 10k.
Exit status 0 when all are met on the all-in figures. `--py-spy PATH` records the scoreboard during each
measured phase (.svg, .txt raw, .json); `--set websocket.ping_interval_s=0` overrides a scoreboard setting.
"""

from __future__ import annotations

import argparse
import base64
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

from bench.loadgen import build_requests
from bench.submit import BENCH_SETTINGS, LOOPBACK, POSTGRES_URL, REDIS_URL, ROOT, Child, _busy_over, start_py_spy
from tests.harness import Http, Player, cleanup, free_port, merge, raw_config, register_and_login, to_toml

TARGET_VS_TORNADO, TARGET_VS_WEBSOCKETS, TARGET_P99_MS, TARGET_KB = 3.5, 1.2, 250.0, 20.0
TARGET_AT = 10_000  # latency and memory targets apply at this many subscribers
POINTS = 10  # per bench submission: the bench player's score tells which submission an event carries
SEEDS = 9  # other players on the board, so the top event is a full top 10
INTERVAL_MS = 5
MAX_RATE = 25.0  # with INTERVAL_MS = 5: every submission its own tick, with room to spare
FRAMES_PER_S = 40_000  # default rate: about this many frames/s whatever N
RUN_TIMEOUT_S = 300.0  # one load-generator run, connecting included
SETTLE_S = 2.0  # after the last connection, before memory is read and triggers start
CHANNEL = "leaderboard:global"
DEFAULT_SIZE = 750  # baseline message size when the scoreboard is not run (--servers)
CALIBRATION_RATE, CALIBRATION_S = 25.0, 6.0  # the per-event cost run: 1 subscriber, 150 events
SERVERS = ("scoreboard", "tornado", "websockets")


def default_rate(n: int) -> float:
    return max(1.0, min(MAX_RATE, FRAMES_PER_S / n))


def vm_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_with_nofile(args: list[str], log_path: Path, url: str) -> Child:
    """A child under `ulimit -n 65536` (as far as allowed); exec keeps the pid."""
    script = f"ulimit -n 65536 2>/dev/null || ulimit -n $(ulimit -Hn); exec {shlex.join(args)}"
    return Child(["bash", "-c", script], log_path, url)


def start_scoreboard(raw: dict, workdir: Path) -> Child:
    port = free_port()
    config_path = workdir / f"server-{port}.toml"
    config_path.write_text(to_toml(raw))
    return start_with_nofile([sys.executable, "-m", "scoreboard.app", "--config", str(config_path), "--port",
                              str(port), "--host", "127.0.0.1"], workdir / f"server-{port}.log",
                             f"http://127.0.0.1:{port}")


def start_peer(kind: str, size: int, workdir: Path) -> Child:
    port = free_port()
    return start_with_nofile([sys.executable, "-m", "bench.fanout_peers", "--kind", kind, "--port", str(port),
                              "--size", str(size)], workdir / f"{kind}-{port}.log", f"http://127.0.0.1:{port}")


def seed_board(url: str) -> dict:
    """The bench player (no score yet) and SEEDS players with 1..SEEDS points; returns the bench player."""
    tag = uuid.uuid4().hex[:8]
    http = Http(url)
    with ThreadPoolExecutor(4) as pool:
        logins = list(pool.map(lambda i: register_and_login(http, f"fan{tag}_{i}"), range(SEEDS + 1)))
    for points, login in enumerate(logins[1:], start=1):
        answer = Player(http, "", login=login).submit(points=points)
        if answer.status != 200:
            raise RuntimeError(f"seed submission refused: {answer.status} {answer.raw[:200]!r}")
    bench = logins[0]
    return {"token": bench["access_token"], "session_key": bench["session_key"], "seq_start": 0,
            "user_id": bench["user"]["user_id"]}


def drive(server: Child, plan: dict, workdir: Path, py_spy: str | None = None) -> dict:
    """Run the load generator against `server`; adds idle memory (rss before/after connecting)."""
    plan = {"host": "127.0.0.1", "port": urlparse(server.url).port, "server_pid": server.pid, **plan}
    plan_path = workdir / f"plan-{uuid.uuid4().hex[:8]}.json"
    plan_path.write_bytes(orjson.dumps(plan))
    rss_before = vm_rss_kb(server.pid)
    proc = subprocess.Popen([sys.executable, "-m", "bench.fanout_clients", str(plan_path)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(RUN_TIMEOUT_S, proc.kill)  # the load generator bounds itself; this is the backstop
    watchdog.start()
    spy = None
    result: dict[str, Any] | None = None
    ready = ""
    try:
        for line in proc.stdout:
            line = line.strip()
            if line.startswith("ready"):
                ready = line
                time.sleep(SETTLE_S)
                rss_idle = vm_rss_kb(server.pid)
                busy_before = _busy_over(0.5)
                if py_spy:
                    # every thread, not only the one holding the GIL: a send() runs without it
                    spy = start_py_spy(py_spy, server.pid, plan["warmup_s"] + plan["seconds"], gil_only=False)
                proc.stdin.write("go\n")
                proc.stdin.flush()
            elif line.startswith("{"):
                result = orjson.loads(line)
        if proc.wait() != 0 or result is None:
            log = server.log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"load generator failed (exit {proc.returncode}); server log: {log}")
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if spy is not None:
            spy.wait(120)
    result.update(rss_before_kb=rss_before, rss_idle_kb=rss_idle, ready=ready, busy_before=busy_before,
                  kb_per_conn=(rss_idle - rss_before) / plan["subscribers"])
    return result


def common_plan(n: int, rate: float, warmup: float, seconds: float, args: argparse.Namespace) -> dict:
    return {"subscribers": n, "path": "/ws", "rate": rate, "warmup_s": warmup, "seconds": seconds,
            "uvloop": args.client_uvloop}


def run_scoreboard(n: int, rate: float, warmup: float, seconds: float, args: argparse.Namespace, workdir: Path,
                   py_spy: str | None = None) -> dict:
    total = round(warmup * rate) + max(1, round(seconds * rate))
    settings = merge(BENCH_SETTINGS, {"broadcast": {"interval_ms": INTERVAL_MS},
                                      "websocket": {"max_connections": max(20_000, n + 100)}})
    for section, values in args.overrides.items():
        settings = merge(settings, {section: {**settings.get(section, {}), **values}})
    raw = merge(raw_config(args.backend, workdir, REDIS_URL, POSTGRES_URL), settings)
    server = None
    try:
        server = start_scoreboard(raw, workdir)
        player = seed_board(server.url)
        port = urlparse(server.url).port
        requests = build_requests("127.0.0.1", port, "/scores/update", player, total, time.time_ns() // 1_000_000)
        plan = {**common_plan(n, rate, warmup, seconds, args), "subscribe": {"op": "subscribe", "channel": CHANNEL},
                "trigger": "http", "requests": [base64.b64encode(r).decode() for r in requests], "decode": "score",
                "user_id": player["user_id"], "score_base": 0, "points": POINTS}
        return drive(server, plan, workdir, py_spy)
    finally:
        if server is not None:
            server.stop()
        cleanup(raw)


def run_peer(kind: str, n: int, rate: float, warmup: float, seconds: float, size: int, args: argparse.Namespace,
             workdir: Path) -> dict:
    peer = start_peer(kind, size, workdir)
    try:
        return drive(peer, {**common_plan(n, rate, warmup, seconds, args), "subscribe": None, "trigger": "ws",
                            "trigger_path": "/pub", "decode": "seq"}, workdir)
    finally:
        peer.stop()


def calibrate(args: argparse.Namespace, workdir: Path) -> dict:
    """Per server, the CPU one event costs apart from its fan-out: one subscriber, CALIBRATION_RATE/s."""
    out: dict[str, Any] = {"size": DEFAULT_SIZE}
    rate, warmup, seconds = CALIBRATION_RATE, 1.0, CALIBRATION_S
    for name in args.servers:
        if name == "scoreboard":
            run = run_scoreboard(1, rate, warmup, seconds, args, workdir)
            out["size"] = run["payload_size"] or DEFAULT_SIZE
        else:
            run = run_peer(name, 1, rate, warmup, seconds, out["size"], args, workdir)
        events = run["frames"]  # one subscriber: one frame per event
        out[name] = {"events": events, "server_cpu_s": run["server_cpu_s"],
                     "cpu_per_event_ms": run["server_cpu_s"] / events * 1000 if events else 0.0}
    return out


def bench_size(n: int, args: argparse.Namespace, calibration: dict, workdir: Path) -> dict:
    rate = args.rate or default_rate(n)
    row: dict[str, Any] = {"subscribers": n, "rate": rate}
    for name in SERVERS:
        if name not in args.servers:
            row[name] = None
            continue
        if name == "scoreboard":
            spy = f"{args.py_spy.removesuffix(Path(args.py_spy).suffix)}-{n}{Path(args.py_spy).suffix}" \
                if args.py_spy else None
            run = run_scoreboard(n, rate, args.warmup, args.seconds, args, workdir, spy)
            row["py_spy"] = spy
        else:
            run = run_peer(name, n, rate, args.warmup, args.seconds, calibration["size"], args, workdir)
        # Fan-out only: the events of the window (frames / N) each cost what one costs with 1 subscriber.
        fixed = run["frames"] / n * calibration[name]["cpu_per_event_ms"] / 1000
        fanout_cpu = run["server_cpu_s"] - fixed
        run["fanout_cpu_s"] = fanout_cpu
        run["fanout_frames_per_cpu_s"] = run["frames"] / fanout_cpu if fanout_cpu > 0 else 0.0
        row[name] = run
    return row


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _fmt(run: dict | None, key: str, spec: str) -> str:
    return format(run[key], spec) if run else "-"


def _ratio(row: dict, key: str, base: str) -> float | None:
    sb, other = row["scoreboard"], row[base]
    return sb[key] / other[key] if sb and other and other[key] else None


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(rows: list[dict], calibration: dict, args: argparse.Namespace) -> bool:
    """Print the tables and verdicts; True when every target is met on the all-in figures."""
    print(f"\nbackend {args.backend}, {args.seconds:g} s measured after {args.warmup:g} s warm-up, "
          f"{os.cpu_count()} cores, load generator on {'uvloop' if args.client_uvloop else 'asyncio'}, "
          f"servers on asyncio\n")
    print("frames delivered per server CPU-second, all-in (everything the server process spent in the window); "
          "latency = trigger -> last subscriber")
    header = (f"{'subs':>6} {'rate/s':>7} {'scoreboard':>11} {'write_msg':>10} {'ws.bcast':>10} {'x wm':>6} "
              f"{'x ws':>6} {'p50 ms':>7} {'p99 ms':>7} {'wm p99':>7} {'ws p99':>7} {'KB/conn':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        sb, tw, ws = row["scoreboard"], row["tornado"], row["websockets"]
        row["x_tornado"] = _ratio(row, "frames_per_cpu_s", "tornado")
        row["x_websockets"] = _ratio(row, "frames_per_cpu_s", "websockets")
        row["fanout_x_tornado"] = _ratio(row, "fanout_frames_per_cpu_s", "tornado")
        row["fanout_x_websockets"] = _ratio(row, "fanout_frames_per_cpu_s", "websockets")
        print(f"{row['subscribers']:>6,} {row['rate']:>7.1f} {_fmt(sb, 'frames_per_cpu_s', ',.0f'):>11} "
              f"{_fmt(tw, 'frames_per_cpu_s', ',.0f'):>10} {_fmt(ws, 'frames_per_cpu_s', ',.0f'):>10} "
              f"{_x(row['x_tornado']):>6} {_x(row['x_websockets']):>6} {_fmt(sb, 'p50_ms', '.1f'):>7} "
              f"{_fmt(sb, 'p99_ms', '.1f'):>7} {_fmt(tw, 'p99_ms', '.1f'):>7} {_fmt(ws, 'p99_ms', '.1f'):>7} "
              f"{_fmt(sb, 'kb_per_conn', '.1f'):>8}")
    costs = ", ".join(f"{name} {calibration[name]['cpu_per_event_ms']:.2f} ms" for name in SERVERS
                      if name in calibration)
    print(f"\nfan-out only: the same runs with each event's own cost taken out (measured per server with 1 "
          f"subscriber at {CALIBRATION_RATE:g}/s: {costs};\nthe scoreboard's event is a signed submission, a "
          f"baseline's a one-line WebSocket message)")
    header = f"{'subs':>6} {'scoreboard':>11} {'write_msg':>10} {'ws.bcast':>10} {'x wm':>6} {'x ws':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        sb, tw, ws = row["scoreboard"], row["tornado"], row["websockets"]
        print(f"{row['subscribers']:>6,} {_fmt(sb, 'fanout_frames_per_cpu_s', ',.0f'):>11} "
              f"{_fmt(tw, 'fanout_frames_per_cpu_s', ',.0f'):>10} {_fmt(ws, 'fanout_frames_per_cpu_s', ',.0f'):>10} "
              f"{_x(row['fanout_x_tornado']):>6} {_x(row['fanout_x_websockets']):>6}")
    print()
    met = all(row["scoreboard"] and row["tornado"] and row["websockets"] for row in rows)
    for row in rows:
        n, sb = row["subscribers"], row["scoreboard"]
        if row["x_tornado"] is not None and row["x_websockets"] is not None:
            ok_tw, ok_ws = row["x_tornado"] >= TARGET_VS_TORNADO, row["x_websockets"] >= TARGET_VS_WEBSOCKETS
            fan_tw = row["fanout_x_tornado"] >= TARGET_VS_TORNADO
            fan_ws = row["fanout_x_websockets"] >= TARGET_VS_WEBSOCKETS
            clean = _clean(sb)
            print(f"{n:,} subscribers: >= {TARGET_VS_TORNADO}x write_message {verdict(ok_tw)} all-in, "
                  f"{verdict(fan_tw)} fan-out only; >= {TARGET_VS_WEBSOCKETS}x websockets.broadcast "
                  f"{verdict(ok_ws)} all-in, {verdict(fan_ws)} fan-out only"
                  + ("" if clean else "; the run was not clean (see below)"))
            met &= ok_tw and ok_ws and clean
        if sb and n >= TARGET_AT:
            ok_p99, ok_kb = sb["p99_ms"] < TARGET_P99_MS, sb["kb_per_conn"] <= TARGET_KB
            print(f"{n:,} subscribers: p99 {sb['p99_ms']:.1f} ms < {TARGET_P99_MS:g} ms {verdict(ok_p99)}; "
                  f"{sb['kb_per_conn']:.1f} KB per idle connection <= {TARGET_KB:g} KB {verdict(ok_kb)}")
            met &= ok_p99 and ok_kb
    if not any(row["subscribers"] >= TARGET_AT for row in rows):
        print(f"(latency and memory targets apply at {TARGET_AT:,} subscribers: not run)")
        met = False
    print("\ndetails (srv = server CPU share of one core in the window, gen = load generator's):")
    for row in rows:
        for name in SERVERS:
            run = row[name]
            if run is None:
                continue
            notes = []
            if run["missing_triggers"]:
                notes.append(f"{run['missing_triggers']} measured triggers without their own event")
            if run["incomplete"]:
                notes.append(f"{run['incomplete']} events not received by every subscriber")
            if run["closed"]:
                notes.append("closed by the server: " + ", ".join(f"{k} x{v}" for k, v in run["closed"].items()))
            if run["trigger_statuses"]:
                notes.append("submissions refused: "
                             + ", ".join(f"{k} x{v}" for k, v in run["trigger_statuses"].items()))
            if run["conflicts"] or run["overflow"]:
                notes.append(f"sample conflicts {run['conflicts']}, overflow {run['overflow']}")
            print(f"  {row['subscribers']:,}/{name}: {run['frames']:,} frames in {run['window_s']:.2f} s "
                  f"({run['frames_per_s']:,.0f}/s), server CPU {run['server_cpu_s']:.2f} s "
                  f"(srv {run['server_cpu_share']:.0%}, gen {run['loadgen_cpu_share']:.0%}), "
                  f"{run['events_measured']} events, p50 {run['p50_ms']:.1f} / p99 {run['p99_ms']:.1f} / "
                  f"max {run['max_ms']:.1f} ms (first subscriber p50 {run['first_p50_ms']:.1f}), "
                  f"RSS {run['rss_before_kb'] / 1024:.0f} -> "
                  f"{run['rss_idle_kb'] / 1024:.0f} MB ({run['kb_per_conn']:.1f} KB/conn), "
                  f"message {run['payload_size']} B, connect {run['connect_s']:.1f} s, "
                  f"machine {run['busy_before']:.0%} busy before" + ("; " + "; ".join(notes) if notes else ""))
        if row.get("py_spy"):
            print(f"  {row['subscribers']:,}: py-spy profile of the scoreboard in {row['py_spy']}")
    return met


def _clean(run: dict) -> bool:
    return not (run["missing_triggers"] or run["incomplete"] or run["closed"] or run["trigger_statuses"]
                or run["conflicts"] or run["overflow"]) and run["events_measured"] > 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Realtime fan-out: frames per server CPU-second and "
                                     "submit-to-last-subscriber latency, against two baselines.")
    parser.add_argument("--subscribers", default="1000,10000", help="comma-separated counts (default 1000,10000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured phase (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured phase before it (default 2)")
    parser.add_argument("--rate", type=float, default=None,
                        help=f"submissions (events)/s, steady; default {FRAMES_PER_S:,}/N capped at {MAX_RATE:g}")
    parser.add_argument("--backend", choices=["embedded", "services"], default="embedded")
    parser.add_argument("--client-uvloop", action=argparse.BooleanOptionalAction, default=True,
                        help="run the load generator (not the servers) on uvloop when installed (default on)")
    parser.add_argument("--py-spy", metavar="PATH", help="record the scoreboard with py-spy (.svg, .txt, .json)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="which of scoreboard,tornado,websockets to run (default all; ratios need all)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                        help="override a scoreboard setting, e.g. --set websocket.ping_interval_s=0")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    args = parser.parse_args(argv)
    try:
        counts = [int(x) for x in args.subscribers.split(",") if x.strip()]
    except ValueError:
        parser.error("--subscribers: comma-separated integers")
    args.overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            parser.error(f"--set {item!r}: use SECTION.KEY=VALUE")
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            parsed = value
        args.overrides.setdefault(section, {})[name] = parsed
    args.servers = [x.strip() for x in args.servers.split(",") if x.strip()]
    if not args.servers or set(args.servers) - set(SERVERS):
        parser.error(f"--servers: some of {','.join(SERVERS)}")
    if not counts or any(not 1 <= n <= 15_000 for n in counts):
        parser.error("bounded runs only: 1-15,000 subscribers")
    if not 0 < args.seconds <= 60 or not 0 <= args.warmup <= 30:
        parser.error("bounded runs only: 0-60 s measured, 0-30 s warm-up")
    if args.rate is not None and not 0 < args.rate <= MAX_RATE:
        parser.error(f"--rate: 0-{MAX_RATE:g}/s (above, {INTERVAL_MS} ms ticks would start merging submissions)")
    if args.backend == "services":
        for url in (REDIS_URL, POSTGRES_URL):
            if urlparse(url).hostname not in LOOPBACK:
                parser.error(f"{url} is not a loopback address: this benchmark only talks to 127.0.0.1")
    if args.client_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            args.client_uvloop = False
    with tempfile.TemporaryDirectory(prefix="sb-fanout-") as tmp:
        calibration = calibrate(args, Path(tmp))
        rows = [bench_size(n, args, calibration, Path(tmp)) for n in counts]
    met = report(rows, calibration, args)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps({"calibration": calibration, "rows": rows},
                                                 option=orjson.OPT_INDENT_2))
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
