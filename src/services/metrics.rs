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
//! per-migration figures are the store's, cached (a [`FromStore`] that
//! `migrate::metrics` provides and the server adds at start-up).
//!
//! **Adding a metric**: keep a `Counter`, `Gauge` or `Histogram` (cheap to clone:
//! an `Arc` inside) where the thing happens — in a struct of its layer's metrics as
//! above, or here for node-wide ones — and register it in [`Metrics::new`] with its
//! full name and help. Counters are registered without `_total` (the encoder adds
//! it). A value that can only be read, cheaply, at scrape time is a [`Sampled`].

use std::future::Future;
use std::pin::Pin;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
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
    /// Spills of users waiting for a session slot to a node with room (`migrate::spill`).
    pub spill: SpillMetrics,
    /// The automatic rebalance's rounds on this node (`migrate::auto`).
    pub auto_rebalance: AutoRebalanceMetrics,
    /// Families a higher layer fills from the store at each scrape.
    from_store: Vec<Box<dyn FromStore>>,
    /// Push subscriptions in the store, counted at each scrape (one `COUNT`).
    push_subscriptions: Gauge,
    /// Held during a scrape: one refresh at a time.
    scraping: tokio::sync::Mutex<()>,
}

/// What the spill loop counts (`migrate::spill`).
#[derive(Clone, Debug, Default)]
pub struct SpillMetrics {
    /// Spills this node started as the source.
    pub started: Counter,
    /// Spills that ended with the user adopted by the target.
    pub completed: Counter,
    /// Spills that failed (the user stays or is handed back here).
    pub failed: Counter,
    /// Users of this node with every network waiting for a session slot.
    pub waiting_users: Gauge,
}

/// What the automatic rebalance counts on this node (`migrate::auto`).
#[derive(Clone, Debug, Default)]
pub struct AutoRebalanceMetrics {
    /// Rounds this node ran as the leader (it looked at the balance).
    pub rounds: Counter,
    /// Rounds it did not act in: not the leader, another migration unfinished, a node
    /// draining or late, the store unreachable, backing off.
    pub skipped: Counter,
    /// Rounds that ran (or resumed) a rebalance migration.
    pub migrations: Counter,
    /// Users those migrations moved.
    pub moves: Counter,
    /// Rounds whose migration ended other than completed (paused, aborted, failed
    /// preflight, an error): the next round waits longer.
    pub failed: Counter,
}

/// Metric families read from the store at scrape time by a layer above this one (the
/// migration figures of `migrate::metrics`), handed in by whoever starts the node,
/// so this module imports nothing above it. `refresh` keeps its own cache.
pub trait FromStore: Send + Sync {
    /// Registers the families (once, when added).
    fn register(&self, registry: &mut Registry);
    /// Brings the families up to date before an encoding.
    fn refresh<'a>(&'a self, store: &'a Store) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// What [`Metrics::new`] registers: the metrics the parts of the node keep.
pub struct Sources<'a> {
    /// The store: counters it keeps itself, read at scrape time.
    pub store: &'a Store,
    pub writer: &'a Writer,
    pub upstream: &'a UpstreamStats,
    pub users: &'a Counters,
    /// Websocket sessions open now.
    pub websockets: &'a Gauge,
    /// The node's lease: whether the store answers, whether the node rides out.
    pub lease: &'a crate::lease::Lease,
    /// Its IRC clients' positions, written together (`store::Positions`).
    pub positions: &'a crate::store::PositionMetrics,
}

