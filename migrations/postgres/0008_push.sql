-- Web Push notifications (issue 12). Expand-only: older code ignores these tables.

-- The cluster's VAPID key pair (RFC 8292), one row: every node signs pushes with the
-- same key, which browsers bound their subscriptions to. `private_key` is the P-256
-- private scalar, base64url. Made once by the first node that needs it.
CREATE TABLE push_vapid (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    private_key TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);

-- Where to push a user's notifications: a browser's or a distributor's endpoint with
-- its RFC 8291 keys (base64url). One user's subscription is never another's: an
-- endpoint is unique per user only, and lookups always name the user. `format` is what
-- the push carries: `json` (Ferry's payload, for the web client) or `irc` (the IRC line,
-- for clients that registered with `WEBPUSH REGISTER`, soju.im/webpush).
CREATE TABLE push_subscriptions (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    endpoint   TEXT   NOT NULL,
    p256dh     TEXT   NOT NULL,
    auth       TEXT   NOT NULL,
    format     TEXT   NOT NULL DEFAULT 'json',
    created_at BIGINT NOT NULL,
    UNIQUE (user_id, endpoint)
);

-- Per-user choices: extra keywords that push (one per line), and whether an attached
-- IRC client counts as "active" (no pushes while one is attached).
CREATE TABLE push_settings (
    user_id       BIGINT  PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    keywords      TEXT    NOT NULL DEFAULT '',
    irc_is_active BOOLEAN NOT NULL DEFAULT FALSE
);

-- Muted buffers: no pushes for lines in them. By casefolded name, so a buffer can be
-- muted before its first line is stored.
CREATE TABLE push_mutes (
    network_id BIGINT NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
    buffer_key BYTEA  NOT NULL,
    PRIMARY KEY (network_id, buffer_key)
);
