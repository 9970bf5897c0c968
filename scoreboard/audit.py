"""The tamper-evident audit trail: every record hashes its content together with the previous hash.

`append` runs inside the writer's transaction, next to the change it records, so an action and its
audit record commit together or not at all. The chain head lives in the settings table and is locked
(SELECT ... FOR UPDATE on PostgreSQL; SQLite has one writer) so many processes extend one chain.
`verify` walks the chain and names the first record whose content or link does not match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import peewee as pw

from .store.db import Statement, execute_all, rows_sql
from .store.models import AuditRecord, Setting

GENESIS = "0" * 64
HEAD_KEY = "audit_head"
HASHED_FIELDS = ("at", "kind", "actor_id", "session_id", "address", "user_agent", "request_id", "subject",
                 "before", "after")


@dataclass(frozen=True)
class Context:
    """Who caused the change and how they reached us."""

    actor_id: int | None
    session_id: str | None = None
    address: str = ""
    user_agent: str = ""
    request_id: str = ""


def canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def record_hash(prev_hash: str, content: dict) -> str:
    return hashlib.sha256((prev_hash + canonical(content)).encode()).hexdigest()


def append(ctx: Context, kind: str, subject: str, before: Any, after: Any, at: int) -> AuditRecord:
    """Add one record to the chain; call inside a transaction."""
    prev_hash = _lock_head()
    content = {"at": at, "kind": kind, "actor_id": ctx.actor_id, "session_id": ctx.session_id,
               "address": ctx.address, "user_agent": ctx.user_agent, "request_id": ctx.request_id,
               "subject": subject, "before": canonical(before), "after": canonical(after)}
    digest = record_hash(prev_hash, content)
    record_id = _INSERT_RECORD.insert(*(content[name] for name in HASHED_FIELDS), prev_hash, digest)
    _SET_HEAD.cursor(digest, HEAD_KEY)
    return AuditRecord(id=record_id, prev_hash=prev_hash, hash=digest, **content)


def append_many(entries: list[tuple[Context, str, str, Any, Any, int]]) -> None:
    """`append` for each (ctx, kind, subject, before, after, at) in order. Call inside a transaction."""
    if entries:
        execute_all(chain_writes(entries))


def chain_writes(entries: list[tuple[Context, str, str, Any, Any, int]]) -> list[tuple[str, list]]:
    """Locks the chain head now and returns the writes that extend it by `entries`, in order: one INSERT of
    all the records (ids rising in chain order) and the head's update. The caller runs them in this
    transaction (store.db.execute_all), possibly together with writes of its own."""
    prev_hash = _lock_head()
    params: list[Any] = []
    for ctx, kind, subject, before, after, at in entries:
        content = (at, kind, ctx.actor_id, ctx.session_id, ctx.address, ctx.user_agent, ctx.request_id, subject,
                   canonical(before), canonical(after))
        digest = record_hash(prev_hash, dict(zip(HASHED_FIELDS, content, strict=True)))
        params.extend((*content, prev_hash, digest))
        prev_hash = digest
    columns = ", ".join(f'"{name}"' for name in (*HASHED_FIELDS, "prev_hash", "hash"))
    return [(f"INSERT INTO audit_log ({columns}) VALUES {rows_sql(len(entries), len(HASHED_FIELDS) + 2)}", params),
            _SET_HEAD.bound(prev_hash, HEAD_KEY)]


def _lock_head() -> str:
    locked = isinstance(Setting._meta.database.obj, pw.PostgresqlDatabase)
    head = (_HEAD_LOCKED if locked else _HEAD).cursor(HEAD_KEY).fetchone()
    if head is None:  # the chain's first record: the head row is created (by one process) and then locked
        _ENSURE_HEAD.cursor(HEAD_KEY, GENESIS)
        head = (_HEAD_LOCKED if locked else _HEAD).cursor(HEAD_KEY).fetchone()
    return head[0]


# The chain's statements, SQL generated once (store.db.Statement); the probes are example values.
_ENSURE_HEAD = Statement(lambda key, value: Setting.insert(key=key, value=value).on_conflict_ignore(), ("k", "v"))
_HEAD = Statement(lambda key: Setting.select(Setting.value).where(Setting.key == key), ("k",))
_HEAD_LOCKED = Statement(lambda key: _HEAD.build(key).for_update(), ("k",))
_SET_HEAD = Statement(lambda value, key: Setting.update(value=value).where(Setting.key == key), ("v", "k"))
_INSERT_RECORD = Statement(
    lambda at, kind, actor_id, session_id, address, user_agent, request_id, subject, before, after, prev_hash,
    digest: AuditRecord.insert(at=at, kind=kind, actor_id=actor_id, session_id=session_id, address=address,
                               user_agent=user_agent, request_id=request_id, subject=subject, before=before,
                               after=after, prev_hash=prev_hash, hash=digest),
    (1, "k", 2, "s", "a", "u", "r", "sub", "b", "af", "p", "h"))


@dataclass(frozen=True)
class Break:
    record_id: int
    problem: str


def verify(records: Iterable[AuditRecord], head: str | None = None) -> Break | None:
    """The first record (in id order) whose hash or link is wrong, or None when the chain holds."""
    expected_prev = GENESIS
    last = GENESIS
    for record in records:
        if record.prev_hash != expected_prev:
            return Break(record.id, "prev_hash does not match the previous record")
        content = {name: getattr(record, name) for name in HASHED_FIELDS}
        if record_hash(record.prev_hash, content) != record.hash:
            return Break(record.id, "content does not match its hash")
        expected_prev = last = record.hash
    if head is not None and head != last:
        return Break(-1, "the chain head does not match the last record (records were removed)")
    return None


def verify_stored(batch: int = 10_000) -> Break | None:
    """Verify the whole stored chain, reading it in id order in batches (call on a database thread)."""
    head = Setting.get_or_none(Setting.key == HEAD_KEY)
    return verify(_all_records(batch), head.value if head else GENESIS)


def _all_records(batch: int) -> Iterable[AuditRecord]:
    last_id = 0
    while True:
        rows = list(AuditRecord.select().where(AuditRecord.id > last_id).order_by(AuditRecord.id).limit(batch))
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id
