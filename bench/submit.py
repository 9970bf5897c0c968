"""Signed score submissions under load: `python -m bench.submit [--backend embedded|services|both]`.

For each backend it starts the real server (`python -m scoreboard.app`, its own process, a generated
config: a temp SQLite file with the memory backends, or a fresh PostgreSQL schema and a unique Redis key
prefix), registers and logs in one player per client, and drives `POST /scores/update` from a separate
load-generator process (`bench.loadgen`): one keep-alive connection and one session per client, requests
built and signed before the clock starts, sent back to back. Right after, the same load generator, with
the same clients and request shape, drives a Tornado hello-world server (`bench.hello`) for as long: the
baseline. `--rounds` such pairs run in alternation (both servers stay up), each with its own ratio, and
the verdict is on the medians: the machines this runs on are shared, and their speed drifts by tens of
percent within minutes. Target (issue "Signed score submissions"): at least 0.5x the hello-world rate,
p99 < 50 ms.

Rate limits and the per-minute action cap are set so high they never trigger; Argon2 is at the OWASP
floor so setting up the players is quick. Everything listens on 127.0.0.1 and is stopped, the schema
dropped and the Redis keys deleted afterwards. `--py-spy out.svg` samples the server during the
measured phase (`pip install py-spy`); `--uvloop` runs both servers on uvloop (`pip install uvloop`).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

from tests.harness import (
    Http,
    cleanup,
    free_port,
    merge,
    raw_config,
    register_and_login,
    stop_process,
    to_toml,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("SCOREBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("SCOREBOARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TARGET_RATIO, TARGET_P99_MS = 0.5, 50.0
UNLIMITED = "1000000/s"

# Limits out of the way (they are not what is measured), everything else at its default.
BENCH_SETTINGS: dict[str, Any] = {
    "server": {"log_level": "warning"},
    "ratelimit": {"per_user": UNLIMITED, "per_address": UNLIMITED},
    "auth": {"argon2_time_cost": 2, "argon2_memory_kib": 19_456, "register_limit_per_address": "100000/m",
             "login_limit_per_address": "100000/m", "login_limit_per_username": "100000/m"},
    "actions": {"level_complete": {"max_points": 1000, "max_per_minute": 10_000_000}},
}


@dataclass
class Run:
    """What one load-generator run measured (bench.loadgen's JSON), plus CPU use seen from outside."""

    result: dict
    server_cpu: float  # share of one core used by the server process during the measured phase
    machine_busy: float  # share of all cores busy during the measured phase
    busy_before: float  # share of all cores busy in the second before the run: others' load on the machine
    loop_cpu: float = 0.0  # the server's main thread (its event loop), share of one core; the rest is its threads
    services_cpu: dict[str, float] = field(default_factory=dict)  # redis-server, postgres: share of one core
    writer_cpu: float = 0.0  # the server's child processes (its writer process), share of one core

    def __getattr__(self, name: str) -> Any:
        try:
            return self.result[name]
        except KeyError:
            raise AttributeError(name) from None


class Child:
    """A child process (a server) whose stderr goes to a log file; stopped with SIGTERM."""

    def __init__(self, args: list[str], log_path: Path, url: str) -> None:
        self.log_path = log_path
        self.url = url
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_path.open("wb"))
        wait_healthy(url, self.proc, log_path, timeout=30)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)


def start_scoreboard(raw: dict, workdir: Path, use_uvloop: bool) -> Child:
    port = free_port()
    config_path = workdir / f"server-{port}.toml"
    config_path.write_text(to_toml(raw))
    module = "bench.uvloop_app" if use_uvloop else "scoreboard.app"
    return Child([sys.executable, "-m", module, "--config", str(config_path), "--port", str(port),
                  "--host", "127.0.0.1"], workdir / f"server-{port}.log", f"http://127.0.0.1:{port}")


def start_hello(workdir: Path, use_uvloop: bool, cpu: str) -> Child:
    port = free_port()
    args = [sys.executable, "-m", "bench.hello", "--port", str(port), "--cpu", cpu]
    args += ["--uvloop"] if use_uvloop else []
    return Child(args, workdir / f"hello-{port}.log", f"http://127.0.0.1:{port}")


def make_players(url: str, count: int) -> list[dict]:
    """One registered user with one fresh session per client (Argon2 runs on the server, so in parallel)."""
    tag = uuid.uuid4().hex[:8]
    http = Http(url)
    with ThreadPoolExecutor(4) as pool:
        logins = list(pool.map(lambda i: register_and_login(http, f"b{tag}_{i}"), range(count)))
    return [{"token": login["access_token"], "session_key": login["session_key"], "seq_start": 0}
            for login in logins]


