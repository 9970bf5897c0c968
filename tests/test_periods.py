"""Board periods (PROTOCOL "Leaderboards (read)": `reset` and `period`, UTC boundaries).

Unit tests of scoreboard.periods, then a daily board end to end on both backends with a ManualClock
standing at one second to midnight: no sleeping, the clock is moved.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from wsclient import Ws, run, submit

from scoreboard.clock import ManualClock
from scoreboard.periods import is_valid, next_boundary_ms, period_of

from harness import Http, Player


def ms(text: str) -> int:
    """Unix ms of an ISO-8601 UTC time, e.g. '2026-11-27T23:59:59.999'."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


# ---- period_of ----------------------------------------------------------------------------------


def test_a_board_that_never_resets_has_the_single_period_all():
    assert period_of("never", ms("2026-11-27T12:00:00")) == "all"


@pytest.mark.parametrize(("moment", "period"), [
    ("2026-11-27T00:00:00.000", "2026-11-27"),
    ("2026-11-27T23:59:59.999", "2026-11-27"),
    ("2026-11-28T00:00:00.000", "2026-11-28"),
    ("2026-12-31T23:59:59.999", "2026-12-31"),
    ("2027-01-01T00:00:00.000", "2027-01-01"),
    ("2028-02-29T12:00:00.000", "2028-02-29"),
])
def test_daily_period_is_the_utc_date(moment, period):
    assert period_of("daily", ms(moment)) == period


@pytest.mark.parametrize(("moment", "period"), [
    ("2026-11-23T00:00:00.000", "2026-W48"),  # Monday: weeks start on Monday
    ("2026-11-29T23:59:59.999", "2026-W48"),  # Sunday, last millisecond of the week
    ("2026-11-30T00:00:00.000", "2026-W49"),
    ("2026-12-31T12:00:00.000", "2026-W53"),  # 2026 has 53 ISO weeks
    ("2027-01-03T23:59:59.999", "2026-W53"),  # early January can belong to the previous ISO year
    ("2027-01-04T00:00:00.000", "2027-W01"),
    ("2024-12-30T00:00:00.000", "2025-W01"),  # and late December to the next
])
def test_weekly_period_is_the_iso_week_with_its_iso_year(moment, period):
    assert period_of("weekly", ms(moment)) == period


@pytest.mark.parametrize(("moment", "period"), [
    ("2026-11-01T00:00:00.000", "2026-11"),
    ("2026-11-30T23:59:59.999", "2026-11"),
    ("2026-12-01T00:00:00.000", "2026-12"),
    ("2026-12-31T23:59:59.999", "2026-12"),
    ("2027-01-01T00:00:00.000", "2027-01"),
])
def test_monthly_period_is_the_utc_year_and_month(moment, period):
    assert period_of("monthly", ms(moment)) == period


# ---- is_valid -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("reset", "period"), [
    ("never", "all"),
    ("daily", "2026-11-27"),
    ("daily", "2028-02-29"),
    ("weekly", "2026-W01"),
    ("weekly", "2026-W53"),
    ("monthly", "2026-11"),
    ("monthly", "2027-01"),
])
def test_is_valid_accepts_well_formed_periods(reset, period):
    assert is_valid(reset, period)


@pytest.mark.parametrize(("reset", "period"), [
    ("never", "2026"),
    ("never", "ALL"),
    ("daily", "2026-11-31"),
    ("daily", "2026-02-29"),  # 2026 is not a leap year
    ("daily", "2026-13-01"),
    ("daily", "2026-1-01"),
    ("daily", "2026-11-27 "),
    ("daily", "2026-11-27\n"),
    ("daily", "yesterday"),
    ("daily", "2026-11"),
    ("daily", "2026-W48"),
    ("daily", "\uff12\uff10\uff12\uff16-11-27"),  # fullwidth digits are digits to \d, not to a period name
    ("weekly", "2026-W00"),
    ("weekly", "2026-W54"),
    ("weekly", "2027-W53"),  # 2027 has only 52 ISO weeks
    ("weekly", "2026-W5"),
    ("weekly", "2026-11-27"),
    ("monthly", "2026-00"),
    ("monthly", "2026-13"),
    ("monthly", "2026-11-27"),
    ("monthly", "all"),
])
def test_is_valid_rejects_malformed_or_impossible_periods(reset, period):
    assert not is_valid(reset, period)


# ---- a daily board end to end -------------------------------------------------------------------

BOARDS = {"boards": {"global": {}, "daily": {"operator": "incr", "reset": "daily"}}}
LAST_SECOND = ms("2026-11-27T23:59:59")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(LAST_SECOND)


@pytest.fixture
def daily(server_factory, clock):
    return server_factory(BOARDS, clock=clock)


@pytest.fixture
def alice(daily, clock) -> Player:
    return Player(Http(daily.url), "alice", clock_ms=clock.now_ms)


def test_a_submission_lands_in_the_current_utc_day(alice):
    response = alice.submit(100, board="daily")

    assert response.status == 200, response.raw
    assert (response.json["period"], response.json["score"]) == ("2026-11-27", 100)


