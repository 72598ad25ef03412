-- Async steps, approvals and timeouts.

-- 'execute' runs the step; 'timeout' fires when an open async or human step has waited too long.
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'execute';
CREATE INDEX jobs_step ON jobs (run_id, step_id);

-- SHA-256 of the completion accepted for an async step attempt (duplicates are idempotent).
ALTER TABLE step_executions ADD COLUMN completion_hash TEXT;

CREATE TABLE approvals (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    step_id       TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    prompt        TEXT NOT NULL,
    assignee      TEXT,
    status        TEXT NOT NULL,
    decision      TEXT,
    comment       TEXT,
    data          TEXT,
    responder     TEXT,
    created_at    INTEGER NOT NULL,
    deadline      INTEGER,
    answered_at   INTEGER
);
CREATE INDEX approvals_workspace ON approvals (workspace_id, status, id);
CREATE INDEX approvals_run ON approvals (run_id, step_id, attempt);

-- Keys this installation signs its own tokens with (shared by every node).
CREATE TABLE server_keys (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
