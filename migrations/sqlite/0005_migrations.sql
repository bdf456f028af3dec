-- The migration tool (ferry migrate): a plan and every user's progress, persisted as
-- it happens so a killed CLI loses nothing and `resume` never moves a user twice.
-- Expand-only: nodes of the previous version ignore these tables.
-- Times are unix milliseconds.

CREATE TABLE migrations (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    -- drain | move | rollback
    kind         TEXT    NOT NULL,
    source_node  TEXT    NOT NULL,
    -- Comma-separated node ids the users may go to.
    targets      TEXT    NOT NULL,
    -- JSON: batch, canary, max_failure_ratio, quit_message.
    options      TEXT    NOT NULL,
    -- planned | preflight | running | paused | completed | aborted | rolled_back
    state        TEXT    NOT NULL,
    -- Why it paused or stopped, for the operator.
    note         TEXT    NOT NULL DEFAULT '',
    -- The CLI running it, and until when; another CLI may take over after expiry.
    lock_holder  TEXT,
    lock_expires INTEGER     NOT NULL DEFAULT 0,
    -- For a rollback: the migration it undoes.
    parent       INTEGER,
    started_at   INTEGER,
    finished_at  INTEGER,
    created_at   INTEGER     NOT NULL,
    updated_at   INTEGER     NOT NULL
);

CREATE TABLE migration_users (
    migration_id INTEGER     NOT NULL REFERENCES migrations(id) ON DELETE CASCADE,
    user_id      INTEGER     NOT NULL,
    user_name    TEXT    NOT NULL,
    from_node    TEXT    NOT NULL,
    to_node      TEXT    NOT NULL,
    -- 0 is the canary batch.
    batch        INTEGER     NOT NULL,
    -- pending | reserved | moving | moved | failed | rolled_back
    state        TEXT    NOT NULL,
    downtime_ms  INTEGER,
    error        TEXT    NOT NULL DEFAULT '',
    attempts     INTEGER     NOT NULL DEFAULT 0,
    -- Networks (comma-separated names) that were filled with a gap marker.
    gaps         TEXT    NOT NULL DEFAULT '',
    started_at   INTEGER,
    finished_at  INTEGER,
    PRIMARY KEY (migration_id, user_id)
);

CREATE INDEX migration_users_state ON migration_users (migration_id, state);
