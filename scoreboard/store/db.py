"""The database executor: peewee never runs on the event loop.

Reads run on a small thread pool. Writes go to one writer thread that drains its queue into a single
transaction (group commit): each job runs in its own savepoint, so one job's failure rolls back only that
job, and every job's future resolves only after the shared COMMIT returned. Consecutive jobs written with
the same batch key go together to the handler registered for that key, which does their work set-wise in
one savepoint; if it raises, that savepoint is rolled back and the jobs run one by one as usual. Driver
errors are wrapped once here: connection trouble becomes errors.Unavailable and nothing of that batch is applied.
The batch keys registered with `offload=True` go to a writer process instead, while it runs (store.process);
it commits them with this same code (`commit_jobs`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import peewee as pw
from playhouse import db_url

from ..errors import ScoreboardError, Unavailable
from . import models
from .process import WriterProcess

log = logging.getLogger("scoreboard.store")
T = TypeVar("T")
_STOP = object()
RUN_MAX = 256  # jobs per batch-handler call: keeps set-wise statements within SQLite's 32,766 parameters


def open_database(url: str, timeout_s: float = 5.0) -> pw.Database:
    """A peewee database for `url`; SQLite gets WAL and full fsync so a 200 means durable."""
    if url.startswith("sqlite:///"):
        return pw.SqliteDatabase(
            url.removeprefix("sqlite:///"),
            pragmas={"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1,
                     "busy_timeout": int(timeout_s * 1000)},
            timeout=timeout_s,
        )
    url = url.replace("postgres://", "postgresql://", 1)
    params = db_url.parse(url)
    params.setdefault("connect_timeout", max(1, int(timeout_s)))
    return PostgresqlDatabase(**params)


class PostgresqlDatabase(pw.PostgresqlDatabase):
    """BEGIN goes out with the transaction's first statement, not on its own: every round trip to the
    server costs a wake-up on both sides, and a group commit makes at most seven."""

    def begin(self, isolation_level: Any = None) -> None:
        if isolation_level or self._isolation_level:
            super().begin(isolation_level)
            return
        if self.is_closed():  # connected now, as BEGIN would: connecting later would drop the transaction
            self.connect()
        self._state.begin_pending = True

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        if self._take_pending_begin():
            sql = "BEGIN;\n" + sql
        return super().execute_sql(sql, params)

    def commit(self) -> None:
        if not self._take_pending_begin():  # a transaction that ran nothing has nothing to commit
            super().commit()

    def rollback(self) -> None:
        if not self._take_pending_begin():
            super().rollback()

    def close(self) -> bool:
        self._take_pending_begin()
        return super().close()

    def _take_pending_begin(self) -> bool:
        pending = getattr(self._state, "begin_pending", False)
        self._state.begin_pending = False
        return pending


@dataclass
class Job:
    fn: Callable[[], Any]
    future: asyncio.Future | None
    loop: asyncio.AbstractEventLoop | None
    batch_key: str | None = None
    item: Any = None


@dataclass
class WriterStats:
    transactions: int = 0
    jobs: int = 0
    largest_batch: int = 0
    handled_together: int = 0  # jobs done by a batch handler (register_batch)
    fallbacks: int = 0  # batch handler runs that raised, so their jobs ran one by one
    commit_log: list[int] = field(default_factory=list)  # batch sizes of the last 1000 commits

    def record_commit(self, size: int) -> None:
        self.transactions += 1
        self.jobs += size
        self.largest_batch = max(self.largest_batch, size)
        self.commit_log.append(size)
        del self.commit_log[:-1000]


class Store:
    def __init__(self, db: pw.Database, read_threads: int = 2, group_commit_max: int = 256,
                 writer_thread: bool = True) -> None:
        self.db = db
        models.database.initialize(db)
        self.group_commit_max = max(1, group_commit_max)
        self.readers = ThreadPoolExecutor(max(1, read_threads), thread_name_prefix="db-read")
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.stats = WriterStats()
        # batch key -> handler(items) returning one (ok, value) per item, in order (see _run_together)
        self.batch_handlers: dict[str, Callable[[list[Any]], list[tuple[bool, Any]]]] = {}
        self.offloaded: set[str] = set()  # batch keys the writer process takes, while it runs
        # Called on the event loop with the (batch key, item)s of jobs run again after their first attempt's
        # outcome was lost (a connection dropped at COMMIT, a writer process died): such a job may find its
        # own work already committed, and whatever the caller does after a commit may not have happened.
        self.rerun_listeners: list[Callable[[list[tuple[str | None, Any]]], None]] = []
        self.process: WriterProcess | None = None
        self.generation = 0  # bumped on every connection failure: other threads then reconnect too
        self.local = threading.local()
        self.writer: threading.Thread | None = None
        if writer_thread:  # without it, the caller commits jobs itself (commit_jobs): the writer process
            self.writer = threading.Thread(target=self._write_loop, name="db-write", daemon=True)
            self.writer.start()

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on a reader thread (outside any transaction)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.readers, self._guarded, fn, args)

    async def write(self, fn: Callable[[], T], batch_key: str | None = None, item: Any = None) -> T:
        """Run `fn()` in the writer's next group transaction; returns once that transaction committed.

        With a `batch_key` that has a registered handler, the job's `item` may instead be handed to that
        handler together with its neighbours in the queue (same key); `fn` must do the same as the handler
        does for that one item, as it runs whenever the handler cannot."""
        loop = asyncio.get_running_loop()
        job = Job(fn, loop.create_future(), loop, batch_key, item)
        if self.process is not None and self.process.takes(batch_key):
            self.process.submit(job)
        else:
            self.queue.put(job)
        return await job.future

    def register_batch(self, key: str, handler: Callable[[list[Any]], list[tuple[bool, Any]]],
                       offload: bool = False) -> None:
        """`handler(items)` runs on the writer thread inside a savepoint and returns, for each item in order,
        (True, result) or (False, exception) as the item's job would have; raising means "run them one by one".
        With `offload`, the writer process (start_process) takes the key's jobs: the handler must then be a
        module-level function, and the items and outcomes picklable."""
        self.batch_handlers[key] = handler
        if offload:
            self.offloaded.add(key)

    async def start_process(self, url: str, timeout_s: float, avoid_cpus: set[int]) -> None:
        """Hand the offloaded keys' jobs to a writer process from now on (see store.process)."""
        handlers = {key: self.batch_handlers[key] for key in self.offloaded}
        setup = {"url": url, "timeout_s": timeout_s, "group_commit_max": self.group_commit_max,
                 "handlers": handlers, "avoid_cpus": avoid_cpus}
        self.process = WriterProcess(setup, self, self.queue.put)
        await self.process.start()

    async def stop_process(self) -> None:
        """Wait for the writer process's jobs in flight and let it exit; later jobs go to the thread."""
        if self.process is not None:
            await self.process.close()

    def close(self) -> None:
        if self.writer is not None:
            self.queue.put(_STOP)
            self.writer.join(timeout=10)
        else:
            self._close_mine()
        self.readers.shutdown(wait=True)
        if not self.db.is_closed():
            self.db.close()

    def _guarded(self, fn: Callable[..., T], args: tuple) -> T:
        try:
            return self._fresh(fn, args)
        except (pw.OperationalError, pw.InterfaceError):
            # This thread's connection may be one the server dropped while we were idle: one more try.
            self._drop_connection()
        try:
            return self._fresh(fn, args)
        except (pw.OperationalError, pw.InterfaceError) as exc:
            self._drop_connection()
            raise Unavailable(f"database unavailable: {_first_line(exc)}") from exc

    def _fresh(self, fn: Callable[..., T], args: tuple) -> T:
        """Call fn on this thread's connection, replacing it first if another thread saw the server drop."""
        if getattr(self.local, "generation", 0) != self.generation:
            self._close_mine()
            self.local.generation = self.generation
        self.db.connect(reuse_if_open=True)
        return fn(*args)

    def _drop_connection(self) -> None:
        """This thread saw the server drop a connection: close it, and tell the other threads to reconnect."""
        self.generation += 1
        self.local.generation = self.generation
        self._close_mine()

    def _close_mine(self) -> None:
        try:
            self.db.close()
        except Exception:  # a dead connection may fail to close; it is gone either way
            pass

    def _write_loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is _STOP:
                self._close_mine()
                return
            batch = [first]
            while len(batch) < self.group_commit_max:
                try:
                    job = self.queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    self.queue.put(_STOP)
                    break
                batch.append(job)
            self._commit_batch(batch)

    def commit_jobs(self, batch: list[Job], on_rerun: Callable[[list[Job]], None]) -> list[tuple[bool, Any]]:
        """The jobs in one transaction, on the calling thread; (ok, result or exception) for each, in order.
        `on_rerun(batch)` hears it first when the batch has to run again."""
        try:
            return self._transaction(batch)
        except (pw.OperationalError, pw.InterfaceError):
            # Nothing was committed, or the commit's answer was lost: either way each job is safe to run
            # again (score jobs find their own committed action and answer as duplicates).
            self._drop_connection()
            on_rerun(batch)
            return self._retry(batch)

    def heard_rerun(self, jobs: list[Job]) -> None:
        """Tell rerun_listeners (on the event loop) about `jobs`, which are about to run again."""
        for listener in self.rerun_listeners:
            listener([(job.batch_key, job.item) for job in jobs])

    def _rerun_from_thread(self, jobs: list[Job]) -> None:
        for loop in {job.loop for job in jobs}:  # before the jobs' own outcomes, which are settled after
            loop.call_soon_threadsafe(self.heard_rerun, [job for job in jobs if job.loop is loop])

    def _commit_batch(self, batch: list[Job]) -> None:
        outcomes = self.commit_jobs(batch, self._rerun_from_thread)
        # One wake-up per event loop for the whole batch: call_soon_threadsafe writes to the loop's
        # self-pipe each time, which per job was a syscall and a context switch each.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, bool, Any]]] = {}
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, settled in by_loop.items():
            loop.call_soon_threadsafe(_settle_all, settled)

    def _retry(self, batch: list[Job]) -> list[tuple[bool, Any]]:
        try:
            return self._transaction(batch)
        except (pw.OperationalError, pw.InterfaceError, pw.DatabaseError) as exc:
            self._drop_connection()
            log.warning("group commit of %d jobs failed: %s", len(batch), exc)
            return [(False, Unavailable(f"database unavailable: {_first_line(exc)}"))] * len(batch)

    def _transaction(self, batch: list[Job]) -> list[tuple[bool, Any]]:
        return self._fresh(self._run_batch, (batch,))

    def _run_batch(self, batch: list[Job]) -> list[tuple[bool, Any]]:
        runs = self._runs(batch)
        if all(handler is not None for handler, _ in runs):
            try:
                outcomes = self._in_transaction(lambda: self._run_plainly(runs))
            except (pw.OperationalError, pw.InterfaceError):
                raise
            except Exception:
                log.warning("batch handlers failed; the %d jobs run again, a savepoint per run", len(batch),
                            exc_info=True)
            else:
                self.stats.handled_together += len(batch)
                self.stats.record_commit(len(batch))
                return outcomes
        outcomes = self._in_transaction(lambda: self._run_carefully(runs))
        self.stats.record_commit(len(batch))
        return outcomes

    def _in_transaction(self, body: Callable[[], list[tuple[bool, Any]]]) -> list[tuple[bool, Any]]:
        # IMMEDIATE: SQLite takes the write lock up front, so another writer (a writer process, another
        # server) can never slip a commit between this transaction's first read and its first write.
        with (self.db.atomic("IMMEDIATE") if isinstance(self.db, pw.SqliteDatabase) else self.db.atomic()):
            return body()

    def _run_plainly(self, runs: list[tuple[Callable, list[Job]]]) -> list[tuple[bool, Any]]:
        """Batch handlers only, without a savepoint each (two round trips per run on PostgreSQL): a handler
        decides its refusals before writing, so one that raises is a surprise, and the whole transaction is
        rolled back and run again carefully."""
        return [outcome for handler, run in runs for outcome in _handled(handler, run)]

    def _run_carefully(self, runs: list[tuple[Callable | None, list[Job]]]) -> list[tuple[bool, Any]]:
        """Each run in a savepoint of its own, so one that fails costs only its own jobs."""
        outcomes = []
        for handler, run in runs:
            if handler is None:
                outcomes.extend(self._run_in_savepoint(job) for job in run)
            else:
                outcomes.extend(self._run_together(handler, run))
        return outcomes

    def _runs(self, batch: list[Job]) -> list[tuple[Callable | None, list[Job]]]:
        """The batch cut into runs of consecutive jobs with the same registered batch key (or none)."""
        runs: list[tuple[Callable | None, list[Job]]] = []
        for job in batch:
            handler = self.batch_handlers.get(job.batch_key) if job.batch_key is not None else None
            if runs and handler is not None and runs[-1][0] is handler and len(runs[-1][1]) < RUN_MAX:
                runs[-1][1].append(job)
            else:
                runs.append((handler, [job]))
        return runs

    def _run_together(self, handler: Callable, run: list[Job]) -> list[tuple[bool, Any]]:
        try:
            with self.db.atomic():
                outcomes = _handled(handler, run)
            self.stats.handled_together += len(run)
            return outcomes
        except (pw.OperationalError, pw.InterfaceError):
            raise  # the connection is gone: the whole batch fails as unavailable
        except Exception:  # rolled back: the same jobs one by one, each in its own savepoint
            log.warning("batch of %d jobs failed; running them one by one", len(run), exc_info=True)
            self.stats.fallbacks += 1
            return [self._run_in_savepoint(job) for job in run]

    def _run_in_savepoint(self, job: Job) -> tuple[bool, Any]:
        try:
            with self.db.atomic():
                return True, job.fn()
        except ScoreboardError as exc:
            return False, exc
        except (pw.OperationalError, pw.InterfaceError):
            raise  # the connection is gone: the whole batch fails as unavailable
        except Exception as exc:  # one bad job must not sink the batch
            log.exception("write job failed")
            return False, exc


