"""The writer process itself (`python -m scoreboard.store.writer_child`; started by store.process).

stdin carries the setup, then frames of jobs (job id, batch key, item); stdout carries one answer frame
per transaction: each job's outcome, sent after the commit, with the writer's counts. One thread does it
all, so nothing here waits for a GIL: it blocks until jobs arrive, takes every job that has arrived by
then (group commit), commits them with Store.commit_jobs (the same savepoints, batch handlers and
handling of a lost connection as the thread) and answers. The end of stdin means the parent closed or
died: the jobs already received are still committed, then the process exits.
"""

from __future__ import annotations

import functools
import os
import pickle
import select
import signal
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from .. import logs
from ..errors import ScoreboardError
from .db import Job, Store, WriterStats, open_database
from .process import LENGTH, frame


def alone(handler: Callable[[list[Any]], list[tuple[bool, Any]]], item: Any) -> Any:
    """A batch handler's work for one item: what the job's own function does on the parent's thread."""
    ok, value = handler([item])[0]
    if not ok:
        raise value
    return value


class Frames:
    """Length-prefixed pickles read from a file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.ended = False

    def wait(self) -> list[Any]:
        """Block until at least one whole message arrived (or the input ended); then every whole one."""
        messages = self._parse()
        while not messages and not self.ended:
            self._fill()
            messages = self._parse()
        return messages

    def more(self) -> list[Any]:
        """The whole messages that arrived meanwhile, without blocking."""
        while not self.ended and select.select([self.fd], [], [], 0)[0]:
            self._fill()
        return self._parse()

    def _fill(self) -> None:
        chunk = os.read(self.fd, 1 << 20)
        self.ended = not chunk
        self.buffer += chunk

    def _parse(self) -> list[Any]:
        messages, start = [], 0
        while len(self.buffer) - start >= LENGTH.size:
            size = LENGTH.unpack_from(self.buffer, start)[0]
            end = start + LENGTH.size + size
            if len(self.buffer) < end:
                break
            messages.append(pickle.loads(self.buffer[start + LENGTH.size:end]))
            start = end
        del self.buffer[:start]
        return messages


class Child:
    def __init__(self, store: Store, handlers: dict, answers: BinaryIO) -> None:
        self.store, self.handlers, self.answers = store, handlers, answers
        self.waiting: list[tuple[int, Job]] = []

    def take(self, frames: list[list[tuple[int, str, Any]]]) -> None:
        for jobs in frames:
            self.waiting += [(job_id, Job(functools.partial(alone, self.handlers[key], item), None, None, key, item))
                             for job_id, key, item in jobs]

    def commit(self) -> None:
        """Commit what waits, at most group_commit_max jobs, and answer their outcomes."""
        batch = self.waiting[:self.store.group_commit_max]
        del self.waiting[:len(batch)]
        reran: list[int] = []
        outcomes = self.store.commit_jobs([job for _, job in batch],
                                          lambda jobs: reran.extend(job_id for job_id, _ in batch))
        self.answer([(job_id, ok, value) for (job_id, _), (ok, value) in zip(batch, outcomes, strict=True)], reran)

    def answer(self, results: list[tuple[int, bool, Any]], reran: list[int]) -> None:
        """Send the outcomes, the ids of jobs that ran twice, and the counts of what was written since the
        last answer (fresh counts after)."""
        stats, self.store.stats = self.store.stats, WriterStats()
        try:
            self.answers.write(_answer(results, (stats.commit_log, stats.handled_together, stats.fallbacks), reran))
            self.answers.flush()
        except (BrokenPipeError, ValueError):
            pass  # the parent is gone; its jobs are committed all the same


def _answer(results: list, counts: tuple, reran: list[int]) -> bytes:
    """The answer frame; an outcome that cannot be pickled travels as an internal error instead."""
    try:
        return frame((results, counts, reran))
    except (pickle.PicklingError, TypeError, AttributeError):
        safe = []
        for job_id, ok, value in results:
            try:
                pickle.dumps(value)
            except (pickle.PicklingError, TypeError, AttributeError):
                ok, value = False, ScoreboardError(f"write failed: {value!r}")
            safe.append((job_id, ok, value))
        return frame((safe, counts, reran))


def _pin_away_from(cpus: set[int]) -> None:
    """Run on the CPUs the event loop was not pinned to (all of them when it was not pinned)."""
    everything = set(range(os.cpu_count() or 1))
    try:
        os.sched_setaffinity(0, (everything - cpus) or everything)
    except (AttributeError, OSError):
        pass  # not Linux, or a CPU set that the container forbids: stay where we are


def serve(frames: Frames, answers: BinaryIO) -> None:
    first = frames.wait()
    if not first:
        return
    setup = first[0]
    _pin_away_from(setup["avoid_cpus"])
    store = Store(open_database(setup["url"], setup["timeout_s"]), 1, setup["group_commit_max"],
                  writer_thread=False)
    child = Child(store, setup["handlers"], answers)
    for key, handler in child.handlers.items():
        store.register_batch(key, handler)
    child.take(first[1:])
    child.answer([], [])  # ready: signals are handled and the database is open
    while True:
        child.take(frames.wait() if not child.waiting else [])
        child.take(frames.more())
        if not child.waiting:
            break  # the input ended and everything received is committed
        child.commit()
    store.close()


def main() -> None:
    logs.setup("warning")  # JSON lines on the server's stderr, like the server's own
    # Ctrl-C or a SIGTERM to the whole process group must not cut a commit short: the server stops on
    # them and then closes our input, and the end of input is how this process stops (it also comes
    # when the server is killed outright).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Answers go on the original stdout; anything printed by mistake goes to stderr instead.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(Frames(sys.stdin.fileno()), answers)


if __name__ == "__main__":
    main()
