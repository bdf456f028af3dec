-- Each involved node's throttle-rejection counter (JSON object, node id -> count) when
-- the migration's first batch started, so `ferry migrate status` can report the
-- rejections during the migration rather than since each node started. Empty: not
-- taken yet. Expand-only: older nodes ignore the column.
ALTER TABLE migrations ADD COLUMN rejections_baseline TEXT NOT NULL DEFAULT '';
