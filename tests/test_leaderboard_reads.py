"""PROTOCOL "Leaderboards (read)" end to end on both backends: operators, order, ties, paging, around,
standings, errors, HTTP caching, read access and rebuilding the index from the database.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import Http, Player, Response

BOARDS = {
    "boards": {
        "global": {"operator": "incr", "order": "desc"},
        "best": {"operator": "best", "order": "desc"},
        "latest": {"operator": "set", "order": "desc"},
        "speedrun": {"operator": "best", "order": "asc"},
    },
    "actions": {"level_complete": {"min_points": 0, "max_points": 1_000_000, "max_per_minute": 100_000}},
    "ratelimit": {"per_user": "1000/s"},
    "auth": {"register_limit_per_address": "1000/m"},
}
NAMES = ["alice", "bob", "carol", "dave"]


@pytest.fixture
def srv(server_factory):
    return server_factory(BOARDS)


@pytest.fixture
def http(srv) -> Http:
    return Http(srv.url)


@pytest.fixture
def make_players(http):
    def make(count: int) -> list[Player]:
        """Registered and logged in side by side (Argon2 runs off the server's loop)."""
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda name: Player(http, name), NAMES[:count]))

    return make


def post(player: Player, points: int, board: str = "global") -> Response:
    response = player.submit(points, board=board)
    assert response.status == 200, response.raw
    return response


def entries(http: Http, path: str) -> list[tuple[int, str, int]]:
    response = http.get(path)
    assert response.status == 200, response.raw
    return [(e["rank"], e["username"], e["score"]) for e in response.json["entries"]]


def assert_error(response: Response, status: int, code: str) -> None:
    assert (response.status, response.code) == (status, code), response.raw


# ---- operators and order ------------------------------------------------------------------------


def test_incr_adds_each_actions_points(http, make_players):
    (alice,) = make_players(1)
    post(alice, 10)

    assert post(alice, 25).json["score"] == 35


def test_best_on_a_desc_board_keeps_the_highest_score(http, make_players):
    (alice,) = make_players(1)
    post(alice, 50, "best")

    assert post(alice, 30, "best").json["score"] == 50
    assert post(alice, 70, "best").json["score"] == 70


def test_set_replaces_the_score_even_with_a_worse_one(http, make_players):
    (alice,) = make_players(1)
    post(alice, 50, "latest")

    assert post(alice, 30, "latest").json["score"] == 30


def test_best_on_an_asc_board_keeps_the_lowest_score(http, make_players):
    (alice,) = make_players(1)
    post(alice, 50_000, "speedrun")

    assert post(alice, 60_000, "speedrun").json["score"] == 50_000
    assert post(alice, 40_000, "speedrun").json["score"] == 40_000


def test_a_desc_board_ranks_higher_scores_first(http, make_players):
    alice, bob, carol = make_players(3)
    post(alice, 300)
    post(bob, 500)
    post(carol, 400)

    assert entries(http, "/leaderboards/global") == [(1, "bob", 500), (2, "carol", 400), (3, "alice", 300)]


def test_an_asc_board_ranks_lower_scores_first(http, make_players):
    alice, bob, carol = make_players(3)
    post(alice, 50_000, "speedrun")
    post(bob, 30_000, "speedrun")
    post(carol, 40_000, "speedrun")

    assert entries(http, "/leaderboards/speedrun") == [
        (1, "bob", 30_000), (2, "carol", 40_000), (3, "alice", 50_000)]


def test_the_submit_response_reports_rank_previous_rank_and_total(http, make_players):
    alice, bob = make_players(2)
    first = post(alice, 10).json
    post(bob, 20)

    overtaking = post(alice, 20).json

    assert (first["rank"], first["previous_rank"], first["total"]) == (1, None, 1)
    assert (overtaking["score"], overtaking["rank"], overtaking["previous_rank"], overtaking["total"]) == (
        30, 1, 2, 2)


# ---- ties: who reached the score first ranks first ----------------------------------------------


