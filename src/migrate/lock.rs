//! A migration's lock: one driver at a time runs a migration. The lock is a
//! compare-and-set in the store with a TTL, renewed in the background while the driver
//! runs; a driver that finds the lock held by a process of this machine that is gone
//! waits for it to lapse instead of failing.

use std::time::Duration;

use super::{now, Progress};
use crate::store::Store;

/// Holds a migration's lock while the driver runs it.
pub struct Lock {
    store: Store,
    id: i64,
    holder: String,
    /// Renews the lock every third of its TTL while the driver runs, so a long batch
    /// never loses it; a killed driver stops renewing and the lock lapses.
    keeper: tokio::task::JoinHandle<()>,
}

const LOCK_TTL_MS: i64 = 30_000;

impl Lock {
    pub async fn take(
        store: &Store,
        id: i64,
        report: &(dyn Fn(Progress) + Sync),
    ) -> anyhow::Result<Lock> {
        let holder = format!(
            "{}:{}:{:x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        let mut t = now();
        while !store
            .lock_migration(id, &holder, t, t + LOCK_TTL_MS)
            .await?
        {
            let Some(m) = store.migration(id).await? else {
                anyhow::bail!("migration {id} vanished");
            };
            let other = m.lock_holder.unwrap_or_default();
            let left_ms = (m.lock_expires - now()).max(0);
            // A driver on this machine whose process is gone (a killed CLI) cannot
            // renew: wait for its lock to lapse rather than fail. The wait is also the
            // settling time for the node calls it had in flight.
            anyhow::ensure!(
                holder_exited(&other),
                "migration {id} is being run by another ferry migrate ({other}); if that \
                 one was stopped, its lock lapses in {} s",
                left_ms / 1000 + 1
            );
            report(Progress::Waiting {
                reason: format!(
                    "the previous driver ({other}) has exited; its lock lapses in {} s",
                    left_ms / 1000 + 1
                ),
            });
            tokio::time::sleep(Duration::from_millis(left_ms as u64 + 100)).await;
            t = now();
        }
        let keeper = {
            let (store, holder) = (store.clone(), holder.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(LOCK_TTL_MS as u64 / 3));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let t = now();
                    if !matches!(
                        store.lock_migration(id, &holder, t, t + LOCK_TTL_MS).await,
                        Ok(true)
                    ) {
                        return;
                    }
                }
            })
        };
        Ok(Lock {
            store: store.clone(),
            id,
            holder,
            keeper,
        })
    }

    pub(super) async fn renew(&self) -> anyhow::Result<()> {
        let t = now();
        anyhow::ensure!(
            self.store
                .lock_migration(self.id, &self.holder, t, t + LOCK_TTL_MS)
                .await?,
            "lost the lock of migration {}",
            self.id
        );
        Ok(())
    }

    pub async fn release(self) {
        self.keeper.abort();
        let _ = self.store.unlock_migration(self.id, &self.holder).await;
    }
}

/// A driver dropped mid-run (a node's automatic rebalance at shutdown) stops renewing:
/// its lock lapses and the next driver resumes the migration.
impl Drop for Lock {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Whether a lock holder (`host:pid:nonce`) is a process of this machine that has
/// exited. A holder on another machine is never judged (its lock lapses instead).
fn holder_exited(holder: &str) -> bool {
    let mut parts = holder.rsplitn(3, ':');
    let (_nonce, pid, host) = (parts.next(), parts.next(), parts.next());
    let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    host == Some(hostname().as_str())
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned())
}
