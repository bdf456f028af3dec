-- Search looks at the newest bodies first (`id > floor`, widened until it holds enough
-- hits; see `Db::search`). A BRIN index on id turns that window into a bitmap of page
-- ranges, which the GIN bitmap is ANDed with, so only hits inside the window are
-- fetched from the heap. Bodies are appended in id order, so each page range holds a
-- narrow band of ids: the index is a few pages and cheap to keep up. Ranges not yet
-- summarised always match (nothing new is missed); autosummarize has each range
-- summarised as it fills. Building it reads `bodies` once (about 10 s at 10 million
-- bodies), during which inserts wait. Expand-only: older code ignores it.
CREATE INDEX IF NOT EXISTS bodies_id_brin ON bodies USING brin (id) WITH (autosummarize = on);

-- Every GIN scan reads the index's whole pending list (entries inserted but not yet
-- merged), up to 4 MB by default: about 8 ms per search at 10 million bodies. A
-- 256 kB list costs well under a millisecond to scan; inserts merge it more often.
ALTER INDEX bodies_tsv SET (gin_pending_list_limit = 256);
