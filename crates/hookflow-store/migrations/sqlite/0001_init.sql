-- hookflow schema (SQLite). Timestamps are unix milliseconds; JSON is stored as text.

CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id),
    name          TEXT,
    key_hash      TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);
CREATE INDEX api_keys_workspace ON api_keys (workspace_id, id);

CREATE TABLE secrets (
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id),
    name          TEXT NOT NULL,
    value         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, name)
);

CREATE TABLE workflows (
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id),
    name          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    definition    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, name, version)
);

CREATE TABLE deployments (
    id                          TEXT PRIMARY KEY,
    workspace_id                TEXT NOT NULL REFERENCES workspaces (id),
    name                        TEXT NOT NULL,
    workflow                    TEXT NOT NULL,
    variants                    TEXT NOT NULL,
    concurrency_limit           INTEGER,
    secret                      TEXT NOT NULL,
    previous_secret             TEXT,
    previous_secret_expires_at  INTEGER,
    created_at                  INTEGER NOT NULL,
    updated_at                  INTEGER NOT NULL,
    UNIQUE (workspace_id, name)
);

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    workspace_id     TEXT NOT NULL,
    deployment_id    TEXT NOT NULL,
    deployment_name  TEXT NOT NULL,
    variant          TEXT NOT NULL,
    workflow         TEXT NOT NULL,
    version          INTEGER NOT NULL,
    status           TEXT NOT NULL,
    source           TEXT NOT NULL,
    delivery         TEXT NOT NULL,
    callback_url     TEXT,
    inputs           TEXT NOT NULL,
    run_user         TEXT,
    metadata         TEXT NOT NULL,
    settings         TEXT NOT NULL,
    output           TEXT,
    error            TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
);
CREATE INDEX runs_workspace ON runs (workspace_id, id);
-- concurrency count and first-in-first-out promotion of queued runs
CREATE INDEX runs_deployment_status ON runs (deployment_id, status, id);

CREATE TABLE step_executions (
    run_id       TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    status       TEXT NOT NULL,
    output       TEXT,
    error        TEXT,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    PRIMARY KEY (run_id, step_id, attempt)
);

-- The work queue. A job is due when run_at <= now; claiming it moves run_at to the end of
-- its lease, so an expired lease makes it due again. step_id NULL means "start the run".
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       TEXT NOT NULL,
    step_id      TEXT,
    attempt      INTEGER NOT NULL,
    run_at       INTEGER NOT NULL,
    lease_ms     INTEGER NOT NULL,
    lease_token  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_due ON jobs (run_at);
CREATE INDEX jobs_run ON jobs (run_id);

-- Outbox of events (callbacks). run_at is NULL once the event is delivered or failed.
CREATE TABLE deliveries (
    id             TEXT PRIMARY KEY,
    run_id         TEXT NOT NULL,
    workspace_id   TEXT NOT NULL,
    deployment_id  TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    payload        TEXT NOT NULL,
    url            TEXT NOT NULL,
    status         TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    run_at         INTEGER,
    lease_token    INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (run_at) WHERE run_at IS NOT NULL;
CREATE INDEX deliveries_run ON deliveries (run_id);

CREATE TABLE delivery_attempts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id      TEXT NOT NULL,
    run_id           TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    trigger          TEXT NOT NULL,
    url              TEXT NOT NULL,
    status_code      INTEGER,
    response_body    TEXT,
    duration_ms      INTEGER NOT NULL,
    error            TEXT,
    created_at       INTEGER NOT NULL,
    next_attempt_at  INTEGER
);
CREATE INDEX delivery_attempts_run ON delivery_attempts (run_id, id);

CREATE TABLE idempotency_keys (
    workspace_id  TEXT NOT NULL,
    key           TEXT NOT NULL,
    body_hash     TEXT NOT NULL,
    request_id    TEXT NOT NULL,
    response      TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, key)
);
