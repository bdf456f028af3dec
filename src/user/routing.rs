//! Sends replies to client-originated queries back to the client that asked.
//!
//! Without labeled-response we match replies by numeric: each query command
//! has a set of reply numerics and one or more that end the reply. Queries
//! are answered in order by the server, so a FIFO per network suffices. An
//! entry that never sees its end (a server that omits it) expires.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::irc::{Command, Numeric as N};

use super::DownstreamId;

const EXPIRY: Duration = Duration::from_secs(30);

struct Pending {
    client: DownstreamId,
    replies: &'static [N],
    ends: &'static [N],
    since: Instant,
}

#[derive(Default)]
pub struct Router {
    pending: VecDeque<Pending>,
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

fn table(command: &Command, params: usize) -> Option<Replies> {
    Some(match command {
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
        Command::Mode if params == 1 => (
            &[N::RPL_CHANNELMODEIS, N::RPL_CREATIONTIME],
            &[N::RPL_CREATIONTIME],
        ),
        Command::Mode if params == 2 => (
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
        ),
        Command::Topic if params == 1 => (
            &[N::RPL_NOTOPIC, N::RPL_TOPIC, N::RPL_TOPICWHOTIME],
            &[N::RPL_NOTOPIC, N::RPL_TOPICWHOTIME],
        ),
        _ => return None,
    })
}

impl Router {
    /// Remembers that `client` sent a query whose replies must come back to it.
    pub fn sent(&mut self, client: DownstreamId, command: &Command, params: usize) {
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
    pub fn route(&mut self, numeric: N) -> Option<DownstreamId> {
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
            || (is_error
                && !matches!(
                    head.ends,
                    [N::RPL_ENDOFWHOIS] | [N::RPL_ENDOFWHOWAS] | [N::RPL_ENDOFWHO]
                ))
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
        // The codes as the wire spells them, so the test reads like a transcript.
        let n = |code: &str| N::parse(code.as_bytes()).unwrap();
        r.sent(1, &"WHOIS".into(), 1);
        r.sent(2, &"WHO".into(), 1);
        assert_eq!(r.route(n("311")), Some(1));
        assert_eq!(r.route(n("401")), Some(1));
        assert_eq!(r.route(n("318")), Some(1));
        assert_eq!(r.route(n("352")), Some(2));
        assert_eq!(r.route(n("315")), Some(2));
        assert_eq!(r.route(n("352")), None);
        r.sent(3, &"PRIVMSG".into(), 2);
        assert_eq!(r.route(n("401")), None);
    }
}
