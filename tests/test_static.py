"""GET / serves the live leaderboard page; GET /static/... its script, styles and the browser client."""

from __future__ import annotations

import re

import pytest

from harness import Http


@pytest.fixture
def page(client: Http):
    return client.get("/")


def test_the_page_is_html_with_the_client_and_app_scripts(page):
    text = page.raw.decode()

    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="static/scoreboard.js"></script>' in text
    assert '<script src="static/app.js"></script>' in text


def test_the_page_has_the_elements_a_browser_test_reads(page):
    text = page.raw.decode()

    for element_id in ("conn-state", "board", "top", "login-form", "you", "you-score", "you-rank", "submit-score"):
        assert f'id="{element_id}"' in text, element_id


def test_the_page_loads_nothing_from_other_hosts(page):
    text = page.raw.decode()

    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_the_page_carries_a_request_id(page):
    assert page.headers["x-request-id"]


@pytest.mark.parametrize(("name", "kind"), [("scoreboard.js", "javascript"), ("app.js", "javascript"),
                                            ("app.css", "text/css")])
def test_static_files_are_served_with_their_type(client, name, kind):
    response = client.get(f"/static/{name}")

    assert response.status == 200
    assert kind in response.headers["content-type"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-request-id"]


def test_the_browser_client_exposes_scoreboard(client):
    text = client.get("/static/scoreboard.js").raw.decode()

    assert "global.Scoreboard = {" in text
    assert 'importKey("raw"' in text and '"HMAC"' in text


def test_an_unknown_static_file_is_404(client):
    assert client.get("/static/nope.js").status == 404


def test_static_paths_cannot_leave_the_directory(client):
    response = client.get("/static/../app.py")

    assert response.status in (403, 404)
    assert b"class App" not in response.raw
