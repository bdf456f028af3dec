//! Sends replies to client-originated queries back to the client that asked.
//!
//! Two ways, chosen per connection:
//!
//! - **labeled-response** (the server acknowledged `labeled-response`, `batch` and
//!   `message-tags`; InspIRCd 3 with `ircv3_labeledresponse`): every query goes out
//!   with a `label` tag of ours. The server tags its answer — one line, or a
//!   `labeled-response` batch whose lines carry `batch=ref` — so the answer's
//!   numerics go to the client that asked, exactly. An `ACK` (nothing to answer)
//!   is dropped. Lines of the answer that change state for everyone (a `MODE`, a
//!   `JOIN`) are not replies: they lose the label (or batch) tag and go the normal
//!   way, to every client.
//! - **By numeric** otherwise (ngircd): each query kind has its reply numerics and
//!   the numerics that end it. Pending queries are kept in the order they were
//!   sent; a reply numeric goes to the oldest pending query that expects it (the
//!   server answers one connection's queries in order, so per kind this is a FIFO),
//!   and an error numeric to the oldest pending query it names (`401 me nick`
//!   names the WHOIS target). Commands that are not queries (`MODE me +i`,
//!   `PRIVMSG`) are never pending, so their answers cannot shift the queue.
//!
//! A numeric that answers no pending query — the server's own notices, `396`, a
//! reply to a command with no known reply set — goes to every attached client, as
//! a server's line would: it is never sent to one client at random. A query whose
//! end never comes (a server that omits it) expires after [`EXPIRY`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::irc::{Command, Message, Numeric as N};

use super::DownstreamId;

/// How long a query waits for the end of its reply.
const EXPIRY: Duration = Duration::from_secs(30);

/// Where a line from the server goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Only to this client: the answer to its query.
    Client(DownstreamId),
    /// The normal way: state, storage, every client.
    Everyone,
    /// Nowhere: a protocol line for us (`ACK` of a labeled query).
    Drop,
}

struct Pending {
    client: DownstreamId,
    command: Command,
    /// The query's first parameter, ASCII-lowercased, to match error numerics.
    target: Vec<u8>,
    replies: &'static [N],
    ends: &'static [N],
    since: Instant,
}

#[derive(Default)]
pub struct Router {
    pending: VecDeque<Pending>,
    /// True while the connection labels its replies (see the module comment).
    labeled: bool,
    /// Our labels not yet answered, with when they were sent.
    labels: HashMap<String, (DownstreamId, Instant)>,
    /// Open `labeled-response` batches by reference.
    batches: HashMap<String, DownstreamId>,
    next_label: u64,
}

/// Errors any query can end with.
const ERRORS: &[N] = &[
    N::ERR_NOSUCHNICK,
    N::ERR_NOSUCHSERVER,
    N::ERR_NOSUCHCHANNEL,
    N::ERR_WASNOSUCHNICK,
    N::ERR_UNKNOWNCOMMAND,
    N::ERR_NEEDMOREPARAMS,
    N::ERR_NOPRIVILEGES,
    N::ERR_CHANOPRIVSNEEDED,
    N::ERR_NOTONCHANNEL,
];

/// The replies to a query and those that end it.
type Replies = (&'static [N], &'static [N]);

/// Channel list modes whose bare query (`MODE #c b`) lists entries.
const LIST_MODES: &[u8] = b"beIq";

