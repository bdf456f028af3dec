//! What the user actors of a node count and measure, kept as it happens (never asked of
//! the actors at scrape time): counters, the relay latency, and the gauges of what
//! runs — users, upstream connections by state, attached clients. The gauges are kept
//! by guards ([`ConnGauge`], [`ClientGauge`]) that count themselves out when dropped, so
//! an actor that ends any way leaves them right. `services::metrics` registers them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use std::sync::Arc;

use super::ConnState;

/// The label of `ferry_upstreams`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// The states `ferry_upstreams` counts, in [`conn_index`] order.
const STATES: [&str; 5] = [
    "connecting",
    "connected",
    "disconnected",
    "stopped",
    "registering",
];

fn conn_index(s: &ConnState) -> usize {
    match s {
        ConnState::Connecting { .. } => 0,
        ConnState::Connected => 1,
        ConnState::Disconnected { .. } => 2,
        ConnState::Stopped => 3,
        ConnState::Registering { .. } => 4,
    }
}

/// What the user actors of a node did and hold, for `/metrics`.
#[derive(Debug)]
pub struct Counters {
    /// Lines handed to the backlog writer (one per buffer a line belongs to).
    pub stored: Counter,
    /// Lines queued to attached clients (one per client).
    pub relayed: Counter,
    /// Clients detached because they could not keep up.
    pub slow_clients: Counter,
    /// Seconds from the actor reading a line from the socket to having queued it to
    /// every attached client (lines that reached at least one client).
    pub relay_seconds: Histogram,
    /// User actors this node runs (kept by the `Users` registry).
    pub users_running: Gauge,
    /// Clients (IRC and websocket, per network) attached to the actors.
    pub clients: Gauge,
    /// Upstream connections by state (every network of every running user).
    pub upstreams: Family<StateLabel, Gauge>,
    /// The gauges of `upstreams`, one per state (no lookup when a state changes).
    by_state: [Gauge; 5],
}

impl Default for Counters {
    fn default() -> Counters {
        let upstreams = Family::<StateLabel, Gauge>::default();
        // Every state is shown, at 0 until something is in it.
        let by_state = STATES.map(|state| upstreams.get_or_create_owned(&StateLabel { state }));
        Counters {
            stored: Counter::default(),
            relayed: Counter::default(),
            slow_clients: Counter::default(),
            // 10 µs to about 2.6 s.
            relay_seconds: Histogram::new(exponential_buckets(0.00001, 4.0, 10)),
            users_running: Gauge::default(),
            clients: Gauge::default(),
            upstreams,
            by_state,
        }
    }
}

/// One network's place in `ferry_upstreams`: moved when its state changes, taken out
/// when dropped. (Two words: one is kept per network of every user.)
#[derive(Debug)]
pub(crate) struct ConnGauge {
    counters: Arc<Counters>,
    at: usize,
}

impl ConnGauge {
    pub(crate) fn new(counters: &Arc<Counters>, state: &ConnState) -> ConnGauge {
        let at = conn_index(state);
        counters.by_state[at].inc();
        ConnGauge {
            counters: counters.clone(),
            at,
        }
    }

    /// The network is now in `state`.
    pub(crate) fn set(&mut self, state: &ConnState) {
        let i = conn_index(state);
        if self.at != i {
            self.counters.by_state[self.at].dec();
            self.counters.by_state[i].inc();
            self.at = i;
        }
    }
}

impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.counters.by_state[self.at].dec();
    }
}

/// One attached client in `ferry_downstream_clients`, counted out when dropped.
#[derive(Debug)]
pub(crate) struct ClientGauge(Gauge);

impl ClientGauge {
    pub(crate) fn new(counters: &Counters) -> ClientGauge {
        counters.clients.inc();
        ClientGauge(counters.clients.clone())
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_keep_the_gauges() {
        let c = Arc::new(Counters::default());
        let state = |s: &str| c.by_state[STATES.iter().position(|x| *x == s).unwrap()].get();
        let mut g = ConnGauge::new(
            &c,
            &ConnState::Connecting {
                attempt: 1,
                last_error: None,
            },
        );
        assert_eq!(state("connecting"), 1);
        g.set(&ConnState::Registering {
            attempt: 1,
            last_error: None,
        });
        assert_eq!((state("connecting"), state("registering")), (0, 1));
        g.set(&ConnState::Connected);
        g.set(&ConnState::Connected);
        assert_eq!((state("registering"), state("connected")), (0, 1));
        let a = ClientGauge::new(&c);
        let b = ClientGauge::new(&c);
        assert_eq!(c.clients.get(), 2);
        drop((g, a));
        assert_eq!((state("connected"), c.clients.get()), (0, 1));
        drop(b);
        assert_eq!(c.clients.get(), 0);
    }
}
