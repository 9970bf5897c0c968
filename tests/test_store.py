"""The database executor (scoreboard/store/db.py): group commit, per-job savepoints, reads off the event loop.

Everything runs on the server's own loop through `server.call`, against the server's real database.
Where a test needs jobs to land in one batch, it holds the writer with a job that waits on an event,
queues the jobs, then releases it: batching is then a fact, not a timing accident.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import uuid

import peewee as pw
import psycopg2
import pytest

from scoreboard.errors import InvalidRequest
from scoreboard.store.models import Setting

from conftest import POSTGRES_URL

JOBS = 200


def _insert(key: str, value: str = "v"):
    return lambda: Setting.create(key=key, value=value).key


def _keys_present(prefix: str) -> set[str]:
    return {row.key for row in Setting.select(Setting.key).where(Setting.key.startswith(prefix))}


async def _as_one_batch(store, jobs: list) -> list:
    """Run `jobs` as concurrent writes that the writer takes as one batch; results or exceptions, in order."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(10)

    held = asyncio.ensure_future(store.write(hold))
    await asyncio.get_running_loop().run_in_executor(None, holding.wait, 10)

    async def open_gate() -> None:  # gather starts its tasks in order: every job is queued before this runs
        release.set()

    def write(job):  # a job is a function, or (function, batch key, item)
        return store.write(*job) if isinstance(job, tuple) else store.write(job)

    results = await asyncio.gather(*(write(job) for job in jobs), open_gate(), return_exceptions=True)
    await held
    return results[:-1]


# ---- group commit -------------------------------------------------------------------------------


def test_concurrent_writes_are_committed_in_far_fewer_transactions_than_jobs(server):
    store = server.app.store
    server.call(store.write(lambda: Setting.create(key="counter", value="0")))
    before = store.stats.transactions

    def bump() -> int:
        row = Setting.get_by_id("counter")
        row.value = str(int(row.value) + 1)
        row.save()
        return int(row.value)

    async def submit() -> list[int]:
        return await asyncio.gather(*(store.write(bump) for _ in range(JOBS)))

    results = server.call(submit())

    assert sorted(results) == list(range(1, JOBS + 1))
    assert server.call(store.read(lambda: Setting.get_by_id("counter").value)) == str(JOBS)
    assert store.stats.transactions - before <= 10


def test_each_write_resolves_only_after_its_transaction_committed(server):
    """Another connection (a reader thread) already sees the row when the write's await returns."""
    store = server.app.store

    async def write_then_look(i: int) -> bool:
        key = f"visible-{i}"
        await store.write(_insert(key))
        return await store.read(lambda: Setting.get_or_none(Setting.key == key) is not None)

    async def submit() -> list[bool]:
        return await asyncio.gather(*(write_then_look(i) for i in range(JOBS)))

    assert server.call(submit()) == [True] * JOBS


def test_a_batch_never_exceeds_group_commit_max(server_factory):
    server = server_factory({"database": {"group_commit_max": 16}})
    store = server.app.store

    server.call(_as_one_batch(store, [_insert(f"capped-{i}") for i in range(JOBS)]))

    assert store.stats.largest_batch == 16
    assert len(server.call(store.read(_keys_present, "capped-"))) == JOBS


# ---- batch handlers -----------------------------------------------------------------------------


def _keyed(key: str, value: str = "v"):
    """A job writing Setting `key` by itself, or as the item of a "settings" batch."""
    return _insert(key, value), "settings", (key, value)