/// The replies a query gets, or `None` when the command is not a query.
/// `is_channel` says whether a name is a channel on this network.
fn table(msg: &Message, is_channel: &dyn Fn(&[u8]) -> bool) -> Option<Replies> {
    let target = msg.param(0).unwrap_or_default();
    Some(match msg.command {
        Command::Whois => (
            &[
                N::RPL_WHOISUSER,
                N::RPL_WHOISSERVER,
                N::RPL_WHOISOPERATOR,
                N::RPL_WHOISIDLE,
                N::RPL_WHOISCHANNELS,
                N::RPL_AWAY,
                N::RPL_WHOISACCOUNT,
                N::RPL_WHOISACTUALLY,
                N::RPL_WHOISSECURE,
                N::RPL_WHOISCERTFP,
                N::RPL_WHOISSPECIAL,
                N::RPL_WHOISHOST,
                N::RPL_WHOISMODES,
                N::RPL_WHOISREGNICK,
                N::RPL_WHOISBOT,
                N::RPL_ENDOFWHOIS,
            ],
            &[N::RPL_ENDOFWHOIS],
        ),
        Command::Whowas => (
            &[
                N::RPL_WHOWASUSER,
                N::RPL_WHOISSERVER,
                N::RPL_WHOISACCOUNT,
                N::RPL_WHOISACTUALLY,
                N::RPL_ENDOFWHOWAS,
            ],
            &[N::RPL_ENDOFWHOWAS],
        ),
        Command::Who => (
            &[N::RPL_WHOREPLY, N::RPL_WHOSPCRPL, N::RPL_ENDOFWHO],
            &[N::RPL_ENDOFWHO],
        ),
        Command::List => (
            &[N::RPL_LISTSTART, N::RPL_LIST, N::RPL_LISTEND],
            &[N::RPL_LISTEND],
        ),
        Command::Names => (&[N::RPL_NAMREPLY, N::RPL_ENDOFNAMES], &[N::RPL_ENDOFNAMES]),
        Command::Userhost => (&[N::RPL_USERHOST], &[N::RPL_USERHOST]),
        Command::Ison => (&[N::RPL_ISON], &[N::RPL_ISON]),
        Command::Motd => (
            &[
                N::RPL_MOTDSTART,
                N::RPL_MOTD,
                N::RPL_ENDOFMOTD,
                N::ERR_NOMOTD,
            ],
            &[N::RPL_ENDOFMOTD, N::ERR_NOMOTD],
        ),
        // `MODE #c`: the channel's modes; `MODE me`: ours.
        Command::Mode if msg.params.len() == 1 && is_channel(target) => (
            &[N::RPL_CHANNELMODEIS, N::RPL_CREATIONTIME],
            &[N::RPL_CREATIONTIME],
        ),
        Command::Mode if msg.params.len() == 1 => (&[N::RPL_UMODEIS], &[N::RPL_UMODEIS]),
        // `MODE #c b` / `MODE #c +b`: a list. `MODE #c +m` or `MODE me +i` change
        // something and are not queries.
        Command::Mode
            if msg.params.len() == 2
                && is_channel(target)
                && msg.params[1]
                    .iter()
                    .all(|m| *m == b'+' || LIST_MODES.contains(m))
                && msg.params[1].iter().any(|m| LIST_MODES.contains(m)) =>
        {
            (
                &[
                    N::RPL_BANLIST,
                    N::RPL_ENDOFBANLIST,
                    N::RPL_INVITELIST,
                    N::RPL_ENDOFINVITELIST,
                    N::RPL_EXCEPTLIST,
                    N::RPL_ENDOFEXCEPTLIST,
                    N::RPL_QUIETLIST,
                    N::RPL_ENDOFQUIETLIST,
                ],
                &[
                    N::RPL_ENDOFBANLIST,
                    N::RPL_ENDOFINVITELIST,
                    N::RPL_ENDOFEXCEPTLIST,
                    N::RPL_ENDOFQUIETLIST,
                ],
            )
        }
        Command::Topic if msg.params.len() == 1 => (
            &[N::RPL_NOTOPIC, N::RPL_TOPIC, N::RPL_TOPICWHOTIME],
            &[N::RPL_NOTOPIC, N::RPL_TOPICWHOTIME],
        ),
        _ => return None,
    })
}

impl Router {
    /// A fresh connection: `labeled` when the server acknowledged
    /// `labeled-response`, `batch` and `message-tags`. No old reply will come.
    pub fn reset(&mut self, labeled: bool) {
        *self = Router {
            labeled,
            next_label: self.next_label,
            ..Router::default()
        };
    }

