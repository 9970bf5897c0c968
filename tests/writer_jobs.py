"""Batch handlers for tests that a writer process runs: importable by name, as the child needs."""

from __future__ import annotations

import peewee as pw

_failed = False


def lose_connection_once(items: list) -> list:
    """The first call fails as a dropped connection would; later calls answer each item with itself."""
    global _failed
    if not _failed:
        _failed = True
        raise pw.OperationalError("server closed the connection unexpectedly (test)")
    return [(True, item) for item in items]
