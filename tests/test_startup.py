"""Starting the server: the zero-config fresh start, refusing an unmigrated database or a bad config with
exit status 2 and a useful line on stderr, the admin CLI's migrations, and /readyz.

The server runs as a real child process here (the installed console script), because process start,
exit status and stderr are the behaviours under test.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from click.testing import CliRunner

from scoreboard.store import migrations
from scoreboard.store.db import open_database
from scoreboard_admin.main import cli

from conftest import POSTGRES_URL, REDIS_URL
from harness import FAST_ARGON2, Http, ServerThread, cleanup, free_port, merge, raw_config, to_toml, wait_healthy

SERVER_SCRIPT = Path(sys.executable).parent / "scoreboard-server"
PASSWORD = "correct horse battery"
FAST_ARGON2_ENV = {f"SCOREBOARD_AUTH_{key.upper()}": str(value) for key, value in FAST_ARGON2.items()}


def server_command(*args: str) -> list[str]:
    """The `scoreboard-server` console script installed beside this Python (or the module if absent)."""
    if SERVER_SCRIPT.exists():
        return [str(SERVER_SCRIPT), *args]
    return [sys.executable, "-m", "scoreboard.app", *args]


def clean_env(**settings: str) -> dict[str, str]:
    """The test's environment without any SCOREBOARD_* setting, plus `settings`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SCOREBOARD_")}
    return {**env, **settings}


class Launched:
    """One run of `scoreboard-server` in `cwd`, stopped with SIGTERM like a service manager would."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd.parent / f"server-{self.port}.log"  # keep the working directory as the server left it
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(server_command(*args, "--port", str(self.port)), cwd=cwd, env=env,
                                         stdout=subprocess.DEVNULL, stderr=log)
        self.seconds_to_healthy = wait_healthy(self.url, self.proc, self.log_path)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def run_to_exit(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run `scoreboard-server` expecting it to refuse to start; returns its exit status and output."""
    command = server_command(*args, "--port", str(free_port()))
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


def _migration_state(url: str) -> tuple[dict[int, int], list]:
    """(applied versions, pending migrations) of the database at `url`, read on a connection of our own."""
    database = open_database(url)
    try:
        return migrations.applied(database), migrations.pending(database)
    finally:
        database.close()


# ---- fresh start --------------------------------------------------------------------------------


@pytest.fixture
def fresh(backend, tmp_path):
    """An empty working directory, no config file; on services only the URLs come from the environment."""
    workdir = tmp_path / "fresh"
    workdir.mkdir()
    if backend == "embedded":
        yield workdir, clean_env(), None
        return
    raw = raw_config("services", tmp_path, REDIS_URL, POSTGRES_URL)
    env = clean_env(SCOREBOARD_DATABASE_URL=raw["database"]["url"], SCOREBOARD_REDIS_URL=raw["redis"]["url"],
                    SCOREBOARD_REDIS_PREFIX=raw["redis"]["prefix"])
    yield workdir, env, raw
    cleanup(raw)


@pytest.fixture
def launch():
    started: list[Launched] = []

    def start(cwd: Path, env: dict[str, str], *args: str) -> Launched:
        started.append(Launched(cwd, env, *args))
        return started[-1]

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()


def test_a_fresh_start_without_config_answers_healthz_within_3_seconds(fresh, launch):
    workdir, env, _ = fresh

    server = launch(workdir, env)

    assert server.seconds_to_healthy < 3


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)  # a database URL means no local file
def test_a_fresh_start_without_config_creates_scoreboard_db_in_the_working_directory(backend, fresh, launch):
    workdir, env, _ = fresh

    launch(workdir, env)

    assert (workdir / "scoreboard.db").is_file()


def test_a_fresh_start_applies_every_migration(fresh, launch):
    workdir, env, raw = fresh
    launch(workdir, env)

    url = raw["database"]["url"] if raw else f"sqlite:///{workdir / 'scoreboard.db'}"

    assert _migration_state(url)[1] == []


def test_a_token_issued_before_a_restart_still_works_after_it(fresh, launch):
    workdir, env, _ = fresh
    env = {**env, **FAST_ARGON2_ENV}  # the point here is the persisted JWT secret, not the hashing cost
    first = launch(workdir, env)
    client = Http(first.url)
    client.post("/auth/register", {"username": "alice", "password": PASSWORD})
    token = client.post("/auth/login", {"username": "alice", "password": PASSWORD}).json["access_token"]
    assert first.stop() == 0  # SIGTERM is a clean shutdown

    second = launch(workdir, env)

    assert Http(second.url, token).get("/users/me").status == 200


# ---- refusing to start --------------------------------------------------------------------------


def _dialect(raw: dict) -> str:
    return "sqlite" if raw["database"]["url"].startswith("sqlite:") else "postgresql"


def _create_stray_table(raw: dict) -> None:
    """A database that has a table but no migrations: not empty, so never initialised automatically."""
    url = raw["database"]["url"]
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("CREATE TABLE legacy (id INTEGER)")
        return
    schema = url.rsplit("%3D", 1)[1]
    with psycopg2.connect(POSTGRES_URL) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {schema}.legacy (id INTEGER)")


@pytest.fixture
def service_raw(backend, tmp_path):
    """Settings for a server on `backend` with a database of its own (not yet touched)."""
    raw = raw_config(backend, tmp_path, REDIS_URL, POSTGRES_URL)
    yield raw
    cleanup(raw)