    /// Notes that `client` sends `msg`; a query is labeled (or queued) so that its
    /// replies come back to it alone.
    pub fn sent(
        &mut self,
        client: DownstreamId,
        msg: &mut Message,
        is_channel: &dyn Fn(&[u8]) -> bool,
    ) {
        let Some((replies, ends)) = table(msg, is_channel) else {
            return;
        };
        let now = Instant::now();
        if self.labeled {
            self.labels
                .retain(|_, (_, since)| now.duration_since(*since) < EXPIRY);
            self.next_label += 1;
            let label = format!("f{}", self.next_label);
            msg.set_tag("label", Some(&label));
            self.labels.insert(label, (client, now));
            return;
        }
        self.pending.push_back(Pending {
            client,
            command: msg.command.clone(),
            target: msg.param(0).unwrap_or_default().to_ascii_lowercase(),
            replies,
            ends,
            since: now,
        });
    }

    /// Where a line from the server goes. Takes our `label` tag (and the batch tag
    /// of a labeled batch, on lines that go to everyone) off the line.
    pub fn route(&mut self, msg: &mut Message) -> Route {
        if self.labeled {
            return self.route_labeled(msg);
        }
        match msg.command.numeric() {
            Some(n) => self.route_numeric(n, msg),
            None => Route::Everyone,
        }
    }

    fn route_labeled(&mut self, msg: &mut Message) -> Route {
        let is_numeric = msg.command.numeric().is_some();
        if let Some(label) = msg.tag("label").map(str::to_owned) {
            msg.remove_tag("label");
            let Some(&(client, _)) = self.labels.get(&label) else {
                return Route::Everyone;
            };
            let opens = msg.command == Command::Batch
                && msg.param(0).is_some_and(|r| r.first() == Some(&b'+'));
            if opens {
                let reference = String::from_utf8_lossy(&msg.params[0][1..]).into_owned();
                self.batches.insert(reference, client);
            }
            self.labels.remove(&label);
            return match msg.command {
                Command::Ack => Route::Drop,
                Command::Batch => Route::Client(client),
                _ if is_numeric => Route::Client(client),
                _ => Route::Everyone,
            };
        }
        if msg.command == Command::Batch {
            let closes = msg.param(0).and_then(|r| r.strip_prefix(b"-"));
            if let Some(reference) = closes {
                let reference = String::from_utf8_lossy(reference).into_owned();
                if let Some(client) = self.batches.remove(&reference) {
                    return Route::Client(client);
                }
            }
            return Route::Everyone;
        }
        if let Some(reference) = msg.tag("batch") {
            if let Some(&client) = self.batches.get(reference) {
                if is_numeric {
                    return Route::Client(client);
                }
                // A state change inside the answer (a JOIN's own line) is
                // everyone's; the batch it came in is one client's.
                msg.remove_tag("batch");
            }
        }
        Route::Everyone
    }

    fn route_numeric(&mut self, numeric: N, msg: &Message) -> Route {
        self.pending.retain(|p| p.since.elapsed() <= EXPIRY);
        let found = if ERRORS.contains(&numeric) {
            // `401 me nick :No such nick`, `421 me CMD :Unknown command`: the
            // error names the query's target or command.
            let subject = msg.param(1).unwrap_or_default().to_ascii_lowercase();
            self.pending.iter().position(|p| {
                p.target == subject || p.command.as_str().eq_ignore_ascii_case(&decode(&subject))
            })
        } else {
            self.pending
                .iter()
                .position(|p| p.replies.contains(&numeric))
        };
        let Some(i) = found else {
            return Route::Everyone;
        };
        let p = &self.pending[i];
        let client = p.client;
        // An error ends a query unless the query has an end of its own that
        // follows errors (WHOIS sends 401 then 318).
        let ends = p.ends.contains(&numeric)
            || (ERRORS.contains(&numeric)
                && !matches!(
                    p.ends,
                    [N::RPL_ENDOFWHOIS] | [N::RPL_ENDOFWHOWAS] | [N::RPL_ENDOFWHO]
                ));
        if ends {
            self.pending.remove(i);
        }
        Route::Client(client)
    }

