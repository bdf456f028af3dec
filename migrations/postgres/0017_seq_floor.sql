-- Ids a user's next owner must start above (issue 16): a node that takes a user over
-- from a node that did not release it (failover, a node cut off from the store)
-- reserves the 2^32 ids above the user's newest stored line for what the old owner
-- may still hold (its outage spill file, written back at its next start), and numbers
-- new lines from here. 0: no reservation. Expand-only: older nodes ignore it.
ALTER TABLE user_owners ADD COLUMN seq_floor BIGINT NOT NULL DEFAULT 0;
