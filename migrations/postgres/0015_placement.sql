-- Slot-aware placement, spill and the cluster-wide connect budget (issue 17).
-- Expand-only: nodes of the previous version ignore the new column and table.

-- Each node's per-limits-key load, published with every heartbeat: JSON
-- `{"<key>": {"held": N, "waiting": M}}` — sessions holding a slot on this node and
-- connects waiting in its limiter's queue. Placement and `ferry node list` read it.
ALTER TABLE nodes ADD COLUMN key_load TEXT NOT NULL DEFAULT '{}';

-- `ferry limits set KEY --connects-per-minute-total R`: the network's connect rate for
-- the whole cluster; NULL: no cluster-wide rate.
ALTER TABLE network_limits ADD COLUMN connects_per_minute_total DOUBLE PRECISION;

-- The cluster's connect budget per limits key: a token bucket every node takes from
-- with one atomic UPDATE (tokens refilled from `refilled_at`, by the database's clock,
-- at `connects_per_minute_total`). Times are unix milliseconds.
CREATE TABLE connect_budget (
    key         TEXT             PRIMARY KEY,
    tokens      DOUBLE PRECISION NOT NULL,
    refilled_at BIGINT           NOT NULL
);
