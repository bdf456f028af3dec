//! The node's metrics: one `prometheus-client` [`Registry`], and the one place where
//! every metric gets its name and help. `GET /metrics` encodes it in the Prometheus
//! text format (0.0.4).
//!
//! Values are kept by whoever changes them, as it happens: the store writer
//! (`WriterMetrics`), the upstream tasks (`UpstreamStats`), the user actors and their
//! registry (`user::Counters`: counters, the relay latency, and gauges kept by guards
//! that count themselves out when dropped), the websocket registry (`Sockets::open`),
//! migrations adopted here ([`Metrics::migration_downtime`]). A scrape reads atomics
//! and asks nobody: it costs the same with 10 users as with 10,000. The few values
//! read at scrape time are O(1) ([`Sampled`]: the writer's queue, memory), and the
//! per-migration figures are the store's, cached ([`Metrics::refresh`]).
//!
//! **Adding a metric**: keep a `Counter`, `Gauge` or `Histogram` (cheap to clone:
//! an `Arc` inside) where the thing happens — in a struct of its layer's metrics as
//! above, or here for node-wide ones — and register it in [`Metrics::new`] with its
//! full name and help. Counters are registered without `_total` (the encoder adds
//! it). A value that can only be read, cheaply, at scrape time is a [`Sampled`].

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::{Store, Writer};
use crate::upstream::UpstreamStats;
use crate::user::Counters;

/// The node's registry and the metrics that belong to no lower layer.
pub struct Metrics {
    registry: Registry,
    /// Users adopted here by a migration: seconds from the QUIT on the source to
    /// registered and rejoined here (both nodes' wall clocks).
    pub migration_downtime: Histogram,
    migrations: MigrationFamilies,
    /// Push subscriptions in the store, counted at each scrape (one `COUNT`).
    push_subscriptions: Gauge,
    /// The latest migrations as last read, and when: a scrape re-reads their users
    /// only when one changed (or, while one runs, every [`RUNNING_REFRESH`]).
    cache: tokio::sync::Mutex<Seen>,
}

/// The latest migrations as (id, state, updated at), and when they were read.
type Seen = Option<(Vec<(i64, String, i64)>, Instant)>;

/// How many of the latest migrations `/metrics` shows (labels stay bounded).
const MIGRATIONS_SHOWN: usize = 5;

/// How often a scrape re-reads a running migration's users (its figures change
/// without the migration's own row changing).
const RUNNING_REFRESH: Duration = Duration::from_secs(10);

/// What [`Metrics::new`] registers: the metrics the parts of the node keep.
pub struct Sources<'a> {
    pub writer: &'a Writer,
    pub upstream: &'a UpstreamStats,
    pub users: &'a Counters,
    /// Websocket sessions open now.
    pub websockets: &'a Gauge,
}

impl Metrics {
    /// The node's registry: every metric, by name.
    pub fn new(s: Sources<'_>) -> Metrics {
        let mut r = Registry::default();
        let u = s.users;
        r.register(
            "ferry_users_running",
            "User actors running on this node",
            u.users_running.clone(),
        );
        r.register(
            "ferry_upstreams",
            "Upstream connections by state",
            u.upstreams.clone(),
        );
        r.register(
            "ferry_downstream_clients",
            "IRC clients attached to this node",
            u.clients.clone(),
        );
        r.register(
            "ferry_websocket_sessions",
            "Websocket sessions open on this node",
            s.websockets.clone(),
        );

        let w = s.writer.metrics();
        r.register(
            "ferry_store_write_batches",
            "Backlog transactions committed by the store writer",
            w.batches.clone(),
        );
        r.register(
            "ferry_store_write_messages",
            "Messages committed by the store writer",
            w.messages.clone(),
        );
        r.register(
            "ferry_store_write_errors",
            "Failed commit attempts of the store writer",
            w.errors.clone(),
        );
        r.register(
            "ferry_store_write_dropped",
            "Messages the store writer dropped",
            w.dropped.clone(),
        );
        r.register(
            "ferry_store_write_fenced",
            "Messages the store writer refused: lease not held or ownership moved on",
            w.fenced.clone(),
        );
        r.register(
            "ferry_store_last_batch_seconds",
            "How long the last commit of the store writer took",
            w.last_batch.clone(),
        );
        r.register(
            "ferry_store_batch_seconds",
            "How long each commit of the store writer took",
            w.batch_seconds.clone(),
        );
        let writer = s.writer.clone();
        r.register_collector(Box::new(Sampled::new(
            "ferry_store_write_queue",
            "Messages queued for the store writer.",
            move || Some(writer.queued() as f64),
        )));

        let up = s.upstream;
        for (name, help, c) in [
            (
                "ferry_upstream_lines_in",
                "Lines received from IRC servers",
                &up.lines_in,
            ),
            (
                "ferry_upstream_lines_out",
                "Lines sent to IRC servers",
                &up.lines_out,
            ),
            (
                "ferry_upstream_parse_errors",
                "Lines from IRC servers that were not IRC messages (skipped)",
                &up.parse_errors,
            ),
            (
                "ferry_upstream_overlong",
                "Lines from IRC servers over the length limit (skipped)",
                &up.overlong,
            ),
            (
                "ferry_upstream_reconnects",
                "Upstream dials after the first one",
                &up.reconnects,
            ),
            (
                "ferry_upstream_throttled",
                "Connections a server ended as throttled (too fast)",
                &up.throttled,
            ),
            (
                "ferry_upstream_no_slot",
                "Connections a server refused: too many from our address",
                &up.too_many_connections,
            ),
        ] {
            r.register(name, help, c.clone());
        }
        r.register(
            "ferry_upstream_connect_seconds",
            "Upstream connects: dialling to registered, after the limiter's wait",
            up.connect_seconds.clone(),
        );

        r.register(
            "ferry_messages_stored",
            "Lines handed to the backlog writer (per buffer)",
            u.stored.clone(),
        );
        r.register(
            "ferry_messages_relayed",
            "Lines queued to attached clients (per client)",
            u.relayed.clone(),
        );
        r.register(
            "ferry_slow_clients",
            "Clients detached because they could not keep up",
            u.slow_clients.clone(),
        );
        r.register(
            "ferry_relay_latency_seconds",
            "A line from an IRC server: read upstream to queued to every attached client",
            u.relay_seconds.clone(),
        );

        // 50 ms to about 100 s.
        let migration_downtime = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        r.register(
            "ferry_migration_adopt_downtime_seconds",
            "Users a migration adopted here: QUIT on the source to registered and rejoined here",
            migration_downtime.clone(),
        );
        let migrations = MigrationFamilies::default();
        migrations.register(&mut r);

        r.register_collector(Box::new(Sampled::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            || Some(crate::cluster::rss_bytes() as f64).filter(|b| *b > 0.0),
        )));
        r.register_collector(Box::new(Sampled::new(
            "ferry_memory_available_bytes",
            "Memory the system can still give processes (MemAvailable).",
            || crate::cluster::mem_available().map(|b| b as f64),
        )));

