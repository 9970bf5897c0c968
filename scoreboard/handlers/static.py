"""The live leaderboard page (GET /) and its files (GET /static/...): plain files, no build step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tornado.web

from .base import BaseHandler, request_id_for

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGE_POLICY = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
               "script-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class IndexHandler(BaseHandler):
    """index.html, revalidated on every load so a deploy shows at once."""

    route = "page"

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", PAGE_POLICY)
        self.finish((STATIC_DIR / "index.html").read_bytes())


class StaticHandler(tornado.web.StaticFileHandler):
    """The package's static/ directory. Takes the `app` kwarg every route gets; ETags make reloads cheap."""

    def initialize(self, app: Any = None, path: str = str(STATIC_DIR), default_filename: str | None = None) -> None:
        super().initialize(path, default_filename)

    def prepare(self) -> None:
        self.request_id = request_id_for(self.request.headers.get("X-Request-Id"))
        self.set_header("X-Request-Id", self.request_id)

    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-cache")