def test_on_a_tie_the_player_who_reached_the_score_first_ranks_first(http, make_players):
    alice, bob = make_players(2)
    post(alice, 10)

    assert post(bob, 10).json["rank"] == 2
    assert entries(http, "/leaderboards/global") == [(1, "alice", 10), (2, "bob", 10)]


def test_catching_up_later_ranks_behind_whoever_got_there_earlier(http, make_players):
    alice, bob = make_players(2)
    post(bob, 5)
    post(alice, 10)
    post(bob, 5)

    assert entries(http, "/leaderboards/global") == [(1, "alice", 10), (2, "bob", 10)]


def test_repeating_a_best_score_keeps_the_time_it_was_first_reached(http, make_players):
    alice, bob = make_players(2)
    post(alice, 50, "best")
    post(bob, 50, "best")

    post(alice, 50, "best")
    post(alice, 40, "best")

    assert entries(http, "/leaderboards/best") == [(1, "alice", 50), (2, "bob", 50)]


def test_setting_a_score_someone_already_holds_ranks_behind_them(http, make_players):
    alice, bob = make_players(2)
    post(alice, 20, "latest")
    post(bob, 10, "latest")

    post(alice, 10, "latest")

    assert entries(http, "/leaderboards/latest") == [(1, "bob", 10), (2, "alice", 10)]


def test_ties_on_an_asc_board_also_go_to_the_first_to_reach_the_score(http, make_players):
    alice, bob = make_players(2)
    post(bob, 42_000, "speedrun")
    post(alice, 42_000, "speedrun")

    assert entries(http, "/leaderboards/speedrun") == [(1, "bob", 42_000), (2, "alice", 42_000)]


# ---- paging -------------------------------------------------------------------------------------


@pytest.fixture
def four(make_players) -> list[Player]:
    """alice, bob, carol, dave with 40, 30, 20, 10: ranks 1 to 4."""
    players = make_players(4)
    for player, points in zip(players, (40, 30, 20, 10), strict=True):
        post(player, points)
    return players


def test_a_page_has_board_period_total_and_entries(http, four):
    page = http.get("/leaderboards/global?limit=2").json

    assert page == {"board": "global", "period": "all", "total": 4, "entries": [
        {"rank": 1, "user_id": four[0].user_id, "username": "alice", "score": 40},
        {"rank": 2, "user_id": four[1].user_id, "username": "bob", "score": 30}]}


def test_the_default_page_starts_at_rank_one(http, four):
    assert [rank for rank, _, _ in entries(http, "/leaderboards/global")] == [1, 2, 3, 4]


def test_offset_and_limit_select_a_slice_of_the_ranking(http, four):
    assert entries(http, "/leaderboards/global?offset=1&limit=2") == [(2, "bob", 30), (3, "carol", 20)]


def test_an_offset_past_the_end_gives_no_entries_but_the_total(http, four):
    page = http.get("/leaderboards/global?offset=4").json

    assert (page["entries"], page["total"]) == ([], 4)


@pytest.mark.parametrize("limit", [1, 100])
def test_limit_accepts_1_to_100(http, four, limit):
    response = http.get(f"/leaderboards/global?limit={limit}")

    assert response.status == 200
    assert len(response.json["entries"]) == min(limit, 4)


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=ten", "offset=-1"])
def test_a_limit_or_offset_out_of_range_is_invalid_request(http, query):
    assert_error(http.get(f"/leaderboards/global?{query}"), 400, "invalid_request")


# ---- around -------------------------------------------------------------------------------------


def ranks_around(http: Http, player: Player, query: str = "") -> list[int]:
    return [rank for rank, _, _ in entries(http, f"/leaderboards/global/around/{player.user_id}{query}")]


def test_around_puts_the_user_in_the_middle(http, four):
    assert ranks_around(http, four[2], "?radius=1") == [2, 3, 4]


def test_around_the_leader_shifts_the_window_down_to_keep_its_width(http, four):
    assert ranks_around(http, four[0], "?radius=1") == [1, 2, 3]