    /// Forgets a client's pending queries (it detached).
    pub fn forget(&mut self, client: DownstreamId) {
        self.pending.retain(|p| p.client != client);
        // Labels stay until answered, so the answer is still recognised (and
        // dropped by `reply`, which finds no such client).
    }
}

fn decode(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn line(s: &str) -> Message {
        Message::parse(Bytes::from(s.to_owned())).unwrap()
    }

    fn chan(n: &[u8]) -> bool {
        n.first() == Some(&b'#')
    }

    fn send(r: &mut Router, client: DownstreamId, s: &str) -> Message {
        let mut m = line(s);
        r.sent(client, &mut m, &chan);
        m
    }

    #[test]
    fn routes_by_numeric_per_kind_and_ends() {
        let mut r = Router::default();
        send(&mut r, 1, "WHOIS nosuch");
        send(&mut r, 2, "WHO #c");
        // Not a query: must not shift anything.
        send(&mut r, 3, "MODE me +i");
        send(&mut r, 3, "MODE #c +b");
        assert_eq!(
            r.route(&mut line(":s 401 me nosuch :No such nick")),
            Route::Client(1)
        );
        // WHO's reply comes before WHOIS's end: still WHO's.
        assert_eq!(
            r.route(&mut line(":s 352 me #c u h s n H :0 r")),
            Route::Client(2)
        );
        assert_eq!(
            r.route(&mut line(":s 318 me nosuch :End")),
            Route::Client(1)
        );
        assert_eq!(
            r.route(&mut line(":s 367 me #c *!*@x a 1")),
            Route::Client(3)
        );
        assert_eq!(r.route(&mut line(":s 368 me #c :End")), Route::Client(3));
        assert_eq!(r.route(&mut line(":s 315 me #c :End")), Route::Client(2));
        // Nobody asked: everyone's.
        assert_eq!(
            r.route(&mut line(":s 352 me #c u h s n H :0 r")),
            Route::Everyone
        );
        assert_eq!(
            r.route(&mut line(":s 401 me x :No such nick")),
            Route::Everyone
        );
        send(&mut r, 4, "MODE me");
        assert_eq!(r.route(&mut line(":s 221 me +i")), Route::Client(4));
    }

    #[test]
    fn routes_by_label() {
        let mut r = Router::default();
        r.reset(true);
        let q = send(&mut r, 1, "WHOIS bob");
        let label = q.tag("label").unwrap().to_owned();
        let mut priv_ = send(&mut r, 2, "PRIVMSG #c :hi");
        assert_eq!(priv_.tag("label"), None);
        let w = send(&mut r, 2, "WHO #c");
        let wl = w.tag("label").unwrap().to_owned();
        let mut open = line(&format!("@label={label} :s BATCH +x labeled-response"));
        assert_eq!(r.route(&mut open), Route::Client(1));
        assert_eq!(open.tag("label"), None);
        assert_eq!(
            r.route(&mut line("@batch=x :s 311 me bob u h * :r")),
            Route::Client(1)
        );
        // A one-line answer.
        assert_eq!(
            r.route(&mut line(&format!("@label={wl} :s 315 me #c :End"))),
            Route::Client(2)
        );
        assert_eq!(r.route(&mut line(":s BATCH -x")), Route::Client(1));
        // Unlabeled numerics are everyone's.
        assert_eq!(
            r.route(&mut line(":s 311 me bob u h * :r")),
            Route::Everyone
        );
        let m = send(&mut r, 3, "MODE #c b");
        let ml = m.tag("label").unwrap().to_owned();
        assert_eq!(
            r.route(&mut line(&format!("@label={ml} :s ACK"))),
            Route::Drop
        );
        assert_eq!(r.route(&mut priv_), Route::Everyone);
    }
}
