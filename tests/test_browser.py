"""The live page in headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no downloaded browser).

A real server process (so it can be stopped and started again on the same port), ~12 seeded players, then:
the page shows the top 10, follows a submission made over HTTP within 2 s, signs like every other client,
lets a player log in and submit from the page, and reconnects by itself after the server restarts.
Runs on both backends. With CI=true a missing Chromium or Playwright is a failure, not a skip.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import IN_CI, POSTGRES_URL, REDIS_URL
from harness import Http, Player, ServerProcess, cleanup, merge, raw_config

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "signing.json"
LIVE_WITHIN_MS = 2000
ROW_IDS = "() => Array.from(document.querySelectorAll('#top .row')).map(row => Number(row.dataset.userId))"
STATE = "() => document.querySelector('#conn-state').dataset.state"


def _unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"{why}; CI=true needs it: apt-get install -y chromium && pip install playwright", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def chromium():
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        _unavailable(f"Debian's chromium is not installed at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Restartable:
    """A server process that can be stopped and started again on the same port and database."""

    def __init__(self, raw: dict, workdir: Path) -> None:
        self.raw, self.workdir = raw, workdir
        self.process = ServerProcess(raw, workdir)
        self.port, self.url = self.process.port, self.process.url

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> None:
        self.process = ServerProcess(self.raw, self.workdir, port=self.port)


@pytest.fixture
def server_process(backend, tmp_path):
    raw = merge(raw_config(backend, tmp_path, REDIS_URL, POSTGRES_URL),
                {"auth": {"register_limit_per_address": "200/m", "login_limit_per_address": "200/m"}})
    server = Restartable(raw, tmp_path)
    yield server
    server.stop()
    # Playwright's sync API keeps an event loop running on this thread; cleanup() runs its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(cleanup, raw).result()


@pytest.fixture
def players(server_process):
    """12 players with scores 10, 20, ... 120: the top 10 is players[11] down to players[2]."""
    http = Http(server_process.url)
    seeded = []
    for number in range(12):
        player = Player(http, f"player{number:02d}")
        assert player.submit(10 * (number + 1)).status == 200
        seeded.append(player)
    return seeded


@pytest.fixture
def page(chromium, server_process):
    context = chromium.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server_process.url + "/")
    yield page
    context.close()
    assert errors == [], f"errors on the page: {errors}"


def wait_top(page, expected_ids: list[int], timeout: int = LIVE_WITHIN_MS) -> None:
    page.wait_for_function(f"ids => JSON.stringify(({ROW_IDS})()) === JSON.stringify(ids)", arg=expected_ids,
                           timeout=timeout)


def wait_state(page, state: str, timeout: int) -> None:
    page.wait_for_function(f"state => ({STATE})() === state", arg=state, timeout=timeout)


def ranked_ids(players: list[Player], scores: dict[int, int]) -> list[int]:
    """User ids by score (desc), ties by who got there first: here scores are all distinct."""
    return sorted((p.user_id for p in players), key=lambda user_id: -scores[user_id])[:10]


def test_the_page_shows_the_live_top_10_and_reconnects_after_a_restart(page, players, server_process):
    scores = {p.user_id: 10 * (n + 1) for n, p in enumerate(players)}
    wait_state(page, "live", 10_000)
    wait_top(page, ranked_ids(players, scores), timeout=10_000)
    ranks = page.evaluate("() => Array.from(document.querySelectorAll('#top .row')).map(r => r.dataset.rank)")
    assert ranks == [str(rank) for rank in range(1, 11)]

    # The last player (not shown) jumps to first: the page follows within 2 s.
    climber = players[0]
    assert climber.submit(500).status == 200
    scores[climber.user_id] += 500
    wait_top(page, ranked_ids(players, scores))
    assert page.evaluate("() => document.querySelector('#top .row').dataset.score") == str(scores[climber.user_id])

    # A shown player moves up: its row is marked for the green flash while it slides.
    mover = players[4]  # 50 -> 250: from rank 8 to rank 2
    assert mover.submit(200).status == 200
    scores[mover.user_id] += 200
    page.wait_for_function(
        "id => { const row = document.querySelector(`#top .row[data-user-id='${id}']`);"
        " return row && row.dataset.rank === '2' && row.classList.contains('moved-up'); }",
        arg=str(mover.user_id), timeout=LIVE_WITHIN_MS)
    wait_top(page, ranked_ids(players, scores))

    # The server goes away and comes back on the same port: the page reconnects by itself.
    server_process.stop()
    wait_state(page, "reconnecting", 10_000)
    assert "reconnecting" in page.inner_text("#conn-state")
    server_process.start()
    wait_state(page, "live", 20_000)

    # ...and is subscribed again: the next change shows within 2 s.
    assert players[1].submit(1000).status == 200
    scores[players[1].user_id] += 1000
    wait_top(page, ranked_ids(players, scores))


def test_a_player_logs_in_and_submits_from_the_page(page, players):
    wait_state(page, "live", 10_000)
    page.fill("#username", "human")
    page.fill("#password", "correct horse battery")
    page.click("#register")
    page.wait_for_selector("#you:not([hidden])", timeout=10_000)
    wait_state(page, "live", 10_000)
    assert page.inner_text("#you-name") == "human"

    page.fill("#points", "115")  # between player10 (110) and player11 (120): rank 2
    page.click("#submit-score")
    page.wait_for_function("() => document.querySelector('#you-score').dataset.score === '115'", timeout=5000)
    assert page.evaluate("() => document.querySelector('#you-rank').dataset.rank") == "2"
    assert "accepted" in page.inner_text("#submit-result")
    page.wait_for_selector("#top .row.me[data-rank='2']", timeout=LIVE_WITHIN_MS)

    # Someone else overtakes: the "you" panel gets the rank event on user:{id}.
    assert players[0].submit(500).status == 200
    page.wait_for_function("() => document.querySelector('#you-rank').dataset.rank === '3'",
                           timeout=LIVE_WITHIN_MS)


def test_points_over_the_maximum_show_the_reason(page, players):
    page.fill("#username", "greedy")
    page.fill("#password", "correct horse battery")
    page.click("#register")
    page.wait_for_selector("#you:not([hidden])", timeout=10_000)

    page.fill("#points", "1000000")
    page.click("#submit-score")

    page.wait_for_function("() => document.querySelector('#submit-result').textContent.includes('points_over_max')",
                           timeout=5000)


@pytest.mark.skipif(not VECTORS.exists(), reason=f"no signing vectors at {VECTORS}")
def test_the_browser_client_signs_every_vector_with_web_crypto_and_without(page):
    cases = json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]

    results = page.evaluate(
        """async cases => {
             const out = [];
             for (const c of cases) {
               const bytes = new TextEncoder().encode(c.raw_body_utf8);
               out.push([await Scoreboard.signBody(c.session_key, bytes),
                         await Scoreboard.signBody(c.session_key, bytes, {fallback: true})]);
             }
             return out;
           }""", cases)

    assert results == [[case["x_signature"], case["x_signature"]] for case in cases]