def test_around_the_last_player_shifts_the_window_up_to_keep_its_width(http, four):
    assert ranks_around(http, four[3], "?radius=1") == [2, 3, 4]


def test_around_with_radius_zero_is_the_user_alone(http, four):
    assert entries(http, f"/leaderboards/global/around/{four[1].user_id}?radius=0") == [(2, "bob", 30)]


def test_around_with_a_radius_wider_than_the_board_is_the_whole_board(http, four):
    assert ranks_around(http, four[1], "?radius=50") == [1, 2, 3, 4]


def test_around_has_the_page_shape(http, four):
    page = http.get(f"/leaderboards/global/around/{four[0].user_id}?radius=0").json

    assert page == {"board": "global", "period": "all", "total": 4, "entries": [
        {"rank": 1, "user_id": four[0].user_id, "username": "alice", "score": 40}]}


@pytest.mark.parametrize("radius", ["-1", "51", "two"])
def test_around_with_a_radius_outside_0_to_50_is_invalid_request(http, four, radius):
    assert_error(http.get(f"/leaderboards/global/around/{four[0].user_id}?radius={radius}"), 400, "invalid_request")


def test_around_a_user_without_an_entry_is_not_found(http, four):
    assert_error(http.get("/leaderboards/global/around/999999"), 404, "not_found")


# ---- a user's standing --------------------------------------------------------------------------


def test_a_standing_has_rank_score_total_and_percentile(http, four):
    response = http.get(f"/leaderboards/global/users/{four[1].user_id}")

    assert response.json == {"rank": 2, "score": 30, "total": 4, "percentile": 75.0}


def test_the_leader_is_at_the_100th_percentile_and_the_last_at_100_over_total(http, four):
    leader = http.get(f"/leaderboards/global/users/{four[0].user_id}").json
    last = http.get(f"/leaderboards/global/users/{four[3].user_id}").json

    assert (leader["percentile"], last["percentile"]) == (100.0, 25.0)


def test_the_standing_of_an_unknown_user_is_not_found(http, four):
    assert_error(http.get("/leaderboards/global/users/999999"), 404, "not_found")


def test_the_standing_of_a_user_not_on_that_board_is_not_found(http, four):
    assert_error(http.get(f"/leaderboards/best/users/{four[0].user_id}"), 404, "not_found")


@pytest.mark.parametrize("user_id", ["abc", "0", "9007199254740992", "%C2%B2", "%D9%A1"],
                         ids=["letters", "zero", "2^53", "superscript two", "arabic-indic one"])
def test_a_malformed_user_id_is_invalid_request(http, user_id):
    assert_error(http.get(f"/leaderboards/global/users/{user_id}"), 400, "invalid_request")


def test_a_malformed_user_id_around_is_invalid_request(http):
    assert_error(http.get("/leaderboards/global/around/%C2%B2"), 400, "invalid_request")


# ---- unknown boards and the listing -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/leaderboards/nope", "/leaderboards/nope/around/1", "/leaderboards/nope/users/1",
                                  "/leaderboards/NOPE"])
def test_an_unknown_board_is_not_found(http, path):
    assert_error(http.get(path), 404, "not_found")


def test_the_listing_describes_every_board_with_its_current_total(http, make_players):
    alice, bob = make_players(2)
    post(alice, 1)
    post(bob, 1)
    post(alice, 1, "speedrun")

    listing = http.get("/leaderboards").json["boards"]

    assert listing == [
        {"name": "global", "operator": "incr", "order": "desc", "reset": "never", "period": "all", "total": 2},
        {"name": "best", "operator": "best", "order": "desc", "reset": "never", "period": "all", "total": 0},
        {"name": "latest", "operator": "set", "order": "desc", "reset": "never", "period": "all", "total": 0},
        {"name": "speedrun", "operator": "best", "order": "asc", "reset": "never", "period": "all", "total": 1},
    ]


# ---- HTTP caching -------------------------------------------------------------------------------


