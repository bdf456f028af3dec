-- Secrets at rest (issue 14). Upstream SASL passwords move to `sasl_sealed`, sealed
-- with the node's secret key (`src/secrets.rs`), which the store never holds: the
-- migration cannot seal them itself, so a node seals every row whose `sasl_password`
-- is still set when it starts (`Store::seal_secrets`, idempotent) and clears it.
-- `nodes.admin_token` holds `v1:<key id>:<nonce>:<sha256 of the token>` from now on; rows
-- written before are replaced when their node registers again.
ALTER TABLE networks ADD COLUMN sasl_sealed TEXT;