def _handled(handler: Callable, run: list[Job]) -> list[tuple[bool, Any]]:
    """A batch handler's outcomes for `run`, one per job."""
    outcomes = handler([job.item for job in run])
    if len(outcomes) != len(run):
        raise RuntimeError(f"batch handler answered {len(outcomes)} of {len(run)} jobs")
    return outcomes


class Statement:
    """A hot statement whose SQL peewee generates once per kind of database; later calls only bind values.

    peewee builds the SQL of a query anew on every execute: about 0.1 ms of Python per statement, far more
    than SQLite takes to run it, spent on the writer thread while holding the GIL the event loop needs.
    `build(*values)` returns the peewee query; it is compiled once from `probe`, example values that are
    pairwise distinct and of the types real calls pass, and each bound parameter is traced back to the
    probe value it came from (a value may be bound more than once). A statement that binds anything else
    (a default, a LIMIT) is never cached, and a call with a None value always goes through peewee, which
    may write `IS NULL` for it: both simply run as plain peewee queries.
    """

    def __init__(self, build: Callable[..., pw.Query], probe: tuple) -> None:
        self.build = build
        self.probe = probe
        self.compiled: dict[type, tuple[str, tuple[int, ...]] | None] = {}

    def cursor(self, *values: Any) -> Any:
        """Run with `values` on this thread's connection (inside the caller's transaction, if any)."""
        return models.database.obj.execute_sql(*self.bound(*values))

    def bound(self, *values: Any) -> tuple[str, list]:
        """(sql, params) with `values`, to run later (execute_all) or now (cursor)."""
        kind = type(models.database.obj)
        if kind not in self.compiled:
            self.compiled[kind] = self._compile()
        compiled = self.compiled[kind]
        if compiled is None or None in values:
            sql, params = self.build(*values).sql()
            return sql, list(params)
        sql, order = compiled
        return sql, [values[i] for i in order]

    def insert(self, *values: Any) -> int:
        """Run an INSERT; returns the new row's id (RETURNING where the database has it)."""
        cursor = self.cursor(*values)
        return cursor.fetchone()[0] if models.database.obj.returning_clause else cursor.lastrowid

    def _compile(self) -> tuple[str, tuple[int, ...]] | None:
        sql, params = self.build(*self.probe).sql()
        order = []
        for param in params:
            matches = [i for i, value in enumerate(self.probe) if type(value) is type(param) and value == param]
            if len(matches) != 1:
                log.warning("statement %r binds %r, which is not one of its probe values: not cached", sql, param)
                return None
            order.append(matches[0])
        return sql, tuple(order)


def execute_all(statements: list[tuple[str, list]]) -> Any:
    """Run (sql, params) statements in order in the current transaction; returns the last one's cursor.
    On PostgreSQL they go as one query string, one round trip for all (psycopg2 binds parameters on the
    client and hands back the last statement's rows); SQLite runs them one by one."""
    db = models.database.obj
    if isinstance(db, pw.PostgresqlDatabase):
        return db.execute_sql(";\n".join(sql for sql, _ in statements),
                              [value for _, params in statements for value in params])
    for sql, params in statements[:-1]:
        db.execute_sql(sql, params)
    return db.execute_sql(*statements[-1])


def rows_sql(rows: int, width: int) -> str:
    """`(?, ?), (?, ?)`: the placeholders of `rows` rows of `width` values for the current database."""
    param = models.database.obj.param
    one = "(" + ", ".join([param] * width) + ")"
    return ", ".join([one] * rows)


def _settle_all(settled: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for future, ok, value in settled:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
