"""scoreboard-admin: thin click commands over the server's own modules; rich for the output."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from scoreboard.config import Config, load
from scoreboard.errors import ConfigError
from scoreboard.store import migrations
from scoreboard.store.db import open_database

console = Console()


class Context:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load(self.config_path)
            except ConfigError as exc:
                console.print(f"[red]{exc}[/red]")
                sys.exit(2)
        return self._config

    def database(self):
        db = open_database(self.config.database.url, self.config.database.timeout_s)
        try:
            db.connect()
        except Exception as exc:  # the driver's own error says what is wrong with the URL or server
            console.print(f"[red]cannot open the database: {exc}[/red]")
            sys.exit(1)
        return db


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="SCOREBOARD_CONFIG",
              help="config.toml to use (default: built-in defaults and SCOREBOARD_* variables)")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Administer a scoreboard server's database."""
    ctx.obj = Context(config_path)


@cli.group()
def db() -> None:
    """Schema migrations."""


@db.command("migrate")
@click.pass_obj
def db_migrate(obj: Context) -> None:
    """Apply every pending migration."""
    database = obj.database()
    applied = migrations.migrate(database, lambda m: console.print(f"applying {m.version:04d}_{m.name} ..."))
    database.close()
    console.print(f"[green]{len(applied)} migration(s) applied; the database is up to date.[/green]")


@db.command("status")
@click.pass_obj
def db_status(obj: Context) -> None:
    """Show applied and pending migrations."""
    database = obj.database()
    done = migrations.applied(database)
    table = Table("version", "name", "state")
    kind = migrations.dialect(database)
    for migration in migrations.available(kind):
        state = "[green]applied[/green]" if migration.version in done else "[yellow]pending[/yellow]"
        table.add_row(f"{migration.version:04d}", migration.name, state)
    database.close()
    console.print(f"database: {kind}")
    console.print(table)
    pending = [m for m in migrations.available(kind) if m.version not in done]
    if pending:
        console.print(f"[yellow]{len(pending)} pending: run `scoreboard-admin db migrate`[/yellow]")
        sys.exit(3)


@cli.group()
def users() -> None:
    """User accounts."""


@users.command("create")
@click.argument("username")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--role", type=click.Choice(["player", "admin"]), default="player")
@click.pass_obj
def users_create(obj: Context, username: str, password: str, role: str) -> None:
    """Create a user (e.g. the first admin)."""
    import time

    from scoreboard.auth import Passwords, check_credentials_shape
    from scoreboard.errors import InvalidRequest
    from scoreboard.store.models import User, database

    try:
        check_credentials_shape({"username": username, "password": password})
    except InvalidRequest as exc:
        console.print(f"[red]{exc.message}[/red]")
        sys.exit(2)
    db_handle = obj.database()
    database.initialize(db_handle)
    if User.get_or_none(User.username_key == username.lower()):
        console.print(f"[red]username {username!r} is taken[/red]")
        sys.exit(1)
    password_hash = Passwords(obj.config.auth).hash(password)
    user = User.create(username=username, username_key=username.lower(), password_hash=password_hash,
                       role=role, created_at=int(time.time() * 1000))
    console.print(f"[green]created {role} {username} (user_id {user.id})[/green]")


@cli.command("demo")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="the server's base URL")
@click.option("--players", default=200, show_default=True, type=click.IntRange(1, 10_000), help="bot players")
@click.option("--rate", default=20.0, show_default=True, type=click.FloatRange(0.1, 5_000),
              help="submissions per second, all bots together")
@click.option("--duration", default=60.0, show_default=True, type=click.FloatRange(1, 86_400), help="seconds")
@click.option("--board", default="global", show_default=True)
@click.option("--prefix", default="bot", show_default=True, help="bot usernames are PREFIX0000, PREFIX0001, ...")
@click.option("--password", default="demo-bot-password", show_default=True, help="every bot's password")
@click.option("--max-points", default=500, show_default=True, type=click.IntRange(1), help="points are 1..this")
@click.option("--setup-timeout", default=120.0, show_default=True, type=click.FloatRange(1, 3_600),
              help="seconds to wait for the first bot to log in")
def demo(url: str, players: int, rate: float, duration: float, board: str, prefix: str, password: str,
         max_points: int, setup_timeout: float) -> None:
    """Bots that log in (registering if needed) and submit random signed scores at RATE for DURATION.

    Talks to a running server over HTTP only; watch it live at URL/. The run lasts DURATION seconds from
    the first bot's login. Logins are rate limited per address (auth.login_limit_per_address,
    auth.register_limit_per_address): bots wait out 429s and join as they can.
    """
    from . import demo as demo_module

    settings = demo_module.Settings(url.rstrip("/"), players, rate, duration, board, prefix, password, max_points,
                                    setup_timeout=setup_timeout)
    console.print(f"demo: {players} bots -> {settings.url}, {rate:g}/s for {duration:g} s on board {board!r}")
    try:
        sys.exit(demo_module.main(settings, console))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    cli()