def test_consecutive_jobs_with_a_batch_key_go_to_its_handler_together_in_queue_order(server):
    store, calls = server.app.store, []

    def handler(items: list) -> list:
        calls.append([key for key, _ in items])
        Setting.insert_many([{"key": key, "value": value} for key, value in items]).execute()
        return [(True, f"together:{key}") for key, _ in items]

    store.register_batch("settings", handler)
    jobs = [_keyed("bk-1"), _keyed("bk-2"), _insert("bk-alone"), _keyed("bk-3"), (_insert("bk-4"), "other", None)]

    results = server.call(_as_one_batch(store, jobs))

    assert calls == [["bk-1", "bk-2"], ["bk-3"]]
    assert results == ["together:bk-1", "together:bk-2", "bk-alone", "together:bk-3", "bk-4"]
    assert server.call(store.read(_keys_present, "bk-")) == {"bk-1", "bk-2", "bk-alone", "bk-3", "bk-4"}


def test_a_handler_that_raises_is_rolled_back_and_its_jobs_run_one_by_one(server):
    store = server.app.store

    def handler(items: list) -> list:
        Setting.create(key="fb-handler", value="v")
        raise RuntimeError("the set-wise path failed")

    def refuse():
        Setting.create(key="fb-refused", value="v")
        raise InvalidRequest("refused after writing")

    store.register_batch("settings", handler)
    results = server.call(_as_one_batch(store, [_keyed("fb-1"), (refuse, "settings", None), _keyed("fb-2")]))

    assert results[0] == "fb-1" and results[2] == "fb-2"
    assert isinstance(results[1], InvalidRequest)
    assert server.call(store.read(_keys_present, "fb-")) == {"fb-1", "fb-2"}
    assert store.stats.fallbacks == 1


def test_a_batch_of_handler_runs_only_takes_no_savepoints(server):
    store, depths = server.app.store, []

    def handler(items: list) -> list:
        depths.append(Setting._meta.database.transaction_depth())
        Setting.insert_many([{"key": key, "value": value} for key, value in items]).execute()
        return [(True, key) for key, _ in items]

    store.register_batch("settings", handler)
    store.register_batch("others", lambda items: handler(items))  # another handler: another run
    jobs = [_keyed("plain-1"), _keyed("plain-2"), (_insert("plain-3"), "others", ("plain-3", "v"))]

    assert server.call(_as_one_batch(store, jobs)) == ["plain-1", "plain-2", "plain-3"]
    assert depths == [1, 1]  # inside the transaction itself, not a savepoint per run


def test_when_one_run_of_a_plain_batch_raises_the_other_runs_still_commit(server):
    store = server.app.store

    def settings(items: list) -> list:
        Setting.insert_many([{"key": key, "value": value} for key, value in items]).execute()
        return [(True, key) for key, _ in items]

    def failing(items: list) -> list:
        Setting.create(key="half-handler", value="v")
        raise RuntimeError("the set-wise path failed")

    store.register_batch("settings", settings)
    store.register_batch("failing", failing)
    jobs = [_keyed("half-1"), (_insert("half-2"), "failing", ("half-2", "v")), _keyed("half-3")]

    assert server.call(_as_one_batch(store, jobs)) == ["half-1", "half-2", "half-3"]
    assert server.call(store.read(_keys_present, "half-")) == {"half-1", "half-2", "half-3"}
    assert store.stats.fallbacks == 1


def test_a_failing_job_rolls_back_only_itself(server):
    store = server.app.store

    def insert_then_refuse() -> None:
        Setting.create(key="batch-refused", value="v")
        raise InvalidRequest("refused after writing")

    results = server.call(_as_one_batch(store, [_insert("batch-a"), insert_then_refuse, _insert("batch-b")]))

    assert store.stats.commit_log[-1] == 3  # the three jobs shared one transaction
    assert results[0] == "batch-a" and results[2] == "batch-b"
    assert isinstance(results[1], InvalidRequest)
    assert server.call(store.read(_keys_present, "batch-")) == {"batch-a", "batch-b"}


def test_a_constraint_violation_fails_only_its_own_job(server):
    store = server.app.store
    server.call(store.write(_insert("unique-taken")))

    results = server.call(_as_one_batch(store, [_insert("unique-a"), _insert("unique-taken"), _insert("unique-b")]))

    assert store.stats.commit_log[-1] == 3
    assert isinstance(results[1], pw.IntegrityError)
    assert server.call(store.read(_keys_present, "unique-")) == {"unique-a", "unique-taken", "unique-b"}