def test_a_page_carries_an_etag_and_a_matching_if_none_match_gets_304(http, four):
    first = http.get("/leaderboards/global")

    again = http.get("/leaderboards/global", headers={"If-None-Match": first.headers["etag"]})

    assert first.headers["etag"]
    assert (again.status, again.raw) == (304, b"")
    assert again.headers["etag"] == first.headers["etag"]


def test_the_etag_changes_when_the_board_changes(http, four):
    before = http.get("/leaderboards/global").headers["etag"]
    post(four[3], 100)

    after = http.get("/leaderboards/global", headers={"If-None-Match": before})

    assert after.status == 200
    assert after.headers["etag"] != before


def test_public_reads_are_cacheable_by_anyone(http, four):
    for path in ("/leaderboards/global", f"/leaderboards/global/around/{four[0].user_id}"):
        assert http.get(path).headers["cache-control"].startswith("public")


def test_a_new_score_is_visible_at_once_though_the_page_was_just_cached(http, four):
    assert entries(http, "/leaderboards/global")[-1] == (4, "dave", 10)

    post(four[3], 100)

    assert entries(http, "/leaderboards/global")[0] == (1, "dave", 110)


# ---- private reads ------------------------------------------------------------------------------

PRIVATE = {**BOARDS, "server": {"public_reads": False}}
READ_PATHS = ["/leaderboards", "/leaderboards/global", "/leaderboards/global/around/{uid}",
              "/leaderboards/global/users/{uid}"]


@pytest.fixture
def private(server_factory):
    server = server_factory(PRIVATE)
    player = Player(Http(server.url), "alice")
    post(player, 10)
    return server, player


@pytest.mark.parametrize("path", READ_PATHS)
def test_without_public_reads_a_read_without_token_is_unauthorized(private, path):
    server, player = private

    assert_error(Http(server.url).get(path.format(uid=player.user_id)), 401, "unauthorized")


def test_without_public_reads_any_valid_token_may_read_every_route(private):
    _, player = private

    assert {path: player.http.get(path.format(uid=player.user_id)).status for path in READ_PATHS} == {
        path: 200 for path in READ_PATHS}


def test_without_public_reads_pages_are_not_cacheable_by_shared_caches(private):
    _, player = private

    assert player.http.get("/leaderboards/global").headers["cache-control"] == "private, no-store"


def test_without_public_reads_a_logged_out_token_may_not_read(private):
    server, player = private
    assert player.http.post("/auth/logout").status == 204

    assert_error(player.http.get("/leaderboards/global"), 401, "unauthorized")


# ---- the index is rebuilt from the database -----------------------------------------------------


def test_rebuilding_a_cleared_index_restores_exactly_the_database_state(srv, http, make_players):
    alice, bob, carol, dave = make_players(4)
    for player, points in ((alice, 30), (bob, 30), (carol, 10), (dave, 20), (carol, 20), (dave, 5)):
        post(player, points)  # bob ties alice and comes second; carol ties bob later, dave passes both
    before = http.get("/leaderboards/global?limit=100")
    standings = [http.get(f"/leaderboards/global/users/{p.user_id}").json for p in (alice, bob, carol, dave)]

    srv.call(srv.app.index.rebuild("global:all", "desc", []))
    assert srv.call(srv.app.index.total("global:all")) == 0
    srv.call(srv.app.boards.rebuild(srv.config.board("global"), "all"))

    after = http.get("/leaderboards/global?limit=100")
    assert after.json == before.json
    assert after.headers["etag"] == before.headers["etag"]
    assert [http.get(f"/leaderboards/global/users/{p.user_id}").json for p in (alice, bob, carol, dave)] == standings
    assert [(e["username"], e["score"]) for e in after.json["entries"]] == [
        ("alice", 30), ("bob", 30), ("carol", 30), ("dave", 25)]


def test_a_fresh_server_on_the_same_database_serves_the_same_ranking(srv, http, make_players, server_factory):
    alice, bob = make_players(2)
    post(alice, 10)
    post(bob, 10)
    before = http.get("/leaderboards/global").json

    restarted = server_factory(raw=srv.raw)

    assert Http(restarted.url).get("/leaderboards/global").json == before