        let push_subscriptions = Gauge::default();
        r.register(
            "ferry_push_subscriptions",
            "Push subscriptions stored (all users)",
            push_subscriptions.clone(),
        );

        Metrics {
            registry: r,
            migration_downtime,
            migrations,
            push_subscriptions,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// Registers a metric read at scrape time (a part that keeps its own atomics).
    pub fn add(&mut self, sampled: Sampled) {
        self.registry.register_collector(Box::new(sampled));
    }

    /// Every metric in the Prometheus text format (0.0.4), the store's migration
    /// figures brought up to date first.
    pub async fn scrape(&self, store: &Store) -> String {
        // One scrape at a time: a refresh rewrites the migration families.
        let mut cache = self.cache.lock().await;
        self.refresh(store, &mut cache).await;
        if let Ok(n) = store.push_subscription_count().await {
            self.push_subscriptions.set(n);
        }
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %e, "encoding /metrics failed");
        }
        out
    }

    /// Re-reads the latest migrations' users when a migration changed, or while one
    /// runs at most every [`RUNNING_REFRESH`]; one query of the migrations otherwise.
    async fn refresh(&self, store: &Store, cache: &mut Seen) {
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
        self.migrations.fill(store, &latest).await;
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
            let f = crate::migrate::figures(m, &mu);
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
            let Ok(nets) = crate::migrate::network_figures(store, m, &mu).await else {
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

fn states(f: &crate::migrate::Figures) -> [(&'static str, i64); 4] {
    let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    [
        ("moved", n(f.moved)),
        ("failed", n(f.failed)),
        ("rolled_back", n(f.rolled_back)),
        ("pending", n(f.pending)),
    ]
}

fn quantiles(f: &crate::migrate::Figures) -> impl Iterator<Item = (&'static str, f64)> {
    [("0.5", f.downtime_p50_ms), ("0.99", f.downtime_p99_ms)]
        .into_iter()
        .filter_map(|(q, v)| Some((q, v? as f64 / 1000.0)))
}

/// A gauge read at scrape time, for values only known by asking (cheaply: O(1)); left
/// out of the scrape when it cannot be read.
pub struct Sampled {
    name: &'static str,
    help: &'static str,
    /// A counter (named without `_total`: the encoder adds it), else a gauge.
    counter: bool,
    read: Box<dyn Fn() -> Option<f64> + Send + Sync>,
}

impl Sampled {
    pub fn new(
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> Option<f64> + Send + Sync + 'static,
    ) -> Sampled {
        Sampled {
            name,
            help,
            counter: false,
            read: Box::new(read),
        }
    }

    /// A counter kept by its part as an atomic, read at scrape time.
    pub fn counter(
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Sampled {
        Sampled {
            name,
            help,
            counter: true,
            read: Box::new(move || Some(read())),
        }
    }
}

impl std::fmt::Debug for Sampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampled").field("name", &self.name).finish()
    }
}

impl prometheus_client::collector::Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(v) = (self.read)() else {
            return Ok(());
        };
        if self.counter {
            let counter = ConstCounter::new(v);
            let m = encoder.encode_descriptor(self.name, self.help, None, counter.metric_type())?;
            return counter.encode(m);
        }
        let gauge = ConstGauge::new(v);
        let m = encoder.encode_descriptor(self.name, self.help, None, gauge.metric_type())?;
        gauge.encode(m)
    }
}
