-- Users, sessions, settings, and the score tables the submission path writes in one transaction.
-- Times are Unix milliseconds (BIGINT), as on the wire.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL,
    username_key  TEXT NOT NULL UNIQUE,            -- lower(username): names are unique case-insensitively
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'player' CHECK (role IN ('player', 'admin')),
    status        TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'banned')),
    created_at    BIGINT NOT NULL
);

CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    user_id       BIGINT NOT NULL REFERENCES users(id),
    session_key   TEXT NOT NULL,
    refresh_hash  TEXT NOT NULL,                   -- SHA-256 of the one refresh token that works now
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    revoked_reason TEXT,
    last_seq      BIGINT NOT NULL DEFAULT 0,       -- highest accepted seq; the cache copy is rebuilt from here
    address       TEXT NOT NULL DEFAULT '',
    user_agent    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user ON sessions(user_id);

-- Every refresh token ever spent: presenting one again revokes its whole session.
CREATE TABLE spent_refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    spent_at   BIGINT NOT NULL
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE actions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,             -- commit order; doubles as the rank tie-break
    user_id     BIGINT NOT NULL REFERENCES users(id),
    session_id  TEXT NOT NULL,
    action_id   TEXT NOT NULL,
    body_hash   TEXT NOT NULL,
    board       TEXT NOT NULL,
    period      TEXT NOT NULL,
    type        TEXT NOT NULL,
    points      BIGINT NOT NULL,
    duration_ms BIGINT,
    seq         BIGINT NOT NULL,
    client_ts   BIGINT NOT NULL,
    result      TEXT NOT NULL,                     -- the JSON acknowledged, returned again on a retry
    status      TEXT NOT NULL DEFAULT 'accepted' CHECK (status IN ('accepted', 'voided')),
    created_at  BIGINT NOT NULL,
    UNIQUE (user_id, action_id)
);
CREATE INDEX actions_user_time ON actions(user_id, created_at);

CREATE TABLE scores (
    board       TEXT NOT NULL,
    period      TEXT NOT NULL,
    user_id     BIGINT NOT NULL REFERENCES users(id),
    score       BIGINT NOT NULL,
    reached_seq BIGINT NOT NULL,                   -- actions.id that reached this score: earlier ranks first on ties
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (board, period, user_id)
);
CREATE INDEX scores_rank ON scores(board, period, score, reached_seq);

-- Tamper-evident trail: hash = SHA-256(prev_hash + canonical JSON of the row's content).
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    actor_id    BIGINT,
    session_id  TEXT,
    address     TEXT NOT NULL DEFAULT '',
    user_agent  TEXT NOT NULL DEFAULT '',
    request_id  TEXT NOT NULL DEFAULT '',
    subject     TEXT NOT NULL DEFAULT '',
    before      TEXT NOT NULL DEFAULT 'null',
    after       TEXT NOT NULL DEFAULT 'null',
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE
);

-- Anti-cheat verdicts (filled by the anti-cheat work; sketched now so the schema is whole).
CREATE TABLE flags (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     BIGINT NOT NULL REFERENCES users(id),
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '{}',
    status      TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'dismissed')),
    created_at  BIGINT NOT NULL,
    resolved_at BIGINT
);
CREATE INDEX flags_user ON flags(user_id, status);
