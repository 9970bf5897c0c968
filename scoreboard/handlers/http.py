"""Thin HTTP handlers for accounts, sessions and health: parse, call a use case, render."""

from __future__ import annotations

from .base import BaseHandler


class RegisterHandler(BaseHandler):
    route = "auth.register"

    async def post(self) -> None:
        open_registration = self.app.config.auth.open_registration
        result = await self.app.users.register(self.json_body(), self.client_info(), open_registration)
        self.send_json(result, 201)


class LoginHandler(BaseHandler):
    route = "auth.login"

    async def post(self) -> None:
        self.send_json(await self.app.users.login(self.json_body(), self.client_info()))


class RefreshHandler(BaseHandler):
    route = "auth.refresh"

    async def post(self) -> None:
        self.send_json(await self.app.users.refresh(self.json_body()))


class LogoutHandler(BaseHandler):
    route = "auth.logout"

    async def post(self) -> None:
        principal = await self.principal(allow_suspended=True)
        await self.app.users.logout(principal)
        self.set_status(204)
        self.finish()


class MeHandler(BaseHandler):
    route = "users.me"

    async def get(self) -> None:
        principal = await self.principal(allow_suspended=True)
        self.send_json(await self.app.profile(principal))


class HealthHandler(BaseHandler):
    route = "healthz"

    def get(self) -> None:
        self.send_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    route = "readyz"

    async def get(self) -> None:
        checks = await self.app.readiness()
        ready = all(value == "ok" for value in checks.values())
        if ready:
            self.send_json({"status": "ready", "checks": checks})
            return
        body = {"error": {"code": "unavailable", "message": "a store is down", "request_id": self.request_id},
                "checks": checks}
        self.send_json(body, 503)


class MetricsHandler(BaseHandler):
    route = "metrics"

    def get(self) -> None:
        self.set_header("Content-Type", self.app.metrics.content_type)
        self.finish(self.app.metrics.render())
