-- Fewer B-trees per stored message (issue 10, item 4; the query plans are in
-- docs/benchmarks.md §9). Every query that reads `messages` is served by three
-- indexes besides the heap:
--
-- - `messages_buffer_seq` (buffer_id, seq): a buffer's history, unread counts and
--   read markers (they used to AND `messages_network_seq` with `messages_user_time`
--   and sort every line of the network), retention by age (through the user's
--   buffers) and the cascade when a buffer is deleted;
-- - `messages_pkey` (user_id, seq): what `seq` means (one message id per user), the
--   user's newest seq, websocket resume, replay of a network, retention by count and
--   the cascade when a user is deleted;
-- - `messages_body` (body_id): search (hits are bodies) and the clean-up of bodies
--   nothing refers to.
--
-- Dropped: `messages_network_seq` (per-network reads go through the buffers of the
-- network), `messages_user_time` (retention by age scans the user's buffers, once per
-- retention interval; CHATHISTORY TARGETS reads each buffer's newest lines) and the
-- foreign key from `network_id` to `networks` (deleting a network deletes its
-- buffers, which delete their messages; without an index the key's own cascade would
-- scan the table).
--
-- Expand/contract: the `network_id` column stays, and this Ferry still fills it, so a
-- node of the previous version keeps working against this schema (its queries are
-- slower without the two indexes, nothing else). A later migration may drop the
-- column once no such node is left; nothing of this Ferry reads it.
DROP INDEX IF EXISTS messages_network_seq;
DROP INDEX IF EXISTS messages_user_time;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_network_id_fkey;
