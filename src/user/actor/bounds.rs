//! Bounds on what a server can make a user keep: channels per network
//! (`max_channels_per_network`) and buffers per user (`max_buffers_per_user`). A
//! hostile or broken server that forces thousands of JOINs, or messages from
//! thousands of nicks, must not grow the user's state, store and websocket `hello`
//! without end. What goes over a bound is refused with a notice to the user's
//! clients (at most one per bound per [`NOTICE_EVERY`]) and a log line.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::warn;

use crate::irc::{Command, Message};
use crate::store::NetworkId;

use super::Actor;

/// How often a user is told again that a bound still refuses things.
const NOTICE_EVERY: Duration = Duration::from_secs(600);

/// The buffers a user has (by network, folded key) and when it was last told about
/// a refusal.
#[derive(Debug, Default)]
pub(super) struct Bounds {
    /// Folded buffer keys per network, as in the store.
    buffers: Vec<(NetworkId, HashSet<Vec<u8>>)>,
    channels_noticed: Option<Instant>,
    buffers_noticed: Option<Instant>,
}

impl Bounds {
    pub(super) fn add_network(&mut self, network: NetworkId, keys: HashSet<Vec<u8>>) {
        self.buffers.retain(|(n, _)| *n != network);
        self.buffers.push((network, keys));
    }

    pub(super) fn remove_network(&mut self, network: NetworkId) {
        self.buffers.retain(|(n, _)| *n != network);
    }

    fn total(&self) -> usize {
        self.buffers.iter().map(|(_, k)| k.len()).sum()
    }

    fn keys(&mut self, network: NetworkId) -> &mut HashSet<Vec<u8>> {
        if let Some(i) = self.buffers.iter().position(|(n, _)| *n == network) {
            return &mut self.buffers[i].1;
        }
        self.buffers.push((network, HashSet::new()));
        &mut self.buffers.last_mut().expect("just pushed").1
    }

    /// Whether a buffer `key` exists or may be created now (and then counts it).
    pub(super) fn admit(&mut self, network: NetworkId, key: &[u8], max: usize) -> bool {
        if self.keys(network).contains(key) {
            return true;
        }
        if self.total() >= max {
            return false;
        }
        self.keys(network).insert(key.to_vec());
        true
    }

    fn due(last: &mut Option<Instant>) -> bool {
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < NOTICE_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl Actor {
    /// Our JOIN of `chan` just entered the live state: whether it stays. Over the
    /// channel bound, or when its buffer would be one too many, the channel leaves
    /// the state again, the server is sent a PART and the user is told.
    pub(super) fn keep_joined_channel(&mut self, network: NetworkId, chan: &[u8]) -> bool {
        let max_channels = self.config.max_channels_per_network;
        let max_buffers = self.config.max_buffers_per_user;
        let net = self.nets.get_mut(&network).expect("caller checked");
        let key = net.state.fold(chan);
        let why = if net.state.channels.len() > max_channels {
            format!("you are in {max_channels} channels on this network, the most Ferry keeps")
        } else if !self.bounds.admit(network, &key, max_buffers) {
            format!("you have {max_buffers} buffers, the most Ferry keeps")
        } else {
            return true;
        };
        net.state.channels.remove(&key);
        net.send_upstream(Message::new(
            Command::Part,
            [
                Bytes::copy_from_slice(chan),
                Bytes::from_static(b"channel limit reached"),
            ],
        ));
        let name = String::from_utf8_lossy(chan);
        warn!(user = %self.name, network = %net.config.name, channel = %name.escape_debug(),
            "channel refused: {why}");
        if Bounds::due(&mut self.bounds.channels_noticed) {
            let text = format!("Left {name}: {why} (max_channels_per_network / max_buffers_per_user). Further channels over the limit are left without another notice for 10 minutes.");
            net.notify_clients(&text, &self.config.counters);
        }
        false
    }

    /// The buffers a line may be stored in: those that exist, and new ones while the
    /// user is below its buffer bound.
    pub(super) fn admit_buffers(
        &mut self,
        network: NetworkId,
        buffers: Vec<Vec<u8>>,
    ) -> Vec<Vec<u8>> {
        let max = self.config.max_buffers_per_user;
        let net = self.nets.get_mut(&network).expect("caller checked");
        let mut refused = None;
        let admitted: Vec<Vec<u8>> = buffers
            .into_iter()
            .filter(|b| {
                let ok = self.bounds.admit(network, &net.state.fold(b), max);
                if !ok {
                    refused = Some(String::from_utf8_lossy(b).into_owned());
                }
                ok
            })
            .collect();
        if let Some(name) = refused {
            warn!(user = %self.name, network = %net.config.name, buffer = %name.escape_debug(),
                max, "buffer limit reached; line not stored");
            if Bounds::due(&mut self.bounds.buffers_noticed) {
                let text = format!("You have {max} buffers, the most Ferry keeps (max_buffers_per_user): lines for new buffers such as {name} are shown but not stored. Further ones are not announced for 10 minutes.");
                net.notify_clients(&text, &self.config.counters);
            }
        }
        admitted
    }
}