def load(url: str, players: list[dict], plan: dict, workdir: Path, pid: int,
         py_spy: str | None = None) -> Run:
    """Run bench.loadgen once against `url`; CPU use of `pid` is sampled over the measured phase."""
    port = urlparse(url).port
    plan = {"host": "127.0.0.1", "port": port, "clients": players, **plan}
    plan_path = workdir / f"plan-{uuid.uuid4().hex[:8]}.json"
    plan_path.write_bytes(orjson.dumps(plan))
    busy_before = _busy_over(1.0)
    proc = subprocess.Popen([sys.executable, "-m", "bench.loadgen", str(plan_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    spy = None
    cpu_start = machine_start = cpu_end = machine_end = None
    result: dict | None = None
    try:
        for line in proc.stdout:
            line = line.strip()
            if line == "measuring":
                cpu_start, machine_start, loop_start = _process_cpu(pid), _machine_cpu(), _process_cpu(pid, pid)
                services_start, writer_start = _services_cpu(), _children_cpu(pid)
                if py_spy:
                    spy = start_py_spy(py_spy, pid, plan.get("seconds", 10))
            elif line == "done":
                cpu_end, machine_end, loop_end = _process_cpu(pid), _machine_cpu(), _process_cpu(pid, pid)
                services_end, writer_end = _services_cpu(), _children_cpu(pid)
            elif line.startswith("{"):
                result = orjson.loads(line)
        if proc.wait() != 0 or result is None:
            raise RuntimeError(f"load generator failed (exit {proc.returncode})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if spy is not None:
            spy.wait(60)
    elapsed = result["elapsed_s"]
    server_cpu = (cpu_end - cpu_start) / elapsed if cpu_start is not None and cpu_end is not None else 0.0
    busy = _busy(machine_start, machine_end) if machine_start and machine_end else 0.0
    loop_cpu = (loop_end - loop_start) / elapsed if cpu_start is not None and cpu_end is not None else 0.0
    services = {name: (services_end[name] - services_start.get(name, 0.0)) / elapsed for name in services_end} \
        if cpu_start is not None and cpu_end is not None else {}
    writer_cpu = (writer_end - writer_start) / elapsed if cpu_start is not None and cpu_end is not None else 0.0
    return Run(result, server_cpu, busy, busy_before, loop_cpu, services, writer_cpu)


def _process_cpu(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of a process (all its threads), or of one of its threads."""
    return _stat(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")[1]


def _stat(path: str) -> tuple[str, float]:
    """A /proc stat file's command name and user + system CPU seconds."""
    with open(path) as f:
        head, _, rest = f.read().rpartition(")")
    fields = rest.split()
    return head.partition("(")[2], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu(pid: int) -> float:
    """User + system CPU seconds of the process's living children (the server's writer process)."""
    total = 0.0
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            with open(f"{task.path}/children") as f:
                children = f.read().split()
            total += sum(_stat(f"/proc/{child}/stat")[1] for child in children)
        except OSError:  # gone meanwhile
            continue
    return total


SERVICES = ("redis-server", "postgres")


def _services_cpu() -> dict[str, float]:
    """User + system CPU seconds of every redis-server and postgres process on the machine, by name.
    A process that ends meanwhile takes its seconds with it: an estimate from below."""
    totals = dict.fromkeys(SERVICES, 0.0)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            name, seconds = _stat(f"/proc/{entry.name}/stat")
        except OSError:  # gone meanwhile
            continue
        if name in totals:
            totals[name] += seconds
    return totals


def _machine_cpu() -> tuple[int, int]:
    """(total, idle) jiffies of all cores."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]


def _busy(start: tuple[int, int], end: tuple[int, int]) -> float:
    total = end[0] - start[0]
    return 1 - (end[1] - start[1]) / total if total else 0.0


def _busy_over(seconds: float) -> float:
    start = _machine_cpu()
    time.sleep(seconds)
    return _busy(start, _machine_cpu())


def start_py_spy(path: str, pid: int, seconds: float, gil_only: bool = True) -> subprocess.Popen:
    """py-spy on the server: by default only the thread holding the GIL (where the one core of Python goes)."""
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--py-spy needs py-spy: pip install py-spy")
    fmt = {".svg": "flamegraph", ".txt": "raw", ".json": "speedscope"}.get(Path(path).suffix, "flamegraph")
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                             "--rate", "250", *(["--gil"] if gil_only else []), "--format", fmt, "--output", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def loadgen_cpus(server_cpu: str) -> list[int]:
    """The CPUs the load generator keeps to: all but the servers' one, so that it never takes turns with
    the server under test on its CPU (it would, unpinned, at the scheduler's whim). [] when not pinned."""
    others = sorted(os.sched_getaffinity(0) - ({int(server_cpu)} if server_cpu else set()))
    return others if server_cpu and others else []


def bench_backend(backend: str, args: argparse.Namespace, workdir: Path) -> list[dict]:
    """`args.rounds` rounds of (scoreboard, hello-world) runs, alternating, both servers up throughout: on a
    machine whose speed drifts (a shared host), each ratio compares runs a few seconds apart."""
    raw = merge(merge(raw_config(backend, workdir, REDIS_URL, POSTGRES_URL), BENCH_SETTINGS),
                {"server": {"cpu_affinity": args.cpu}})
    server = hello = None
    away = loadgen_cpus(args.cpu)
    try:
        server = start_scoreboard(raw, workdir, args.uvloop)
        hello = start_hello(workdir, args.uvloop, args.cpu)
        players = make_players(server.url, args.clients)
        budget = math.ceil(args.max_rps * (args.warmup + args.seconds) / args.clients)
        plan = {"warmup_s": args.warmup, "seconds": args.seconds, "cpus": away, "budget": budget}
        rows = []
        for number in range(1, args.rounds + 1):
            spy_path = f"{args.py_spy.removesuffix(Path(args.py_spy).suffix)}-{backend}{Path(args.py_spy).suffix}" \
                if args.py_spy and number == 1 else None
            scoreboard = load(server.url, players, plan, workdir, server.pid, spy_path)
            for player in players:  # the next round's requests carry higher seqs
                player["seq_start"] += budget
            # The baseline: the same clients, request shape and plan, right after.
            baseline = load(hello.url, players, plan, workdir, hello.pid)
            rows.append({"backend": backend, "round": number, "scoreboard": scoreboard, "hello": baseline,
                         "py_spy": spy_path, "commits": None})
        rows[-1]["commits"] = writer_counts(server.url)
        return rows
    finally:
        for child in (server, hello):
            if child is not None:
                child.stop()
        cleanup(raw)


def writer_counts(url: str) -> tuple[float, float]:
    """(write jobs, transactions) the server's writer committed in its life, from /metrics."""
    counts = {}
    for line in Http(url).get("/metrics").raw.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in ("scoreboard_db_committed_jobs_total", "scoreboard_db_group_commits_total"):
            counts[name] = float(value)
    return counts.get("scoreboard_db_committed_jobs_total", 0.0), counts.get("scoreboard_db_group_commits_total", 0.0)


def report(rows: list[dict], args: argparse.Namespace) -> bool:
    loop = "uvloop" if args.uvloop else "asyncio"
    away = loadgen_cpus(args.cpu)
    pinned = (f"both servers on CPU {args.cpu}, the load generator on CPU {','.join(map(str, away))}"
              if away else f"both servers on CPU {args.cpu}" if args.cpu else "servers on any CPU")
    print(f"\n{args.clients} clients, {args.seconds:g} s measured after {args.warmup:g} s warm-up, "
          f"server event loop: {loop}, {os.cpu_count()} cores, {pinned}\n")
    header = (f"{'backend':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'hello req/s':>12} "
              f"{'hello p99':>10} {'ratio':>6} {'srv cpu':>8} {'busy':>6}  verdict")
    print(header)
    print("-" * len(header))
    verdicts = {}
    for row in rows:
        sb, hello = row["scoreboard"], row["hello"]
        ratio = sb.rps / hello.rps if hello.rps else 0.0
        # A run that ran out of pre-built requests measured the budget, not the server: no verdict on it.
        valid = not sb.non_200 and sb.measured > 0 and not sb.exhausted and not hello.exhausted
        met = _meets(ratio, sb.p99_ms, valid)
        verdicts.setdefault(row["backend"], []).append((ratio, sb.p99_ms, valid))
        label = f"{row['backend']} #{row['round']}" if args.rounds > 1 else row["backend"]
        print(f"{label:<12} {sb.rps:>8,.0f} {sb.p50_ms:>8.2f} {sb.p99_ms:>8.2f} {hello.rps:>12,.0f} "
              f"{hello.p99_ms:>10.2f} {ratio:>6.2f} {sb.server_cpu:>7.0%} {sb.machine_busy:>6.0%}  "
              f"{'met' if met else 'NOT met'}")
    all_met = True
    for backend, rounds in verdicts.items():
        ratio, p99 = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        met = _meets(ratio, p99, all(r[2] for r in rounds))
        all_met &= met
        if args.rounds > 1:
            print(f"{backend + ' median':<12} {'':>8} {'':>8} {p99:>8.2f} {'':>12} {'':>10} {ratio:>6.2f} "
                  f"{'':>8} {'':>6}  {'met' if met else 'NOT met'}")
    print(f"\ntarget: >= {TARGET_RATIO}x hello-world req/s and p99 < {TARGET_P99_MS:g} ms; srv cpu = the "
          "server process's share of one core, busy = share of all cores in use (measured phase)")
    for row in rows:
        for name in ("scoreboard", "hello"):
            run = row[name]
            notes = []
            if run.non_200:
                notes.append("non-200: " + ", ".join(f"{k} x{v}" for k, v in sorted(run.non_200.items())))
            if run.exhausted:
                notes.append(f"{run.exhausted} clients ran out of pre-built requests (raise --max-rps)")
            per_request = run.elapsed_s / run.measured * 1000 if run.measured else 0.0
            cpu_ms, loop_ms = run.server_cpu * per_request, run.loop_cpu * per_request
            label = f"{row['backend']} #{row['round']}"
            if name == "scoreboard":
                _print_cpu_budget(label, run, per_request, TARGET_RATIO * row["hello"].rps)
            print(f"  {label} {name}: {run.measured:,} measured in {run.elapsed_s:.2f} s, "
                  f"max {run.max_ms:.1f} ms, server CPU {cpu_ms:.2f} ms per request "
                  f"({loop_ms:.2f} event loop, {cpu_ms - loop_ms:.2f} other threads), "
                  f"writer process {run.writer_cpu * per_request:.2f} ms, "
                  f"load generator {run.loadgen_cpu_s / run.elapsed_s:.0%} of a core, "
                  f"machine {run.busy_before:.0%} busy just before"
                  + ("; " + "; ".join(notes) if notes else ""))
        jobs, transactions = row["commits"] or (0, 0)
        if transactions:
            print(f"  {row['backend']}: {jobs:,.0f} write jobs in {transactions:,.0f} transactions "
                  f"({jobs / transactions:.1f} per commit, whole run)")
        if row["py_spy"]:
            print(f"  {row['backend']}: py-spy profile of the measured phase in {row['py_spy']}")
    return all_met


def _meets(ratio: float, p99_ms: float, valid: bool) -> bool:
    """The issue's target, for one round or for the medians of a backend's rounds."""
    return valid and ratio >= TARGET_RATIO and p99_ms < TARGET_P99_MS


def _print_cpu_budget(backend: str, run: Run, per_request: float, target_rps: float) -> None:
    """Where the machine's CPU went per request, and how many cores the target rate would take at that cost."""
    machine_ms = run.machine_busy * (os.cpu_count() or 1) * per_request
    parts = [("server", run.server_cpu), ("its writer process", run.writer_cpu),
             ("load generator", run.loadgen_cpu_s / run.elapsed_s),
             *sorted((name, share) for name, share in run.services_cpu.items() if share * per_request >= 0.005)]
    print(f"  {backend} scoreboard: machine CPU {machine_ms:.2f} ms per request ("
          + ", ".join(f"{who} {share * per_request:.2f}" for who, share in parts)
          + f"); {target_rps:,.0f} req/s (the target) at that cost would take "
            f"{target_rps * machine_ms / 1000:.2f} of {os.cpu_count()} cores")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["embedded", "services", "both"], default="both")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured phase before it")
    parser.add_argument("--rounds", type=int, default=3,
                        help="(scoreboard, hello-world) pairs run in alternation; the verdict is on the medians")
    parser.add_argument("--max-rps", type=int, default=20000,
                        help="requests are built up front for at most this rate (default 20000): the baseline "
                             "must never run out, or the ratio flatters the scoreboard")
    parser.add_argument("--uvloop", action="store_true", help="run the servers on uvloop (pip install uvloop)")
    parser.add_argument("--cpu", default=str(max(os.sched_getaffinity(0))),
                        help="the CPU both servers are pinned to, one after the other (server.cpu_affinity); "
                             "'' for none. Default: the last CPU. The load generator runs on the others")
    parser.add_argument("--py-spy", metavar="PATH", help="record the server with py-spy (.svg, .txt raw, .json)")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 1000 or not 0 < args.seconds <= 120 or not 0 <= args.warmup <= 60 \
            or not 1 <= args.rounds <= 10:
        parser.error("bounded runs only: 1-1000 clients, 0-120 s measured, 0-60 s warm-up, 1-10 rounds")
    if args.warmup + args.seconds > 240:
        parser.error("warm-up plus measured time must stay inside the 300 s signing window")
    for url in (REDIS_URL, POSTGRES_URL):
        if urlparse(url).hostname not in LOOPBACK:
            parser.error(f"{url} is not a loopback address: this benchmark only talks to 127.0.0.1")
    if args.uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error("--uvloop needs uvloop: pip install uvloop")
    backends = ["embedded", "services"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        rows = [row for backend in backends for row in bench_backend(backend, args, Path(tmp))]
        met = report(rows, args)
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
