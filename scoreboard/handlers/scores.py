"""Thin handlers for score submission and leaderboard reads."""

from __future__ import annotations

import re

from .. import wire
from ..errors import InvalidRequest
from .base import BaseHandler

USER_ID_MAX = 2**53 - 1
USER_ID_RE = re.compile(r"[0-9]{1,16}")


class SubmitHandler(BaseHandler):
    """Answers the methods other than POST (405); a POST is taken by handlers/submit.py before routing."""

    route = "scores.update"


class ReadHandler(BaseHandler):
    """Public (cacheable) when server.public_reads is on; otherwise any valid token is needed."""

    async def prepare(self) -> None:
        super().prepare()
        if not self.app.config.server.public_reads:
            await self.principal(allow_suspended=True)

    def send_page(self, page) -> None:
        public = self.app.config.server.public_reads
        self.set_header("Cache-Control", "public, max-age=1" if public else "private, no-store")
        self.set_header("ETag", page.etag)
        if page.etag in (self.request.headers.get("If-None-Match") or ""):
            self.set_status(304)
            self.finish()
            return
        self.set_header("Content-Type", "application/json")
        self.finish(page.body)

    def offset_limit(self) -> tuple[int, int]:
        args = self.query()
        return wire.query_int(args, "offset", 0, 10_000_000, 0), wire.query_int(args, "limit", 1, 100, 10)

    def query(self) -> dict[str, str | None]:
        return {name: self.get_query_argument(name, None) for name in self.request.query_arguments}


def _user_id(text: str) -> int:
    # ASCII digits only: str.isdigit() also passes "²" (int() then raises) and other scripts' digits.
    if not USER_ID_RE.fullmatch(text) or not 0 < int(text) <= USER_ID_MAX:
        raise InvalidRequest("user_id must be a positive integer", field="user_id")
    return int(text)


class BoardsHandler(ReadHandler):
    route = "leaderboards"

    async def get(self) -> None:
        self.send_json(await self.app.boards.listing())


class PageHandler(ReadHandler):
    route = "leaderboards.page"

    async def get(self, board: str) -> None:
        offset, limit = self.offset_limit()
        period = self.get_query_argument("period", None)
        self.send_page(await self.app.boards.page(board, offset, limit, period))


class AroundHandler(ReadHandler):
    route = "leaderboards.around"

    async def get(self, board: str, user_id: str) -> None:
        radius = wire.query_int(self.query(), "radius", 0, 50, 5)
        period = self.get_query_argument("period", None)
        self.send_page(await self.app.boards.around(board, _user_id(user_id), radius, period))


class StandingHandler(ReadHandler):
    route = "leaderboards.user"

    async def get(self, board: str, user_id: str) -> None:
        period = self.get_query_argument("period", None)
        self.send_json(await self.app.boards.standing(board, _user_id(user_id), period))
