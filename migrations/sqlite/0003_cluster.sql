-- Cluster mode: single ownership of users with an epoch (fencing token), node leases,
-- capacity and health in the node list. Expand-only: old nodes ignore the new columns.

-- Which node runs each user. `node_id` NULL means unowned (adopted by the next
-- failover round). `epoch` grows by one on every assignment; every write a user actor
-- makes carries the epoch it was started with and is refused when it no longer matches.
CREATE TABLE user_owners (
    user_id    INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    node_id    TEXT,
    epoch      INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);

CREATE INDEX user_owners_node ON user_owners (node_id);

INSERT INTO user_owners (user_id, node_id, epoch, updated_at)
SELECT id, NULL, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) FROM users;

ALTER TABLE nodes ADD COLUMN source_ips           TEXT   NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN schema_version       INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN config_fingerprint   TEXT   NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN fd_limit             INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN fd_budget            INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN users                INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN sessions             INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN sessions_per_network TEXT   NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN sessions_per_ip      TEXT   NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN loop_lag_ms          INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN rss_bytes            INTEGER NOT NULL DEFAULT 0;
-- Set from the database's clock (now() + lease), so node clocks do not matter.
ALTER TABLE nodes ADD COLUMN lease_expires_at     INTEGER NOT NULL DEFAULT 0;

-- The epoch each message was written with: shows which owner wrote what (audits and
-- the fencing tests).
ALTER TABLE messages ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
