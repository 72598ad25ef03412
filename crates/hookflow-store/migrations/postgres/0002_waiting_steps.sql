-- Async steps, approvals and timeouts.

-- 'execute' runs the step; 'timeout' fires when an open async or human step has waited too long.
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'execute';
CREATE INDEX jobs_step ON jobs (run_id, step_id);
-- jobs_step serves every lookup by run as well: one index less to maintain on a busy table.
DROP INDEX jobs_run;

-- SHA-256 of the completion accepted for an async step attempt (duplicates are idempotent).
ALTER TABLE step_executions ADD COLUMN completion_hash TEXT;

CREATE TABLE approvals (
    id            TEXT COLLATE "C" PRIMARY KEY,
    workspace_id  TEXT COLLATE "C" NOT NULL,
    run_id        TEXT COLLATE "C" NOT NULL,
    step_id       TEXT COLLATE "C" NOT NULL,
    attempt       BIGINT NOT NULL,
    prompt        TEXT NOT NULL,
    assignee      TEXT,
    status        TEXT NOT NULL,
    decision      TEXT,
    comment       TEXT,
    data          TEXT,
    responder     TEXT,
    created_at    BIGINT NOT NULL,
    deadline      BIGINT,
    answered_at   BIGINT
);
CREATE INDEX approvals_workspace ON approvals (workspace_id, status, id);
CREATE INDEX approvals_run ON approvals (run_id, step_id, attempt);

-- Keys this installation signs its own tokens with (shared by every node).
CREATE TABLE server_keys (
    name        TEXT COLLATE "C" PRIMARY KEY,
    value       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
