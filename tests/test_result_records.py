"""The acknowledged result (with rank) is recorded in its action row after the response, for retries.

`Scores.flush()` (run on shutdown before the store closes) returns once every acknowledged result is
recorded; the tests await it instead of polling.

Results that arrive while one recording write is queued or running are recorded together by the next
one: none may be lost or mixed up, and a retry then gets exactly the original answer.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from scoreboard.store.models import Action

from harness import Http, Player, register_and_login

PLAYERS, EACH = 20, 10
SETTINGS = {
    "ratelimit": {"per_user": "1000/s", "per_address": "100000/s"},
    "auth": {"register_limit_per_address": "1000/m"},
    "actions": {"level_complete": {"max_points": 1000, "max_per_minute": 100_000}},
}


def _recorded(server) -> dict[str, dict]:
    rows = server.call(server.app.store.read(lambda: list(Action.select(Action.action_id, Action.result))))
    return {row.action_id: json.loads(row.result) for row in rows}


def test_every_acknowledged_result_is_recorded_once_even_when_they_arrive_together(server_factory):
    server = server_factory(SETTINGS)
    http = Http(server.url)
    with ThreadPoolExecutor(8) as pool:
        logins = list(pool.map(lambda i: register_and_login(http, f"rec{i:02d}"), range(PLAYERS)))
    players = [Player(http, login["user"]["username"], login=login) for login in logins]
    stats = server.app.store.stats
    jobs_before = stats.jobs

    def play(player: Player) -> list[dict]:
        sent = []
        for points in range(1, EACH + 1):
            response = player.submit(points)
            assert response.status == 200, response.raw
            sent.append(response.json)
        return sent

    with ThreadPoolExecutor(PLAYERS) as pool:
        answers = [answer for sent in pool.map(play, players) for answer in sent]

    server.call(server.app.scores.flush())
    recorded = _recorded(server)
    assert {a["action_id"]: a for a in answers} == {a["action_id"]: recorded[a["action_id"]] for a in answers}
    record_jobs = stats.jobs - jobs_before - len(answers)
    assert 0 < record_jobs < len(answers)  # grouped: fewer recording writes than results


def test_a_retry_after_the_result_was_recorded_gets_the_original_answer(server):
    http = Http(server.url)
    player = Player(http, "retry")
    body = json.dumps(player.body(25)).encode()
    first = player.send(body)
    assert first.status == 200

    server.call(server.app.scores.flush())
    assert "rank" in _recorded(server)[first.json["action_id"]]
    again = json.loads(body)
    again.update(seq=player.seq + 1, nonce="n" * 20 + "retry")
    player.seq += 1
    second = player.send(json.dumps(again).encode())

    assert second.status == 200
    assert second.json == {**first.json, "duplicate": True}
