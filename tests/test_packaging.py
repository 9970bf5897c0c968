"""The wheel carries what a non-editable install needs: migrations, the static page, the admin CLI."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scoreboard.store import migrations

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=120)
    return next(out.glob("scoreboard_server-*.whl"))


def test_wheel_ships_the_migrations_page_and_admin_cli(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("scoreboard/sql/postgresql/0001_initial.sql", "scoreboard/sql/sqlite/0001_initial.sql",
                     "scoreboard/static/index.html", "scoreboard/static/scoreboard.js", "scoreboard_admin/main.py"):
        assert expected in names


def test_wheel_installs_no_top_level_cli_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("scoreboard_server")}
    assert tops == {"scoreboard", "scoreboard_admin"}


def test_an_installed_wheel_migrates_a_database(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=120)
    script = ("from scoreboard.store import migrations, db; d = db.open_database('sqlite:///" + str(tmp_path / "w.db")
              + "'); print(len(migrations.migrate(d)), len(migrations.pending(d)))")
    result = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {script}"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(migrations.available("sqlite"))), "0"]  # every one shipped
