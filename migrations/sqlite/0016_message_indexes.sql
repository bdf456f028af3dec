-- Fewer B-trees per stored message (issue 10, item 4; the query plans are in
-- docs/benchmarks.md §9). Every query that reads `messages` is served by three B-trees:
--
-- - the table itself, now keyed by (buffer_id, seq): a buffer's history, unread counts
--   and read markers read one contiguous range of it (they used `messages_network_seq`
--   and filtered by buffer, or `messages_buffer_seq` and a second lookup per row);
-- - `messages_user_seq` (user_id, seq), UNIQUE: what `seq` means (one message id per
--   user), the user's newest seq, websocket resume, replay of a network (its entries
--   carry buffer_id, so rows of other networks are skipped without reading them),
--   retention by count, and the cascade when a user is deleted;
-- - `messages_body` (body_id, user_id): search (hits are bodies, shared by every user
--   who received the line: the user narrows each hit to their own rows without
--   reading the others') and the clean-up of bodies nothing refers to.
--
-- Gone: `messages_network_seq` (per-network reads go through the buffers of the
-- network), `messages_user_time` (retention by age scans the user's buffers, once per
-- retention interval; CHATHISTORY TARGETS reads each buffer's newest lines) and the
-- `network_id` column (a buffer belongs to one network; deleting a network deletes its
-- buffers, which deletes their messages).
--
-- SQLite cannot change a table's primary key in place: the table is rebuilt, every row
-- and every value kept (`seq`, the public message id, included). SQLite has one node,
-- so no older Ferry writes to it meanwhile. Runs in the migration's transaction.
CREATE TABLE messages_0016 (
    buffer_id INTEGER NOT NULL REFERENCES buffers(id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    user_id   INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    time      INTEGER NOT NULL,
    sender    TEXT    NOT NULL,
    command   TEXT    NOT NULL,
    msgid     TEXT,
    body_id   INTEGER NOT NULL REFERENCES bodies(id),
    epoch     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (buffer_id, seq)
) WITHOUT ROWID;

INSERT INTO messages_0016 (buffer_id, seq, user_id, time, sender, command, msgid, body_id, epoch)
SELECT buffer_id, seq, user_id, time, sender, command, msgid, body_id, epoch
FROM messages ORDER BY buffer_id, seq;

DROP TABLE messages;
ALTER TABLE messages_0016 RENAME TO messages;

CREATE UNIQUE INDEX messages_user_seq ON messages (user_id, seq);
CREATE INDEX messages_body ON messages (body_id, user_id);
