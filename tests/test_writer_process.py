"""The writer process (store.process, store.writer_child): score commits and result records go to a child
interpreter; nothing it was given is lost when it dies, and a new one takes over. Both backends.

A child that is stopped (SIGSTOP) holds the jobs sent to it without committing them: killing it then
leaves jobs in flight for certain, with no timing luck involved.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import writer_jobs

from scoreboard import errors
from scoreboard.store.db import Store, open_database
from scoreboard.store.models import Action, Score

from conftest import POSTGRES_URL
from harness import Http, Player, create_schema, drop_schema, register_and_login

PLAYERS = 8


def _all_errors() -> list[errors.ScoreboardError]:
    return [errors.InvalidRequest("bad field", field="seq"), errors.ScoreRejected("too_fast", "slow down"),
            errors.RateLimited(7, limit=10, remaining=0), errors.OutOfSequence("seq must be greater than 3"),
            errors.Unavailable("database unavailable"), errors.ActionConflict()]


@pytest.mark.parametrize("error", _all_errors(), ids=lambda e: type(e).__name__)
def test_an_error_crosses_the_pipe_unchanged(error):
    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is type(error)
    assert copy.body("r") == error.body("r")
    assert copy.headers() == error.headers()
    assert (copy.status, str(copy)) == (error.status, str(error))


def _players(server, count: int) -> list[Player]:
    http = Http(server.url)
    with ThreadPoolExecutor(count) as pool:
        logins = list(pool.map(lambda i: register_and_login(http, f"wp{i:02d}"), range(count)))
    return [Player(http, login["user"]["username"], login=login) for login in logins]


def _count_sent(process, expected: int) -> threading.Event:
    """An event set once `expected` jobs were handed to the writer process."""
    sent, original, count = threading.Event(), process.submit, [0]

    def counting(job) -> None:
        original(job)
        count[0] += 1
        if count[0] >= expected:
            sent.set()

    process.submit = counting
    return sent


def _stored(server) -> tuple[int, dict[int, int]]:
    def read():
        return Action.select().count(), {row.user_id: row.score for row in Score.select()}
    return server.call(server.app.store.read(read))


def test_score_commits_and_result_records_go_to_the_writer_process(server):
    process = server.app.store.process
    player = _players(server, 1)[0]

    response = player.submit(5)
    server.call(server.app.scores.flush())

    assert response.status == 200 and response.json["score"] == 5
    assert process.next_id == 2  # the submission, then the recording of its result
    assert _stored(server) == (1, {player.user_id: 5})


def test_a_killed_writer_process_loses_no_job_in_flight_and_a_new_one_takes_over(server):
    store = server.app.store
    players = _players(server, PLAYERS)
    first_pid = store.process.proc.pid
    sent = _count_sent(store.process, PLAYERS)
    os.kill(first_pid, signal.SIGSTOP)

    with ThreadPoolExecutor(PLAYERS) as pool:
        answers = [pool.submit(player.submit, 10 + i) for i, player in enumerate(players)]
        assert sent.wait(10)  # every submission is in flight in the stopped child
        os.kill(first_pid, signal.SIGKILL)
        responses = [answer.result(30) for answer in answers]

    assert [(r.status, r.json["duplicate"]) for r in responses] == [(200, False)] * PLAYERS
    assert _stored(server) == (PLAYERS, {p.user_id: 10 + i for i, p in enumerate(players)})
    page = Http(server.url).get("/leaderboards/global").json
    assert {e["user_id"]: e["score"] for e in page["entries"]} == {p.user_id: 10 + i for i, p in enumerate(players)}
    assert store.process.proc is not None and store.process.proc.pid != first_pid
    assert players[0].submit(1).json["score"] == 11  # the new child commits


def test_a_job_the_child_runs_twice_is_heard_by_the_rerun_listeners(backend, tmp_path, unique, monkeypatch,
                                                                      event_loop_runner):
    """A connection lost inside the child (here: the handler's first call fails like one) reruns the batch
    there; the parent's Store.rerun_listeners hear which job it was before the job resolves."""
    url = f"sqlite:///{tmp_path / 'w.db'}" if backend == "embedded" else create_schema(POSTGRES_URL, f"w_{unique}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.dirname(writer_jobs.__file__),
                                                      os.environ.get("PYTHONPATH", "")]))

    async def scenario() -> tuple:
        store = Store(open_database(url))
        store.register_batch("flaky", writer_jobs.lose_connection_once, offload=True)
        heard: list = []
        store.rerun_listeners.append(heard.extend)
        await store.start_process(url, 5.0, set())
        try:
            result = await store.write(lambda: "by the thread", "flaky", "item-1")
            return result, list(heard)
        finally:
            await store.stop_process()
            store.close()

    try:
        assert event_loop_runner(scenario()) == ("item-1", [("flaky", "item-1")])  # the child's answer
    finally:
        drop_schema(url)


def test_a_lost_submission_marks_its_board_period_stale_and_a_lost_record_marks_nothing(server_factory, clock):
    """A rerun of an action the dead child did commit answers as a duplicate and skips the index: the
    board period is rebuilt before its next read instead."""
    from scoreboard import ledger, rules
    from scoreboard.periods import period_of

    server = server_factory({"boards": {"global": {}, "daily": {"reset": "daily"}}}, clock=clock)
    now = clock.now_ms()
    body = {"action_id": "a1", "board": "daily", "seq": 1, "ts": now, "nonce": "n" * 16,
            "score_data": {"type": "level_complete", "points": 1}}
    sub = rules.parse(body, server.app.config)
    stale = server.app.boards.stale
    stale.clear()

    server.app.scores.on_rerun([(ledger.RECORD_BATCH, [("{}", 1)]), (ledger.SCORE_BATCH, (None, sub, None, now))])

    assert stale == {f"daily:{period_of('daily', now)}"}


def test_a_sigterm_to_the_process_group_does_not_cut_the_writer_process_short(server):
    """It stops when its input ends (the server closes it, or dies), never in the middle of a commit."""
    process = server.app.store.process
    player = _players(server, 1)[0]
    server.call(process.ready.wait())
    pid, sent_before = process.proc.pid, process.next_id

    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    response = player.submit(4)

    assert response.status == 200 and response.json["score"] == 4
    assert process.proc.pid == pid and process.next_id > sent_before  # the same child committed it


def test_the_thread_setting_keeps_every_write_on_the_writer_thread(server_factory):
    server = server_factory({"database": {"writer": "thread"}})
    player = _players(server, 1)[0]

    response = player.submit(3)

    assert server.app.store.process is None
    assert response.status == 200 and _stored(server) == (1, {player.user_id: 3})


def test_a_job_whose_item_cannot_be_pickled_is_written_by_the_thread(server):
    from scoreboard import ledger

    class Results(list):  # defined in here: pickle cannot find the class, so the item cannot cross the pipe
        pass

    player = _players(server, 1)[0]
    player.submit(2)
    server.call(server.app.scores.flush())
    row_id = server.call(server.app.store.read(lambda: Action.select(Action.id).scalar()))
    results = Results([('{"by": "thread"}', row_id)])

    server.call(server.app.store.write(lambda: ledger.record_results(results), ledger.RECORD_BATCH, results))

    assert server.call(server.app.store.read(lambda: Action.get_by_id(row_id).result)) == '{"by": "thread"}'