impl Metrics {
    /// The node's registry: every metric, by name.
    pub fn new(s: Sources<'_>) -> Metrics {
        let mut r = Registry::default();
        let u = s.users;
        let p = s.positions;
        r.register(
            "ferry_client_position_batches",
            "Transactions that wrote IRC clients' positions",
            p.batches.clone(),
        );
        r.register(
            "ferry_client_position_rows",
            "IRC clients' positions written",
            p.rows.clone(),
        );
        r.register(
            "ferry_client_position_errors",
            "Failed writes of IRC clients' positions (kept and retried)",
            p.errors.clone(),
        );
        r.register(
            "ferry_client_positions_pending",
            "IRC clients whose noted position is not written yet",
            p.pending.clone(),
        );
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
        let store = s.store.clone();
        r.register_collector(Box::new(Sampled::counter(
            "ferry_store_events_widened",
            "Shared channel lines whose audience a later batch widened (their rows split across batches)",
            move || store.events_widened() as f64,
        )));
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
        r.register(
            "ferry_outage_held_lines",
            "Lines held for the store while it is unreachable (memory and spill file, gap markers included)",
            w.held_lines.clone(),
        );
        r.register(
            "ferry_outage_spill_bytes",
            "Bytes in the outage spill file",
            w.spill_bytes.clone(),
        );
        r.register(
            "ferry_outage_gap_lines",
            "Lines not kept during a store outage because the outage buffer was full (each buffer got a gap marker)",
            w.gap_lines.clone(),
        );
        let lease = s.lease.clone();
        r.register_collector(Box::new(Sampled::new(
            "ferry_store_reachable",
            "1 while the store answers the node's lease renewals, 0 while it does not.",
            move || Some(if lease.store_reachable() { 1.0 } else { 0.0 }),
        )));
        let lease = s.lease.clone();
        r.register_collector(Box::new(Sampled::new(
            "ferry_store_riding_out",
            "1 while the node rides out a store outage (sessions kept, writes held), else 0.",
            move || Some(if lease.riding_out() { 1.0 } else { 0.0 }),
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

        let spill = SpillMetrics::default();
        r.register(
            "ferry_spills_started",
            "Users waiting for a session slot that this node began to move to a node with room",
            spill.started.clone(),
        );
        r.register(
            "ferry_spills_completed",
            "Spills of this node whose target adopted the user",
            spill.completed.clone(),
        );
        r.register(
            "ferry_spills_failed",
            "Spills of this node that failed (the user stayed or was handed back)",
            spill.failed.clone(),
        );
        r.register(
            "ferry_users_waiting_for_slot",
            "Users of this node with every network waiting for a session slot",
            spill.waiting_users.clone(),
        );

        let auto_rebalance = AutoRebalanceMetrics::default();
        r.register(
            "ferry_auto_rebalance_rounds",
            "Automatic rebalance rounds this node ran as the leader",
            auto_rebalance.rounds.clone(),
        );
        r.register(
            "ferry_auto_rebalance_skipped_rounds",
            "Automatic rebalance rounds this node did not act in (not the leader, another migration, a node draining or late, the store away, backing off)",
            auto_rebalance.skipped.clone(),
        );
        r.register(
            "ferry_auto_rebalance_migrations",
            "Automatic rebalance rounds of this node that ran a rebalance migration",
            auto_rebalance.migrations.clone(),
        );
        r.register(
            "ferry_auto_rebalance_moves",
            "Users moved by this node's automatic rebalance migrations",
            auto_rebalance.moves.clone(),
        );
        r.register(
            "ferry_auto_rebalance_failed_rounds",
            "Automatic rebalance rounds whose migration did not complete (the next round backs off)",
            auto_rebalance.failed.clone(),
        );

        let push_subscriptions = Gauge::default();
        r.register(
            "ferry_push_subscriptions",
            "Push subscriptions stored (all users)",
            push_subscriptions.clone(),
        );

        Metrics {
            registry: r,
            migration_downtime,
            spill,
            auto_rebalance,
            from_store: Vec::new(),
            push_subscriptions,
            scraping: tokio::sync::Mutex::new(()),
        }
    }

    /// Registers a metric read at scrape time (a part that keeps its own atomics).
    pub fn add(&mut self, sampled: Sampled) {
        self.registry.register_collector(Box::new(sampled));
    }

    /// Registers families a higher layer fills from the store at each scrape.
    pub fn add_from_store(&mut self, families: Box<dyn FromStore>) {
        families.register(&mut self.registry);
        self.from_store.push(families);
    }

    /// Every metric in the Prometheus text format (0.0.4), the store's migration
    /// figures brought up to date first (unless `store` is `None`: the store is away,
    /// and they stay as last read).
    pub async fn scrape(&self, store: Option<&Store>) -> String {
        // One scrape at a time: a refresh rewrites its families.
        let _one = self.scraping.lock().await;
        if let Some(store) = store {
            for f in &self.from_store {
                f.refresh(store).await;
            }
            if let Ok(n) = store.push_subscription_count().await {
                self.push_subscriptions.set(n);
            }
        }
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %e, "encoding /metrics failed");
        }
        out
    }
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
