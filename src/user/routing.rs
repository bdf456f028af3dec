//! Sends replies to client-originated queries back to the client that asked.
//!
//! Without labeled-response we match replies by numeric: each query command
//! has a set of reply numerics and one or more that end the reply. Queries
//! are answered in order by the server, so a FIFO per network suffices. An
//! entry that never sees its end (a server that omits it) expires.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::DownstreamId;

const EXPIRY: Duration = Duration::from_secs(30);

struct Pending {
    client: DownstreamId,
    replies: &'static [&'static str],
    ends: &'static [&'static str],
    since: Instant,
}

#[derive(Default)]
pub struct Router {
    pending: VecDeque<Pending>,
}

/// Errors any query can end with.
const ERRORS: &[&str] = &[
    "401", "402", "403", "406", "421", "461", "481", "482", "442",
];

fn table(
    command: &str,
    params: usize,
) -> Option<(&'static [&'static str], &'static [&'static str])> {
    Some(match command {
        "WHOIS" => (
            &[
                "311", "312", "313", "317", "319", "301", "330", "338", "671", "276", "320", "378",
                "379", "307", "335", "318",
            ],
            &["318"],
        ),
        "WHOWAS" => (&["314", "312", "330", "338", "369"], &["369"]),
        "WHO" => (&["352", "354", "315"], &["315"]),
        "LIST" => (&["321", "322", "323"], &["323"]),
        "NAMES" => (&["353", "366"], &["366"]),
        "USERHOST" => (&["302"], &["302"]),
        "ISON" => (&["303"], &["303"]),
        "MODE" if params == 1 => (&["324", "329"], &["329"]),
        "MODE" if params == 2 => (
            &["367", "368", "346", "347", "348", "349", "728", "729"],
            &["368", "347", "349", "729"],
        ),
        "TOPIC" if params == 1 => (&["331", "332", "333"], &["331", "333"]),
        _ => return None,
    })
}

impl Router {
    /// Remembers that `client` sent a query whose replies must come back to it.
    pub fn sent(&mut self, client: DownstreamId, command: &str, params: usize) {
        if let Some((replies, ends)) = table(command, params) {
            self.pending.push_back(Pending {
                client,
                replies,
                ends,
                since: Instant::now(),
            });
        }
    }

    /// The client a reply numeric belongs to, if it answers a pending query.
    pub fn route(&mut self, numeric: &str) -> Option<DownstreamId> {
        while self
            .pending
            .front()
            .is_some_and(|p| p.since.elapsed() > EXPIRY)
        {
            self.pending.pop_front();
        }
        let head = self.pending.front()?;
        let is_error = ERRORS.contains(&numeric);
        if !head.replies.contains(&numeric) && !is_error {
            return None;
        }
        let client = head.client;
        // An error ends WHOIS-like queries only when the query has no
        // explicit end that follows errors (WHOIS sends 401 then 318).
        if head.ends.contains(&numeric)
            || (is_error && !matches!(head.ends, ["318"] | ["369"] | ["315"]))
        {
            self.pending.pop_front();
        }
        Some(client)
    }

    /// Forgets a client's pending queries (it detached).
    pub fn forget(&mut self, client: DownstreamId) {
        self.pending.retain(|p| p.client != client);
    }

    /// After a reconnect no old reply will come.
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_in_order_and_ends() {
        let mut r = Router::default();
        r.sent(1, "WHOIS", 1);
        r.sent(2, "WHO", 1);
        assert_eq!(r.route("311"), Some(1));
        assert_eq!(r.route("401"), Some(1));
        assert_eq!(r.route("318"), Some(1));
        assert_eq!(r.route("352"), Some(2));
        assert_eq!(r.route("315"), Some(2));
        assert_eq!(r.route("352"), None);
        r.sent(3, "PRIVMSG", 2);
        assert_eq!(r.route("401"), None);
    }
}
