"""Many clients submitting at once: no lost update, no double count, the index agrees with the database.

50 players each send 40 signed submissions one after another (increasing seq) while all 50 run in
parallel, on both backends. Afterwards every player's total is exactly the sum of its points in the
scores table, in the leaderboard index (page and standing) and in the count of action rows, and the
writer has batched the commits (group commit). The burst is expensive (2000 signed requests through
the whole path), so it runs once per backend and each property is checked by a named helper.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

from peewee import fn

from scoreboard import audit
from scoreboard.store.models import Action, AuditRecord, Score

from harness import Http, Player, Response, register_and_login

CLIENTS = 50
SUBMISSIONS = 40
PASSWORD = "correct horse battery"
SETTINGS = {
    "ratelimit": {"per_user": "1000/s", "per_address": "100000/s"},
    "auth": {"register_limit_per_address": "1000/m"},
    "actions": {"level_complete": {"max_points": 1000, "max_per_minute": 100_000}},
}


def register_players(http: Http, count: int) -> list[Player]:
    with ThreadPoolExecutor(8) as pool:
        logins = list(pool.map(lambda i: register_and_login(http, f"player{i:02d}"), range(count)))
    return [Player(http, login["user"]["username"], login=login) for login in logins]


def play_in_parallel(players: list[Player], plans: list[list[int]]) -> list[list[Response]]:
    """Each player sends its plan in order (seq rising); all players at once."""
    def play(index: int) -> list[Response]:
        return [players[index].submit(points) for points in plans[index]]

    with ThreadPoolExecutor(len(players)) as pool:
        return list(pool.map(play, range(len(players))))


# ---- what must hold afterwards ------------------------------------------------------------------


def assert_every_submission_was_accepted_once(responses: list[list[Response]]) -> None:
    outcomes = [(r.status, (r.json or {}).get("duplicate")) for per_player in responses for r in per_player]
    assert outcomes == [(200, False)] * len(outcomes), [r.raw for p in responses for r in p if r.status != 200][:3]


def assert_each_response_reports_the_running_total(plans: list[list[int]], responses) -> None:
    for plan, per_player in zip(plans, responses, strict=True):
        assert [r.json["score"] for r in per_player] == [sum(plan[: i + 1]) for i in range(len(plan))]


def assert_scores_table_holds_the_exact_sums(server, expected: dict[int, int]) -> None:
    stored = server.call(server.app.store.read(
        lambda: {row.user_id: row.score for row in Score.select().where(Score.board == "global")}))
    assert stored == expected


def assert_actions_table_holds_one_row_per_submission(server, expected_per_user: dict[int, int]) -> None:
    per_user = server.call(server.app.store.read(lambda: dict(
        Action.select(Action.user, fn.COUNT(Action.id)).group_by(Action.user).tuples())))
    assert per_user == expected_per_user


def assert_audit_trail_has_one_record_per_submission_and_verifies(server, count: int) -> None:
    assert server.call(server.app.store.read(lambda: AuditRecord.select().count())) == count
    assert server.call(server.app.store.read(audit.verify_stored)) is None


def assert_leaderboard_page_shows_the_exact_sums_in_rank_order(server, expected: dict[int, int]) -> None:
    page = Http(server.url).get("/leaderboards/global?limit=100").json
    assert page["total"] == len(expected)
    assert {e["user_id"]: e["score"] for e in page["entries"]} == expected
    assert [e["rank"] for e in page["entries"]] == list(range(1, len(expected) + 1))
    scores = [e["score"] for e in page["entries"]]
    assert scores == sorted(scores, reverse=True)


def assert_each_standing_shows_the_exact_sum(server, expected: dict[int, int]) -> None:
    http = Http(server.url)
    for user_id, total in expected.items():
        standing = http.get(f"/leaderboards/global/users/{user_id}").json
        assert (standing["score"], standing["total"]) == (total, len(expected))


# ---- the tests ----------------------------------------------------------------------------------


def test_fifty_parallel_clients_lose_no_update_count_nothing_twice_and_share_commits(server_factory):
    server = server_factory(SETTINGS)
    players = register_players(Http(server.url), CLIENTS)
    rng = random.Random(20261127)
    plans = [[rng.randint(0, 1000) for _ in range(SUBMISSIONS)] for _ in players]
    expected = {p.user_id: sum(plan) for p, plan in zip(players, plans, strict=True)}
    stats = server.app.store.stats
    transactions_before, jobs_before, together_before = stats.transactions, stats.jobs, stats.handled_together

    responses = play_in_parallel(players, plans)

    transactions, writes = stats.transactions - transactions_before, stats.jobs - jobs_before
    assert_every_submission_was_accepted_once(responses)
    assert_each_response_reports_the_running_total(plans, responses)
    assert_scores_table_holds_the_exact_sums(server, expected)
    assert_actions_table_holds_one_row_per_submission(server, {user_id: SUBMISSIONS for user_id in expected})
    assert_audit_trail_has_one_record_per_submission_and_verifies(server, CLIENTS * SUBMISSIONS)
    assert_leaderboard_page_shows_the_exact_sums_in_rank_order(server, expected)
    assert_each_standing_shows_the_exact_sum(server, expected)
    # Group commit: concurrent writes shared transactions (each submission is at least one write).
    assert writes >= CLIENTS * SUBMISSIONS
    assert transactions < writes
    # ... and every write (the submissions, and the recording of their results) was committed set-wise
    # (ledger.commit_many, ledger.record_many), batches of several at once, none by the one-by-one fallback.
    assert stats.handled_together - together_before == writes
    assert stats.largest_batch > 1
    assert stats.fallbacks == 0


def test_one_user_submitting_from_many_sessions_at_once_gets_every_action_counted(server_factory):
    server = server_factory(SETTINGS)
    http = Http(server.url)
    first = register_players(http, 1)[0]
    sessions = [first] + [
        Player(http, first.login["user"]["username"],
               login=http.post("/auth/login", {"username": first.login["user"]["username"],
                                               "password": PASSWORD}).json)
        for _ in range(7)]
    rng = random.Random(7)
    plans = [[rng.randint(0, 1000) for _ in range(15)] for _ in sessions]
    expected = {first.user_id: sum(map(sum, plans))}

    responses = play_in_parallel(sessions, plans)

    assert_every_submission_was_accepted_once(responses)
    assert_scores_table_holds_the_exact_sums(server, expected)
    assert_actions_table_holds_one_row_per_submission(server, {first.user_id: 8 * 15})
    assert_each_standing_shows_the_exact_sum(server, expected)