def _write_config(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(to_toml(raw))
    return path


def test_an_unmigrated_database_stops_the_server_with_status_2_naming_the_migrate_command(service_raw, tmp_path):
    _create_stray_table(service_raw)
    config = _write_config(tmp_path, service_raw)

    result = run_to_exit(tmp_path, clean_env(), "--config", str(config))

    assert result.returncode == 2
    assert "scoreboard-admin" in result.stderr
    assert "db migrate" in result.stderr
    assert str(config) in result.stderr


def test_an_empty_database_with_migrate_on_start_never_stops_the_server_with_status_2(service_raw, tmp_path):
    raw = merge(service_raw, {"database": {"migrate_on_start": "never"}})
    config = _write_config(tmp_path, raw)

    result = run_to_exit(tmp_path, clean_env(), "--config", str(config))

    assert result.returncode == 2
    assert "scoreboard-admin" in result.stderr and "db migrate" in result.stderr
    assert _migration_state(raw["database"]["url"]) == ({}, migrations.available(_dialect(raw)))


def test_a_config_file_with_a_bad_value_stops_the_server_with_status_2_naming_the_key(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[server]\nport = "x"\n')

    result = run_to_exit(tmp_path, clean_env(), "--config", str(config))

    assert result.returncode == 2
    assert "server.port" in result.stderr


def test_an_environment_variable_with_a_bad_value_stops_the_server_with_status_2_naming_it(tmp_path):
    result = run_to_exit(tmp_path, clean_env(SCOREBOARD_SERVER_PORT="abc"))

    assert result.returncode == 2
    assert "SCOREBOARD_SERVER_PORT" in result.stderr


def test_a_bad_config_is_refused_in_one_line_without_a_traceback(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[auth]\nacess_ttl_s = 60\n")

    result = run_to_exit(tmp_path, clean_env(), "--config", str(config))

    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "auth.acess_ttl_s" in result.stderr
    assert "Traceback" not in result.stderr


# ---- scoreboard-admin db status / db migrate ----------------------------------------------------


@pytest.fixture
def admin(service_raw, tmp_path):
    """Runs `scoreboard-admin --config <file pointing at this test's database> ...` in process."""
    config = _write_config(tmp_path, service_raw)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli, ["--config", str(config), *args], env={"SCOREBOARD_CONFIG": None})

    return run


def test_db_status_on_a_new_database_lists_every_migration_as_pending(admin):
    result = admin("db", "status")

    assert result.exit_code == 3, result.output
    assert "pending" in result.output
    assert "applied" not in result.output
    assert "0001" in result.output


def test_db_migrate_applies_every_pending_migration(admin, service_raw):
    result = admin("db", "migrate")

    assert result.exit_code == 0, result.output
    assert "0001" in result.output
    assert _migration_state(service_raw["database"]["url"])[1] == []


def test_db_status_after_db_migrate_shows_every_migration_applied(admin):
    admin("db", "migrate")

    result = admin("db", "status")

    assert result.exit_code == 0, result.output
    assert "applied" in result.output
    assert "pending" not in result.output


def test_db_migrate_twice_applies_nothing_the_second_time(admin):
    admin("db", "migrate")

    result = admin("db", "migrate")

    assert result.exit_code == 0, result.output
    assert "applying" not in result.output


def test_after_db_migrate_the_server_starts_even_with_migrate_on_start_never(admin, service_raw):
    admin("db", "migrate")

    server = ServerThread(merge(service_raw, {"database": {"migrate_on_start": "never"}}))
    try:
        assert Http(server.url).get("/healthz").status == 200
    finally:
        server.stop()


# ---- readiness ----------------------------------------------------------------------------------


def test_readyz_reports_every_store_ok(client, backend):
    response = client.get("/readyz")

    assert response.status == 200
    assert response.json["status"] == "ready"
    expected = {"database": "ok"} if backend == "embedded" else {"database": "ok", "redis": "ok"}
    assert response.json["checks"] == expected


def test_healthz_answers_ok(client):
    response = client.get("/healthz")

    assert (response.status, response.json) == (200, {"status": "ok"})


# ---- CPU affinity -------------------------------------------------------------------------------


def _allowed_cpus(pid: int) -> set[str]:
    """The Cpus_allowed_list of every thread of a process."""
    lists = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                lists.add(line.split(":", 1)[1].strip())
    return lists


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)  # a process setting, the same on both
def test_cpu_affinity_keeps_the_process_and_every_thread_on_that_cpu(fresh, launch):
    workdir, env, _ = fresh
    cpu = str(max(os.sched_getaffinity(0)))

    server = launch(workdir, {**env, "SCOREBOARD_SERVER_CPU_AFFINITY": cpu})
    Http(server.url).get("/readyz")  # the database threads have started

    assert _allowed_cpus(server.proc.pid) == {cpu}


def test_a_cpu_the_process_may_not_use_stops_the_server_with_status_2_naming_the_key(tmp_path):
    unavailable = max(os.sched_getaffinity(0)) + 1

    result = run_to_exit(tmp_path, clean_env(SCOREBOARD_SERVER_CPU_AFFINITY=str(unavailable)))

    assert result.returncode == 2
    assert "server.cpu_affinity" in result.stderr and "not available" in result.stderr
