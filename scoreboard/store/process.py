"""The writer process: offloaded batch jobs committed by a child interpreter with its own GIL.

A writer thread shares the event loop's GIL: each of its database calls lets go of the GIL and then has
to win it back from a busy loop, which cost more than the writes themselves (docs/benchmarks.md). For
the batch keys registered with `offload=True`, Store hands the jobs to this class instead. The event loop
sends each turn's jobs in one frame to `python -m scoreboard.store.writer_child`, which group-commits
them with an ordinary Store of its own and answers each job after its transaction committed.

Nothing acknowledged is lost when the child dies: its jobs in flight run again on the parent's writer
thread (an action the child did commit is found there and answers as a duplicate), the Store's
rerun_listeners hear which ones were in flight, and a new child is started. The child reports its own
reruns (a connection lost at COMMIT) by job id, and the listeners hear of those too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("scoreboard.store")
LENGTH = struct.Struct("<I")
RESTARTS_PER_MINUTE = 5  # beyond this the child is given up on and the thread writes instead


def frame(message: Any) -> bytes:
    """A message as the pipe carries it: its pickle's length, then the pickle."""
    body = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message, or None at the end of the stream (the other side closed or died)."""
    try:
        head = await reader.readexactly(LENGTH.size)
        return pickle.loads(await reader.readexactly(LENGTH.unpack(head)[0]))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class WriterProcess:
    """The parent's side: sends jobs, settles their futures from the answers, restarts a dead child."""

    def __init__(self, setup: dict, store, rerun: Callable[[Any], None]) -> None:
        self.setup = setup  # url, timeout_s, group_commit_max, handlers {key: function}, avoid_cpus
        self.store = store  # its stats count the child's commits; heard_rerun tells its rerun_listeners
        self.rerun = rerun  # puts a job on the parent's writer thread
        self.proc: asyncio.subprocess.Process | None = None
        self.in_flight: dict[int, Any] = {}  # job id -> store.db.Job
        self.outbox: list[tuple[int, str, Any]] = []
        self.next_id = 0
        self.closing = False
        self.deaths: list[float] = []
        self.reading: asyncio.Task | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.ready = asyncio.Event()  # the current child answered its first (empty) frame

    @property
    def alive(self) -> bool:
        return self.proc is not None and not self.closing

    def takes(self, batch_key: str | None) -> bool:
        """Whether a job with this key goes to the child now (it was registered before the child started)."""
        return self.alive and batch_key in self.setup["handlers"]

    async def start(self) -> None:
        self.ready.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scoreboard.store.writer_child", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.proc.stdin.write(frame(self.setup))
        self.reading = asyncio.ensure_future(self._read_answers(self.proc))

    def submit(self, job) -> None:
        """Send `job` (it has a batch_key and an item) with the rest of this loop turn's jobs."""
        job_id, self.next_id = self.next_id, self.next_id + 1
        self.in_flight[job_id] = job
        self.idle.clear()
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self._send)
        self.outbox.append((job_id, job.batch_key, job.item))

    def _send(self) -> None:
        jobs, self.outbox = self.outbox, []
        if not jobs or self.proc is None:  # the child died meanwhile: _lost already took these jobs
            return
        try:
            message = frame(jobs)
        except Exception:  # an item that cannot be pickled: those jobs are the thread's
            log.exception("writer process: %d jobs could not be sent; the writer thread runs them", len(jobs))
            for job_id, _, _ in jobs:
                self.rerun(self.in_flight.pop(job_id))
            if not self.in_flight:
                self.idle.set()
            return
        try:
            self.proc.stdin.write(message)
        except (ConnectionError, RuntimeError):
            pass  # the child is gone: _read_answers sees the end of its stdout and reruns the jobs

    async def _read_answers(self, proc: asyncio.subprocess.Process) -> None:
        while (answer := await read_frame(proc.stdout)) is not None:
            results, counts, reran = answer
            self.ready.set()
            self._count(counts)
            if reran:
                self.store.heard_rerun([self.in_flight[job_id] for job_id in reran if job_id in self.in_flight])
            for job_id, ok, value in results:
                job = self.in_flight.pop(job_id, None)
                if job is not None and not job.future.done():
                    (job.future.set_result if ok else job.future.set_exception)(value)
            if not self.in_flight:
                self.idle.set()
        await self._lost(proc)

    def _count(self, counts: tuple[list[int], int, int]) -> None:
        commits, together, fallbacks = counts
        stats = self.store.stats
        for size in commits:
            stats.record_commit(size)
        stats.handled_together += together
        stats.fallbacks += fallbacks

    async def _lost(self, proc: asyncio.subprocess.Process) -> None:
        """The child's output ended: its jobs in flight go to the thread; restart it unless closing."""
        code = await proc.wait()
        self.proc = None
        jobs = list(self.in_flight.values())
        self.in_flight.clear()
        self.outbox.clear()
        self.idle.set()
        if not self.closing or jobs:
            log.error("writer process exited with %s; %d jobs in flight run again on the writer thread",
                      code, len(jobs))
        if jobs:
            self.store.heard_rerun(jobs)
        for job in jobs:
            self.rerun(job)
        if not self.closing:
            await self._restart()

    async def _restart(self) -> None:
        now = time.monotonic()
        self.deaths = [at for at in self.deaths if now - at < 60] + [now]
        if len(self.deaths) > RESTARTS_PER_MINUTE:
            log.error("writer process died %d times within a minute: writing on the thread from now on",
                      len(self.deaths))
            return
        await self.start()

    async def close(self) -> None:
        """Wait for the jobs in flight, then let the child finish and exit (end of its input)."""
        await self.idle.wait()
        self.closing = True
        proc = self.proc
        if proc is None:
            return
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
        if self.reading is not None:
            await self.reading
