"""`scoreboard-admin demo` against a real server: bots join (registering once), submit, respect limits."""

from __future__ import annotations

from click.testing import CliRunner

from scoreboard_admin.main import cli

from harness import Http


def run_demo(server, *extra: str):
    args = ["demo", "--url", server.url, "--players", "3", "--rate", "10", "--duration", "1.5", "--prefix", "demo",
            *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_demo_bots_register_once_then_reuse_their_accounts(server):
    first = run_demo(server)
    second = run_demo(server)

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "registered" in first.output and "registered" not in second.output
    assert "accepted" in second.output
    page = Http(server.url).get("/leaderboards/global?limit=10").json
    assert sorted(entry["username"] for entry in page["entries"]) == ["demo0000", "demo0001", "demo0002"]
    assert all(entry["score"] > 0 for entry in page["entries"])


def test_demo_stays_within_its_budget(server):
    result = run_demo(server, "--rate", "2", "--duration", "2")

    assert result.exit_code == 0, result.output
    page = Http(server.url).get("/leaderboards/global?limit=10").json
    assert 1 <= page["total"] <= 3


def test_demo_fails_when_no_bot_can_log_in(server_factory):
    server = server_factory({"auth": {"open_registration": False}})

    result = run_demo(server, "--setup-timeout", "5")

    assert result.exit_code == 1
    assert "failed:register:forbidden" in result.output
