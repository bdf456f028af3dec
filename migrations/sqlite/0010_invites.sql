-- Invite links (issue 11): `ferry user invite` hands out a one-time sign-up URL. Only
-- the SHA-256 of the token is stored, so a copy of the database hands out no invite.
-- `used_at` is set once, by the sign-up that wins (an UPDATE … WHERE used_at IS NULL in
-- the transaction that creates the user). Times are unix milliseconds.
CREATE TABLE invites (
    token_hash BLOB    PRIMARY KEY,
    is_admin   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    used_by    TEXT
) WITHOUT ROWID;

CREATE INDEX invites_expires ON invites (expires_at);
