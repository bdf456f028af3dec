-- Invite links (issue 11): `ferry user invite` hands out a one-time sign-up URL. Only
-- the SHA-256 of the token is stored, so a copy of the database hands out no invite.
-- `used_at` is set once, by the sign-up that wins (an UPDATE … WHERE used_at IS NULL in
-- the transaction that creates the user). Times are unix milliseconds.
CREATE TABLE invites (
    token_hash BYTEA   PRIMARY KEY,
    is_admin   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL,
    used_at    BIGINT,
    used_by    TEXT
);

CREATE INDEX invites_expires ON invites (expires_at);
