"""peewee models mirroring sql/*/0001_initial.sql. The SQL files create the tables; these only map them."""

from __future__ import annotations

import peewee as pw

database = pw.DatabaseProxy()


class BaseModel(pw.Model):
    class Meta:
        database = database
        legacy_table_names = False


class User(BaseModel):
    username = pw.TextField()
    username_key = pw.TextField(unique=True)
    password_hash = pw.TextField()
    role = pw.TextField(default="player")
    status = pw.TextField(default="active")
    created_at = pw.BigIntegerField()

    class Meta:
        table_name = "users"


class Session(BaseModel):
    id = pw.TextField(primary_key=True)
    user = pw.ForeignKeyField(User, column_name="user_id", backref="sessions")
    session_key = pw.TextField()
    refresh_hash = pw.TextField()
    created_at = pw.BigIntegerField()
    expires_at = pw.BigIntegerField()
    revoked_at = pw.BigIntegerField(null=True)
    revoked_reason = pw.TextField(null=True)
    last_seq = pw.BigIntegerField(default=0)
    address = pw.TextField(default="")
    user_agent = pw.TextField(default="")

    class Meta:
        table_name = "sessions"


class SpentRefreshToken(BaseModel):
    token_hash = pw.TextField(primary_key=True)
    session = pw.ForeignKeyField(Session, column_name="session_id")
    spent_at = pw.BigIntegerField()

    class Meta:
        table_name = "spent_refresh_tokens"


class Setting(BaseModel):
    key = pw.TextField(primary_key=True)
    value = pw.TextField()

    class Meta:
        table_name = "settings"


class Action(BaseModel):
    id = pw.BigAutoField()
    user = pw.ForeignKeyField(User, column_name="user_id")
    session_id = pw.TextField()
    action_id = pw.TextField()
    body_hash = pw.TextField()
    board = pw.TextField()
    period = pw.TextField()
    type = pw.TextField()
    points = pw.BigIntegerField()
    duration_ms = pw.BigIntegerField(null=True)
    seq = pw.BigIntegerField()
    client_ts = pw.BigIntegerField()
    result = pw.TextField()
    status = pw.TextField(default="accepted")
    created_at = pw.BigIntegerField()

    class Meta:
        table_name = "actions"


class Score(BaseModel):
    board = pw.TextField()
    period = pw.TextField()
    user = pw.ForeignKeyField(User, column_name="user_id")
    score = pw.BigIntegerField()
    reached_seq = pw.BigIntegerField()
    updated_at = pw.BigIntegerField()

    class Meta:
        table_name = "scores"
        primary_key = pw.CompositeKey("board", "period", "user")


class AuditRecord(BaseModel):
    id = pw.BigAutoField()
    at = pw.BigIntegerField()
    kind = pw.TextField()
    actor_id = pw.BigIntegerField(null=True)
    session_id = pw.TextField(null=True)
    address = pw.TextField(default="")
    user_agent = pw.TextField(default="")
    request_id = pw.TextField(default="")
    subject = pw.TextField(default="")
    before = pw.TextField(default="null")
    after = pw.TextField(default="null")
    prev_hash = pw.TextField()
    hash = pw.TextField()  # no index: nothing looks a record up by its hash (sql 0002)

    class Meta:
        table_name = "audit_log"


class Flag(BaseModel):
    id = pw.BigAutoField()
    user = pw.ForeignKeyField(User, column_name="user_id")
    kind = pw.TextField()
    detail = pw.TextField(default="{}")
    status = pw.TextField(default="open")
    created_at = pw.BigIntegerField()
    resolved_at = pw.BigIntegerField(null=True)

    class Meta:
        table_name = "flags"