# ---- reads stay off the event loop --------------------------------------------------------------


def test_a_batch_run_again_after_a_lost_connection_is_heard_by_the_rerun_listeners_first(server):
    """The first attempt fails like a connection dropped at COMMIT: the writer reconnects and runs the batch
    again, and the listeners hear its (batch key, item)s on the loop before the write resolves."""
    store, attempts, heard = server.app.store, [], []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise pw.OperationalError("server closed the connection unexpectedly (test)")
        return f"attempt {len(attempts)}"

    async def write_and_look() -> tuple[str, list]:
        store.rerun_listeners.append(heard.extend)
        try:
            result = await store.write(flaky, "not-registered", "item-1")
            return result, list(heard)
        finally:
            store.rerun_listeners.remove(heard.extend)

    assert server.call(write_and_look()) == ("attempt 2", [("not-registered", "item-1")])


class HeldQuery:
    """A real query that keeps running inside the database until `release()`.

    SQLite: a SQL function that waits on an event. PostgreSQL: waiting for an advisory lock this test
    holds on its own connection.
    """

    def __init__(self, server, backend: str) -> None:
        self.store = server.app.store
        self.backend = backend
        self.started = threading.Event()
        self.gate = threading.Event()
        self.lock_id = uuid.uuid4().int % 2**62
        self.holder = None
        if backend == "services":
            self.holder = psycopg2.connect(POSTGRES_URL)
            self.holder.autocommit = True
            self.holder.cursor().execute("SELECT pg_advisory_lock(%s)", (self.lock_id,))

    def run(self) -> int:
        """The read: runs on a reader thread of the store."""
        if self.backend == "services":
            sql = f"SELECT pg_advisory_lock({self.lock_id}), pg_advisory_unlock({self.lock_id})"
        else:
            self.store.db.connection().create_function("held", 0, lambda: int(self.gate.wait(10)))
            sql = "SELECT held()"
        self.started.set()
        self.store.db.execute_sql(sql).fetchall()
        return 1

    def release(self) -> None:
        self.gate.set()
        if self.holder is not None:
            self.holder.cursor().execute("SELECT pg_advisory_unlock(%s)", (self.lock_id,))
            self.holder.close()
            self.holder = None


@pytest.fixture
def held_query(server, backend):
    query = HeldQuery(server, backend)
    yield query
    query.release()


def _healthz_status(server) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_slow_query_does_not_delay_a_concurrent_healthz(server, held_query):
    slow = asyncio.run_coroutine_threadsafe(server.app.store.read(held_query.run), server.loop)
    assert held_query.started.wait(5)

    status = _healthz_status(server)

    assert status == 200
    assert not slow.done()  # healthz answered while the query was still running
    held_query.release()
    assert slow.result(10) == 1


def test_a_slow_query_does_not_delay_a_write(server, held_query):
    store = server.app.store
    slow = asyncio.run_coroutine_threadsafe(store.read(held_query.run), server.loop)
    assert held_query.started.wait(5)

    written = server.call(store.write(_insert("during-slow-read")), timeout=5)

    assert written == "during-slow-read"
    assert not slow.done()
    held_query.release()
    assert slow.result(10) == 1


def test_metrics_export_the_writers_commit_counts(server):
    from harness import Http, Player

    http = Http(server.url)
    Player(http, "counted").submit(5)
    text = http.get("/metrics").raw.decode()
    stats = server.app.store.stats
    commits = _sample(text, "scoreboard_db_group_commits_total")
    jobs = _sample(text, "scoreboard_db_committed_jobs_total")
    assert commits >= 1 and jobs >= commits
    assert commits <= stats.transactions and jobs <= stats.jobs  # read at scrape time; later writes only add


def _sample(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])
