"""One exception tree for the whole server: each class carries its HTTP status and PROTOCOL code.

Handlers render these in one place (handlers/http.py); WebSocket frames reuse `code`.
"""

from __future__ import annotations


class ScoreboardError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str = "", **extra: object) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code.replace("_", " ")
        self.extra = extra

    def __reduce__(self):
        # Rebuilt from its state, not its constructor (whose arguments differ per class): the writer
        # process sends refusals back pickled.
        return _rebuild, (type(self), self.args, self.__dict__)

    def body(self, request_id: str) -> dict:
        error = {"code": self.code, "message": self.message, "request_id": request_id}
        error.update(self.extra)
        return {"error": error}

    def headers(self) -> dict[str, str]:
        return {}


def _rebuild(cls: type, args: tuple, state: dict) -> ScoreboardError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidRequest(ScoreboardError):
    status, code = 400, "invalid_request"


class Unauthorized(ScoreboardError):
    status, code = 401, "unauthorized"


class BadSignature(ScoreboardError):
    status, code = 401, "bad_signature"


class StaleTimestamp(ScoreboardError):
    status, code = 401, "stale_timestamp"


class Forbidden(ScoreboardError):
    status, code = 403, "forbidden"


class Suspended(ScoreboardError):
    status, code = 403, "suspended"


class NotFound(ScoreboardError):
    status, code = 404, "not_found"


class Conflict(ScoreboardError):
    """Family of 409s: the request collides with one already seen."""

    status = 409


class Replay(Conflict):
    code = "replay"


class ActionConflict(Conflict):
    code = "action_conflict"


class OutOfSequence(Conflict):
    code = "out_of_sequence"


class PayloadTooLarge(ScoreboardError):
    status, code = 413, "payload_too_large"


class ScoreRejected(ScoreboardError):
    status, code = 422, "score_rejected"

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or f"score rejected: {reason}", reason=reason)
        self.reason = reason


class RateLimited(ScoreboardError):
    status, code = 429, "rate_limited"

    def __init__(self, retry_after_s: int, message: str = "", limit: int = 0, remaining: int = 0) -> None:
        super().__init__(message or "too many requests")
        self.retry_after_s = max(1, int(retry_after_s))
        self.limit = limit
        self.remaining = remaining

    def headers(self) -> dict[str, str]:
        headers = {"Retry-After": str(self.retry_after_s)}
        if self.limit:
            headers["X-RateLimit-Limit"] = str(self.limit)
            headers["X-RateLimit-Remaining"] = str(self.remaining)
            headers["X-RateLimit-Reset"] = str(self.retry_after_s)
        return headers


class Unavailable(ScoreboardError):
    status, code = 503, "unavailable"


class ConfigError(Exception):
    """Bad configuration: the message names the key. Not a wire error; the server exits with status 2."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config error: {key}: {problem}")
        self.key = key
        self.problem = problem
