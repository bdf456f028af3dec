-- Per-network rate configuration (the limiter), set with `ferry limits set KEY …`.
-- `key` names a network by the host part of its address (or a parent domain of it, or
-- a network name); see docs/ARCHITECTURE.md, "Limiter". NULL optional columns mean
-- "use the node's default". Times are unix milliseconds.
CREATE TABLE network_limits (
    key                 TEXT    PRIMARY KEY,
    sessions_per_ip     INTEGER NOT NULL,
    connects_per_minute REAL    NOT NULL,
    burst               INTEGER NOT NULL,
    messages_per_second REAL,
    message_burst       INTEGER,
    sessions_total      INTEGER,
    updated_at          INTEGER NOT NULL
) WITHOUT ROWID;

-- Each node's live upstream sessions per (limit key, source IP), rewritten every few
-- seconds; the limiter sums the other nodes' fresh rows to enforce `sessions_total`.
-- `source_ip` is '' for connections without a bound source address.
CREATE TABLE network_sessions (
    node_id    TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    source_ip  TEXT    NOT NULL,
    sessions   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (node_id, key, source_ip)
) WITHOUT ROWID;

CREATE INDEX network_sessions_key ON network_sessions (key);
