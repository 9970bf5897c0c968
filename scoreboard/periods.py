"""Board periods: the name of the period a moment falls in, by the board's reset (UTC boundaries).

The period is part of every key (database and cache), so a reset moves no data and past periods stay
readable: `all` (never), `2026-11-27` (daily), `2026-W48` (weekly, ISO weeks), `2026-11` (monthly).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

PATTERNS = {  # ASCII: to a str pattern \d also matches other scripts' digits, which strptime accepts
    "never": re.compile(r"all"),
    "daily": re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII),
    "weekly": re.compile(r"\d{4}-W\d{2}", re.ASCII),
    "monthly": re.compile(r"\d{4}-\d{2}", re.ASCII),
}


def period_of(reset: str, now_ms: int) -> str:
    if reset == "never":
        return "all"
    moment = datetime.fromtimestamp(now_ms / 1000, UTC)
    if reset == "daily":
        return moment.strftime("%Y-%m-%d")
    if reset == "weekly":
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    return moment.strftime("%Y-%m")


def next_boundary_ms(reset: str, now_ms: int) -> int | None:
    """When the period after the one `now_ms` falls in begins (Unix ms); None for a board that never resets."""
    if reset == "never":
        return None
    moment = datetime.fromtimestamp(now_ms / 1000, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if reset == "daily":
        start = day + timedelta(days=1)
    elif reset == "weekly":
        start = day + timedelta(days=7 - day.weekday())
    else:
        start = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
    return int(start.timestamp() * 1000)


def is_valid(reset: str, period: str) -> bool:
    """Whether `period` names a period of a board with this reset (it may be past, present or future)."""
    if not PATTERNS[reset].fullmatch(period):
        return False
    try:
        if reset == "daily":
            datetime.strptime(period, "%Y-%m-%d")
        elif reset == "monthly":
            datetime.strptime(period, "%Y-%m")
        elif reset == "weekly":
            # fromisocalendar, unlike strptime("%G-W%V"), refuses week 53 of a year that has 52.
            datetime.fromisocalendar(int(period[:4]), int(period[6:]), 1)
    except ValueError:
        return False
    return True