def test_after_midnight_the_score_starts_fresh_in_a_period_named_by_the_new_date(alice, clock):
    assert alice.submit(100, board="daily").json["score"] == 100
    clock.advance(2_000)

    response = alice.submit(50, board="daily")

    assert response.status == 200, response.raw
    assert (response.json["period"], response.json["score"], response.json["rank"]) == ("2026-11-28", 50, 1)


def test_the_period_follows_server_time_not_the_clients_ts(alice, clock):
    body = alice.body(100, board="daily")  # ts 23:59:59, still inside the signing window after midnight
    clock.advance(2_000)

    response = alice.send(json.dumps(body).encode())

    assert response.status == 200, response.raw
    assert response.json["period"] == "2026-11-28"


def test_a_board_that_never_resets_keeps_counting_across_midnight(alice, clock):
    alice.submit(100)
    clock.advance(2_000)

    response = alice.submit(50)

    assert (response.json["period"], response.json["score"]) == ("all", 150)


def test_yesterdays_leaderboard_stays_readable_by_its_period(alice, clock):
    alice.submit(100, board="daily")
    clock.advance(2_000)
    alice.submit(50, board="daily")

    response = alice.http.get("/leaderboards/daily?period=2026-11-27")

    assert response.status == 200
    assert response.json["period"] == "2026-11-27"
    assert response.json["total"] == 1
    assert [(e["user_id"], e["score"], e["rank"]) for e in response.json["entries"]] == [(alice.user_id, 100, 1)]


def test_the_current_period_is_the_default_read(alice, clock):
    alice.submit(100, board="daily")
    clock.advance(2_000)
    alice.submit(50, board="daily")

    response = alice.http.get("/leaderboards/daily")

    assert response.json["period"] == "2026-11-28"
    assert [e["score"] for e in response.json["entries"]] == [50]


def test_a_past_periods_standing_of_a_user_is_readable(alice, clock):
    alice.submit(100, board="daily")
    clock.advance(2_000)
    alice.submit(50, board="daily")

    response = alice.http.get(f"/leaderboards/daily/users/{alice.user_id}?period=2026-11-27")

    assert response.status == 200
    assert (response.json["rank"], response.json["score"]) == (1, 100)


def test_a_past_period_is_rebuilt_from_the_database_by_a_freshly_started_server(daily, alice, clock,
                                                                                  server_factory):
    alice.submit(100, board="daily")
    clock.advance(2_000)
    alice.submit(50, board="daily")
    restarted = server_factory(clock=clock, raw=daily.raw)

    response = Http(restarted.url).get("/leaderboards/daily?period=2026-11-27")

    assert [(e["user_id"], e["score"]) for e in response.json["entries"]] == [(alice.user_id, 100)]


def test_a_period_without_entries_reads_as_an_empty_board(alice):
    response = alice.http.get("/leaderboards/daily?period=2026-01-01")

    assert response.status == 200
    assert (response.json["period"], response.json["total"], response.json["entries"]) == ("2026-01-01", 0, [])


@pytest.mark.parametrize("period", ["yesterday", "2026-02-30", "2026-W48"])
def test_a_bad_period_string_is_invalid_request(daily, period):
    response = Http(daily.url).get(f"/leaderboards/daily?period={period}")

    assert response.status == 400
    assert response.code == "invalid_request"


def test_the_board_listing_names_each_boards_current_period(daily, clock):
    clock.advance(2_000)

    listing = Http(daily.url).get("/leaderboards").json["boards"]

    assert {b["name"]: (b["reset"], b["period"]) for b in listing} == {
        "global": ("never", "all"), "daily": ("daily", "2026-11-28")}


# ---- the next period's start ----------------------------------------------------------------------


@pytest.mark.parametrize(("reset", "moment", "start"), [
    ("daily", "2026-11-27T23:59:59.999", "2026-11-28T00:00:00"),
    ("daily", "2026-12-31T00:00:00.000", "2027-01-01T00:00:00"),
    ("weekly", "2026-11-29T23:59:59.999", "2026-11-30T00:00:00"),  # Sunday -> Monday
    ("weekly", "2026-11-30T00:00:00.000", "2026-12-07T00:00:00"),  # a Monday's next week
    ("monthly", "2026-01-31T12:00:00.000", "2026-02-01T00:00:00"),
    ("monthly", "2026-12-01T00:00:00.000", "2027-01-01T00:00:00"),
])
def test_the_next_period_starts_at_the_next_utc_boundary(reset, moment, start):
    assert next_boundary_ms(reset, ms(moment)) == ms(start)
    assert period_of(reset, ms(start)) != period_of(reset, ms(start) - 1)


def test_a_board_that_never_resets_has_no_next_period():
    assert next_boundary_ms("never", ms("2026-11-27T12:00:00")) is None


def test_subscribers_get_the_new_periods_empty_top_at_midnight_without_a_submission(daily, alice, clock):
    async def body():
        ws = await Ws.open(daily)
        await ws.subscribe("leaderboard:daily")
        await submit(alice, 100, board="daily")
        before = await ws.event("top")  # the submission's own tick is over
        assert before["data"]["period"] == "2026-11-27" and len(before["data"]["entries"]) == 1
        clock.advance(2_000)  # the server's timer for midnight (1 s away) finds the new day
        event = await ws.event("top")
        assert event["data"] == {"board": "daily", "period": "2026-11-28", "entries": []}
        ws.close()

    run(body())
