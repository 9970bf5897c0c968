"""JSON in and out, and the field checks every request body shares.

orjson everywhere: frames are encoded once and the same bytes go to every subscriber.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .errors import InvalidRequest

MAX_ABS = 2**53 - 1


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads_object(raw: bytes) -> dict:
    """Parse a request body that must be one JSON object; anything else is invalid_request."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"body is not valid UTF-8 JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise InvalidRequest("body must be a JSON object")
    return value


def field(body: dict, name: str, kind: type, required: bool = True, default: Any = None) -> Any:
    """body[name] checked against `kind` (bool is never accepted as int)."""
    if name not in body or body[name] is None:
        if required:
            raise InvalidRequest(f"missing field: {name}", field=name)
        return default
    value = body[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidRequest(f"{name} must be an integer", field=name)
    if not isinstance(value, kind):
        raise InvalidRequest(f"{name} must be {_kind_name(kind)}", field=name)
    if kind is int and abs(value) > MAX_ABS:
        raise InvalidRequest(f"{name} must be at most 2^53 - 1 in absolute value", field=name)
    return value


def matching(body: dict, name: str, pattern: re.Pattern, what: str, required: bool = True) -> str | None:
    value = field(body, name, str, required)
    if value is not None and not pattern.fullmatch(value):
        raise InvalidRequest(f"{name} must be {what}", field=name)
    return value


def bounded_int(body: dict, name: str, low: int, high: int, default: int | None = None) -> int:
    value = field(body, name, int, required=default is None, default=default)
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}", field=name)
    return value


def query_int(args: dict[str, str | None], name: str, low: int, high: int, default: int) -> int:
    """An integer query parameter (strings from the URL)."""
    text = args.get(name)
    if text is None or text == "":
        return default
    if not re.fullmatch(r"-?[0-9]{1,16}", text):
        raise InvalidRequest(f"{name} must be an integer", field=name)
    value = int(text)
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}", field=name)
    return value


def _kind_name(kind: type) -> str:
    return {str: "a string", dict: "an object", list: "an array", bool: "a boolean"}.get(kind, kind.__name__)
