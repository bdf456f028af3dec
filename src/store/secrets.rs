//! Secrets of rows, sealed with the node's key (`crate::secrets`): the pass that seals
//! what an older Ferry stored in plaintext, the check that the key opens what is
//! sealed, and the rotation to a new key.

use super::types::sasl_place;
use super::{Store, StoreError};
use crate::secrets::{SecretError, SecretKey};

/// What a sealing pass or a check found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecretsReport {
    /// Plaintext values sealed now.
    pub sealed_now: usize,
    /// Values that were sealed already (and open with the key).
    pub already_sealed: usize,
}

impl Store {
    fn key_for(&self, what: &str) -> Result<&SecretKey, StoreError> {
        self.secret_key().ok_or_else(|| {
            StoreError::Secret(SecretError::NoKey {
                what: what.to_owned(),
            })
        })
    }

    /// Seals every SASL password still stored in plaintext (a store from before
    /// migration 0009), in one transaction, and checks that the key opens every value
    /// sealed before. Idempotent: a node runs it at every start.
    ///
    /// # Errors
    /// No key; a sealed value that does not open with it (another key: the node must
    /// not start with it); store errors.
    pub async fn seal_secrets(&self) -> Result<SecretsReport, StoreError> {
        let key = self.key_for("the store's secrets")?;
        let mut tx = self.db.begin().await?;
        let rows: Vec<(i64, Option<String>, Option<String>)> = tx
            .query(
                "SELECT id, sasl_password, sasl_sealed FROM networks \
                 WHERE sasl_password IS NOT NULL OR sasl_sealed IS NOT NULL ORDER BY id",
            )
            .fetch_all()
            .await?;
        let mut report = SecretsReport::default();
        for (id, plain, sealed) in rows {
            let place = sasl_place(id);
            match (sealed, plain) {
                (Some(sealed), plain) => {
                    key.open(&sealed, &place)?;
                    report.already_sealed += 1;
                    if plain.is_some() {
                        // An old node wrote the plaintext back: the sealed value wins.
                        tx.query("UPDATE networks SET sasl_password = NULL WHERE id = $1")
                            .bind(id)
                            .execute()
                            .await?;
                    }
                }
                (None, Some(plain)) => {
                    let sealed = key.seal(&plain, &place);
                    tx.query(
                        "UPDATE networks SET sasl_sealed = $2, sasl_password = NULL \
                         WHERE id = $1",
                    )
                    .bind(id)
                    .bind(&sealed)
                    .execute()
                    .await?;
                    report.sealed_now += 1;
                }
                (None, None) => {}
            }
        }
        tx.commit().await?;
        if report.sealed_now > 0 && self.backend() == "sqlite" {
            // An older Ferry left copies of the plaintext in freed space (every
            // rewrite of a network row): rebuild the file once, so none is left.
            tracing::info!("rewriting the SQLite file so no plaintext copy of a secret remains");
            self.db.query("VACUUM").execute().await?;
            self.scrub().await?;
        }
        Ok(report)
    }

    /// Seals every secret again under `new`, in one transaction: all of them or none.
    /// The values must open with this store's key (plaintext ones are sealed too).
    /// Returns how many values were resealed.
    ///
    /// # Errors
    /// No key; a value that does not open with it; store errors (nothing changed).
    pub async fn rotate_secrets(&self, new: &SecretKey) -> Result<usize, StoreError> {
        let key = self.key_for("the store's secrets")?;
        let mut tx = self.db.begin().await?;
        let rows: Vec<(i64, Option<String>, Option<String>)> = tx
            .query(
                "SELECT id, sasl_password, sasl_sealed FROM networks \
                 WHERE sasl_password IS NOT NULL OR sasl_sealed IS NOT NULL ORDER BY id",
            )
            .fetch_all()
            .await?;
        let mut n = 0;
        for (id, plain, sealed) in rows {
            let place = sasl_place(id);
            let plain = match (sealed, plain) {
                (Some(sealed), _) => key.open(&sealed, &place)?,
                (None, Some(plain)) => plain,
                (None, None) => continue,
            };
            let resealed = new.seal(&plain, &place);
            tx.query("UPDATE networks SET sasl_sealed = $2, sasl_password = NULL WHERE id = $1")
                .bind(id)
                .bind(&resealed)
                .execute()
                .await?;
            n += 1;
        }
        tx.commit().await?;
        self.scrub().await?;
        Ok(n)
    }

    /// Leaves no old copy of a rewritten secret in SQLite's files: deleted cell
    /// contents are zeroed as they go (`secure_delete`, set on every connection) and
    /// here the WAL, which still holds the old pages, is checkpointed and truncated.
    /// On PostgreSQL an old row version stays in the table's files until its space is
    /// reused (`VACUUM FULL networks` rewrites them; see docs/operations.md).
    async fn scrub(&self) -> Result<(), StoreError> {
        if self.backend() == "sqlite" {
            self.db
                .query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute()
                .await?;
        }
        Ok(())
    }

    /// Stores a network's SASL password as an older Ferry did (plaintext), for the
    /// tests of the upgrade.
    #[doc(hidden)]
    pub async fn store_plaintext_sasl_for_tests(
        &self,
        network: i64,
        password: &str,
    ) -> Result<(), StoreError> {
        self.db
            .query("UPDATE networks SET sasl_password = $2, sasl_sealed = NULL WHERE id = $1")
            .bind(network)
            .bind(password)
            .execute()
            .await?;
        Ok(())
    }

    /// The raw SASL columns of a network `(sasl_password, sasl_sealed)`, as stored.
    #[doc(hidden)]
    pub async fn raw_sasl_for_tests(
        &self,
        network: i64,
    ) -> Result<(Option<String>, Option<String>), StoreError> {
        Ok(self
            .db
            .query("SELECT sasl_password, sasl_sealed FROM networks WHERE id = $1")
            .bind(network)
            .fetch_one()
            .await?)
    }
}
