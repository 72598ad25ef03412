-- hookflow schema (PostgreSQL). Timestamps are unix milliseconds (BIGINT). JSON is stored as
-- TEXT exactly as serialized (a byte-exact round trip, and escaped U+0000 survives, which JSONB
-- refuses); the run list's metadata filter parses it with ::json. Ids and names compare
-- bytewise (COLLATE "C") so paging cursors order exactly as in SQLite, whatever the database's
-- default collation.

CREATE TABLE workspaces (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT COLLATE "C" PRIMARY KEY,
    workspace_id  TEXT COLLATE "C" NOT NULL REFERENCES workspaces (id),
    name          TEXT,
    key_hash      TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT
);
CREATE INDEX api_keys_workspace ON api_keys (workspace_id, id) WHERE revoked_at IS NULL;

CREATE TABLE secrets (
    workspace_id  TEXT COLLATE "C" NOT NULL REFERENCES workspaces (id),
    name          TEXT COLLATE "C" NOT NULL,
    value         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, name)
);

CREATE TABLE workflows (
    workspace_id  TEXT COLLATE "C" NOT NULL REFERENCES workspaces (id),
    name          TEXT COLLATE "C" NOT NULL,
    version       BIGINT NOT NULL,
    definition    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, name, version)
);

CREATE TABLE deployments (
    id                          TEXT COLLATE "C" PRIMARY KEY,
    workspace_id                TEXT COLLATE "C" NOT NULL REFERENCES workspaces (id),
    name                        TEXT COLLATE "C" NOT NULL,
    workflow                    TEXT NOT NULL,
    variants                    TEXT NOT NULL,
    concurrency_limit           BIGINT,
    secret                      TEXT NOT NULL,
    previous_secret             TEXT,
    previous_secret_expires_at  BIGINT,
    created_at                  BIGINT NOT NULL,
    updated_at                  BIGINT NOT NULL,
    UNIQUE (workspace_id, name)
);
CREATE INDEX deployments_workspace ON deployments (workspace_id, id);

CREATE TABLE runs (
    id               TEXT COLLATE "C" PRIMARY KEY,
    workspace_id     TEXT COLLATE "C" NOT NULL,
    deployment_id    TEXT COLLATE "C" NOT NULL,
    deployment_name  TEXT NOT NULL,
    variant          TEXT NOT NULL,
    workflow         TEXT NOT NULL,
    version          BIGINT NOT NULL,
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
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX runs_workspace ON runs (workspace_id, id);
-- Concurrency count and first-in-first-out promotion of queued runs: only live runs, so the
-- index stays small however many runs have ended.
CREATE INDEX runs_deployment_live ON runs (deployment_id, status, id)
    WHERE status IN ('queued', 'running', 'waiting');

CREATE TABLE step_executions (
    run_id       TEXT COLLATE "C" NOT NULL,
    step_id      TEXT COLLATE "C" NOT NULL,
    attempt      BIGINT NOT NULL,
    status       TEXT NOT NULL,
    output       TEXT,
    error        TEXT,
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    PRIMARY KEY (run_id, step_id, attempt)
);

-- The work queue. A job is due when run_at <= now; claiming it moves run_at to the end of its
-- lease, so an expired lease makes it due again. step_id NULL means "start the run". Claims
-- walk jobs_due in order and stop after the batch: O(batch) however long the backlog.
CREATE TABLE jobs (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id       TEXT COLLATE "C" NOT NULL,
    step_id      TEXT COLLATE "C",
    attempt      BIGINT NOT NULL,
    run_at       BIGINT NOT NULL,
    lease_ms     BIGINT NOT NULL,
    lease_token  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_due ON jobs (run_at, id);
CREATE INDEX jobs_run ON jobs (run_id);

-- Outbox of events (callbacks). run_at is NULL once the event is delivered or failed, so the
-- partial index only holds events still to deliver.
CREATE TABLE deliveries (
    id             TEXT COLLATE "C" PRIMARY KEY,
    run_id         TEXT COLLATE "C" NOT NULL,
    workspace_id   TEXT COLLATE "C" NOT NULL,
    deployment_id  TEXT COLLATE "C" NOT NULL,
    event_type     TEXT NOT NULL,
    payload        TEXT NOT NULL,
    url            TEXT NOT NULL,
    status         TEXT NOT NULL,
    attempts       BIGINT NOT NULL DEFAULT 0,
    run_at         BIGINT,
    lease_token    BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (run_at) WHERE run_at IS NOT NULL;
CREATE INDEX deliveries_run ON deliveries (run_id, created_at);

CREATE TABLE delivery_attempts (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      TEXT COLLATE "C" NOT NULL,
    run_id           TEXT COLLATE "C" NOT NULL,
    attempt          BIGINT NOT NULL,
    trigger          TEXT NOT NULL,
    url              TEXT NOT NULL,
    status_code      BIGINT,
    response_body    TEXT,
    duration_ms      BIGINT NOT NULL,
    error            TEXT,
    created_at       BIGINT NOT NULL,
    next_attempt_at  BIGINT
);
CREATE INDEX delivery_attempts_run ON delivery_attempts (run_id, id);

CREATE TABLE idempotency_keys (
    workspace_id  TEXT COLLATE "C" NOT NULL,
    key           TEXT COLLATE "C" NOT NULL,
    body_hash     TEXT NOT NULL,
    request_id    TEXT NOT NULL,
    response      TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, key)
);
