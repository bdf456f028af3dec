-- Ferry schema, SQLite backend. Append-only: never edit a migration that has shipped.
-- Times are unix milliseconds (INTEGER). IRC names and raw lines are BLOBs (bytes-faithful).

CREATE TABLE users (
    id                     INTEGER PRIMARY KEY,
    name                   TEXT    NOT NULL UNIQUE,
    password_hash          TEXT    NOT NULL,
    is_admin               INTEGER NOT NULL DEFAULT 0,
    created_at             INTEGER NOT NULL,
    retention_max_age_days INTEGER,
    retention_max_messages INTEGER
);

CREATE TABLE networks (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name           TEXT    NOT NULL,
    addr           TEXT    NOT NULL,
    tls            INTEGER NOT NULL DEFAULT 1,
    tls_verify     TEXT    NOT NULL DEFAULT 'verify',
    nick           TEXT    NOT NULL,
    username       TEXT,
    realname       TEXT,
    sasl_mechanism TEXT,
    sasl_username  TEXT,
    sasl_password  TEXT,
    sasl_cert      TEXT,
    source_ip      TEXT,
    enabled        INTEGER NOT NULL DEFAULT 1,
    created_at     INTEGER NOT NULL,
    UNIQUE (user_id, name)
);

CREATE TABLE buffers (
    id              INTEGER PRIMARY KEY,
    network_id      INTEGER NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
    key             BLOB    NOT NULL,
    name            BLOB    NOT NULL,
    kind            TEXT    NOT NULL,
    joined          INTEGER NOT NULL DEFAULT 0,
    chan_key        BLOB,
    read_marker     INTEGER NOT NULL DEFAULT 0,
    last_message_at INTEGER,
    UNIQUE (network_id, key)
);

-- Content-addressed message bodies: each distinct line is stored once, whatever the
-- number of users who received it.
CREATE TABLE bodies (
    id   INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    raw  BLOB NOT NULL,
    text TEXT NOT NULL
);

CREATE VIRTUAL TABLE bodies_fts USING fts5(
    text,
    content = 'bodies',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);

CREATE TRIGGER bodies_fts_insert AFTER INSERT ON bodies BEGIN
    INSERT INTO bodies_fts (rowid, text) VALUES (new.id, new.text);
END;

CREATE TRIGGER bodies_fts_delete AFTER DELETE ON bodies BEGIN
    INSERT INTO bodies_fts (bodies_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;

CREATE TRIGGER bodies_fts_update AFTER UPDATE OF text ON bodies BEGIN
    INSERT INTO bodies_fts (bodies_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO bodies_fts (rowid, text) VALUES (new.id, new.text);
END;

-- One thin row per delivered message per user; `seq` is the public message id.
CREATE TABLE messages (
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    network_id INTEGER NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
    buffer_id  INTEGER NOT NULL REFERENCES buffers(id) ON DELETE CASCADE,
    time       INTEGER NOT NULL,
    sender     TEXT    NOT NULL,
    command    TEXT    NOT NULL,
    msgid      TEXT,
    body_id    INTEGER NOT NULL REFERENCES bodies(id),
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;

CREATE INDEX messages_buffer_seq ON messages (buffer_id, seq);
CREATE INDEX messages_network_seq ON messages (network_id, seq);
CREATE INDEX messages_user_time ON messages (user_id, time);
CREATE INDEX messages_body ON messages (body_id);

CREATE TABLE client_positions (
    network_id INTEGER NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
    client     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (network_id, client)
) WITHOUT ROWID;

CREATE TABLE nodes (
    id           TEXT    PRIMARY KEY,
    admin_url    TEXT    NOT NULL,
    admin_token  TEXT    NOT NULL,
    http_addr    TEXT    NOT NULL,
    irc_addr     TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
