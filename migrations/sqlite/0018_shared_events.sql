-- A shared channel line is stored once (issue 10 item 1; docs/design/store-once.md).
--
-- A *stream* is what one node's connections to one server address receive in one
-- channel. Lines of a stream that several users received byte-identically are one
-- `events` row, visible to an *audience*: an interned set of buffers (one per user who
-- received it), whose members are `audience_members` rows (one per member per distinct
-- audience, written when membership changes, not per line). Everything else stays per
-- user in `messages`. A user's lines are `messages` ∪ the events of the audiences their
-- buffers belong to, at or above the buffer's `shared_from`: the `lines` view.
--
-- Expand-only: nothing of the previous schema changes meaning, `messages` keeps every
-- row it had (ids and order included), and an older node keeps working (it does not
-- see shared events, which it never wrote).
CREATE TABLE streams (
    id      INTEGER PRIMARY KEY,
    node    TEXT NOT NULL,
    server  TEXT NOT NULL,
    channel BLOB NOT NULL,
    UNIQUE (node, server, channel)
);

-- `hash`: SHA-256 of the sorted member buffer ids (8 bytes big-endian each).
CREATE TABLE audiences (
    id        INTEGER PRIMARY KEY,
    stream_id INTEGER NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
    hash      BLOB NOT NULL,
    UNIQUE (stream_id, hash)
);

CREATE TABLE audience_members (
    audience_id INTEGER NOT NULL REFERENCES audiences(id) ON DELETE CASCADE,
    buffer_id   INTEGER NOT NULL REFERENCES buffers(id) ON DELETE CASCADE,
    user_id     INTEGER NOT NULL,
    network_id  INTEGER NOT NULL,
    PRIMARY KEY (audience_id, buffer_id)
) WITHOUT ROWID;
CREATE INDEX audience_members_buffer ON audience_members (buffer_id, audience_id);
CREATE INDEX audience_members_user ON audience_members (user_id);

-- `id` is the line's seq in every member's history (one node-wide clock).
CREATE TABLE events (
    stream_id   INTEGER NOT NULL,
    id          INTEGER NOT NULL,
    audience_id INTEGER NOT NULL,
    time        INTEGER NOT NULL,
    sender      TEXT    NOT NULL,
    command     TEXT    NOT NULL,
    msgid       TEXT,
    body_id     INTEGER NOT NULL REFERENCES bodies(id),
    PRIMARY KEY (stream_id, id)
) WITHOUT ROWID;
CREATE INDEX events_audience ON events (audience_id, id);
CREATE INDEX events_body ON events (body_id);

-- Events with id < shared_from are not visible in the buffer (retention, a cleared
-- history).
ALTER TABLE buffers ADD COLUMN shared_from INTEGER NOT NULL DEFAULT 0;

-- The shared lines of each member buffer, shaped like `messages`.
CREATE VIEW shared_lines AS
SELECT am.buffer_id AS buffer_id, e.id AS seq, am.user_id AS user_id, e.time AS time,
       e.sender AS sender, e.command AS command, e.msgid AS msgid, e.body_id AS body_id
FROM audience_members am
JOIN events e ON e.audience_id = am.audience_id
JOIN buffers sb ON sb.id = am.buffer_id
WHERE e.id >= sb.shared_from;

-- Every line of every buffer: what readers used `messages` for.
CREATE VIEW lines AS
SELECT buffer_id, seq, user_id, time, sender, command, msgid, body_id FROM messages
UNION ALL
SELECT buffer_id, seq, user_id, time, sender, command, msgid, body_id FROM shared_lines;
