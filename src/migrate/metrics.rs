//! `ferry_migration_*`: the store's figures of the latest migrations, in `/metrics`
//! (a [`FromStore`] the server adds to the node's registry at start-up; every node
//! shows the same).

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{figures, network_figures, Figures};
use crate::services::FromStore;
use crate::store::Store;

/// How many of the latest migrations `/metrics` shows (labels stay bounded).
const MIGRATIONS_SHOWN: usize = 5;

/// How often a scrape re-reads a running migration's users (its figures change
/// without the migration's own row changing).
const RUNNING_REFRESH: Duration = Duration::from_secs(10);

/// The latest migrations as (id, state, updated at), and when they were read.
type Seen = Option<(Vec<(i64, String, i64)>, Instant)>;

/// The migration families and what was last read into them: a scrape re-reads the
/// latest migrations' users only when one changed (or, while one runs, every
/// [`RUNNING_REFRESH`]).
#[derive(Default)]
pub struct MigrationMetrics {
    families: MigrationFamilies,
    seen: tokio::sync::Mutex<Seen>,
}

impl FromStore for MigrationMetrics {
    fn register(&self, registry: &mut Registry) {
        self.families.register(registry);
    }

    fn refresh<'a>(
        &'a self,
        store: &'a Store,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let mut seen = self.seen.lock().await;
            self.refresh_with(store, &mut seen).await;
        })
    }
}

impl MigrationMetrics {
    /// Re-reads the latest migrations' users when a migration changed, or while one
    /// runs at most every [`RUNNING_REFRESH`]; one query of the migrations otherwise.
    async fn refresh_with(&self, store: &Store, cache: &mut Seen) {
        let Ok(list) = store.migrations().await else {
            return;
        };
        let latest: Vec<_> = list.into_iter().take(MIGRATIONS_SHOWN).collect();
        let key: Vec<(i64, String, i64)> = latest
            .iter()
            .map(|m| (m.id, m.state.clone(), m.updated_at))
            .collect();
        let running = latest.iter().any(|m| {
            use crate::store::migrate::migration_state::{PREFLIGHT, RUNNING};
            m.state == RUNNING || m.state == PREFLIGHT
        });
        let fresh = cache
            .as_ref()
            .is_some_and(|(k, at)| *k == key && (!running || at.elapsed() < RUNNING_REFRESH));
        if fresh {
            return;
        }
        self.families.fill(store, &latest).await;
        *cache = Some((key, Instant::now()));
    }
}

/// `ferry_migration_*`: per migration (and per network, its limits key), users by
/// state and downtime percentiles, from the store (every node shows the same).
#[derive(Default)]
struct MigrationFamilies {
    users: Family<MigrationState, Gauge>,
    downtime: Family<MigrationQuantile, Gauge<f64, AtomicU64>>,
    network_users: Family<NetworkState, Gauge>,
    network_downtime: Family<NetworkQuantile, Gauge<f64, AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MigrationState {
    migration: i64,
    kind: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MigrationQuantile {
    migration: i64,
    kind: String,
    quantile: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkState {
    migration: i64,
    kind: String,
    network: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkQuantile {
    migration: i64,
    kind: String,
    network: String,
    quantile: &'static str,
}

impl MigrationFamilies {
    fn register(&self, r: &mut Registry) {
        r.register(
            "ferry_migration_users",
            "Users of a migration by state",
            self.users.clone(),
        );
        r.register(
            "ferry_migration_downtime_seconds",
            "Per-user downtime (QUIT on the source to registered on the target) percentiles of a migration",
            self.downtime.clone(),
        );
        r.register(
            "ferry_migration_network_users",
            "Users of a migration by network (limits key) and state",
            self.network_users.clone(),
        );
        r.register(
            "ferry_migration_network_downtime_seconds",
            "Per-user downtime percentiles of a migration by network",
            self.network_downtime.clone(),
        );
    }

    async fn fill(&self, store: &Store, latest: &[crate::store::migrate::MigrationRecord]) {
        self.users.clear();
        self.downtime.clear();
        self.network_users.clear();
        self.network_downtime.clear();
        for m in latest {
            let Ok(mu) = store.migration_users(m.id).await else {
                continue;
            };
            let f = figures(m, &mu);
            for (state, n) in states(&f) {
                let l = MigrationState {
                    migration: m.id,
                    kind: m.kind.clone(),
                    state,
                };
                self.users.get_or_create(&l).set(n);
            }
            for (quantile, v) in quantiles(&f) {
                let l = MigrationQuantile {
                    migration: m.id,
                    kind: m.kind.clone(),
                    quantile,
                };
                self.downtime.get_or_create(&l).set(v);
            }
            let Ok(nets) = network_figures(store, m, &mu).await else {
                continue;
            };
            for (net, nf) in &nets {
                for (state, n) in states(nf) {
                    let l = NetworkState {
                        migration: m.id,
                        kind: m.kind.clone(),
                        network: net.clone(),
                        state,
                    };
                    self.network_users.get_or_create(&l).set(n);
                }
                for (quantile, v) in quantiles(nf) {
                    let l = NetworkQuantile {
                        migration: m.id,
                        kind: m.kind.clone(),
                        network: net.clone(),
                        quantile,
                    };
                    self.network_downtime.get_or_create(&l).set(v);
                }
            }
        }
    }
}

fn states(f: &Figures) -> [(&'static str, i64); 4] {
    let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    [
        ("moved", n(f.moved)),
        ("failed", n(f.failed)),
        ("rolled_back", n(f.rolled_back)),
        ("pending", n(f.pending)),
    ]
}

fn quantiles(f: &Figures) -> impl Iterator<Item = (&'static str, f64)> {
    [("0.5", f.downtime_p50_ms), ("0.99", f.downtime_p99_ms)]
        .into_iter()
        .filter_map(|(q, v)| Some((q, v? as f64 / 1000.0)))
}
