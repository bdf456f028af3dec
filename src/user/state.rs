//! Live IRC state of one network connection, updated from upstream lines.
//!
//! Only the user actor holds and changes it. Names are keyed by their folded
//! form under the network's casemapping; when CASEMAPPING changes, the maps
//! are re-keyed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::irc::{Command, ISupport, Message, Numeric};
use crate::upstream::Registration;

use super::change::{MemberChange, StateChange};
use super::roster::{Roster, Shared};
use super::{ChannelView, ConnState, NetworkView};

#[derive(Debug)]
pub struct Channel {
    pub name: Vec<u8>,
    pub topic: Option<Vec<u8>>,
    pub topic_meta: Option<(Vec<u8>, i64)>,
    /// The members as this user's connection was told them (their content is
    /// never another user's; equal lists share storage: see `roster`).
    pub roster: Roster,
    /// True between the first `353` of a NAMES reply and its `366`: the
    /// first `353` replaces the member list.
    pub names_in_progress: bool,
}

/// The live state of one upstream connection.
#[derive(Debug)]
pub struct NetState {
    pub conn: ConnState,
    pub nick: Vec<u8>,
    /// Shared with the node's other users of this network while identical
    /// (`Rosters::share_isupport`).
    pub isupport: Arc<ISupport>,
    /// Acknowledged capabilities, shared likewise.
    pub caps: Arc<BTreeSet<String>>,
    /// Our user modes as the server reports them (`221`, `MODE` on our nick),
    /// without `+`.
    pub user_modes: Vec<u8>,
    /// Our `user@host` as the server sees it (`001`, `396`, our JOIN's prefix,
    /// `CHGHOST`), for the JOINs of a client's burst.
    pub userhost: Option<Vec<u8>>,
    /// The server's MOTD from registration (`372` texts); `None` if it had none.
    pub motd: Option<Arc<[bytes::Bytes]>>,
    pub away: Option<Vec<u8>>,
    /// Joined channels by folded name.
    pub channels: HashMap<Vec<u8>, Channel>,
    shared: Arc<Shared>,
    /// Identifies the network across users for the shared ISUPPORT and caps.
    network_key: Arc<str>,
    /// What the lines applied since the last [`NetState::take_changes`] changed, in
    /// order: the actor sends them to the clients after the line's relay.
    changes: Vec<StateChange>,
    /// Some client is attached and follows the changes: only then are they made
    /// (most users of a hosted node have none attached, and a big channel's joins
    /// and quits would cost them allocations nobody reads). A client attaching
    /// later starts from the snapshot (`view`).
    pub listening: bool,
}

/// What a line changed, for deciding where it is stored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effect {
    /// Buffers (names as known) the line belongs to.
    pub buffers: Vec<Vec<u8>>,
    /// We joined (`Some(true)`) or left (`Some(false)`) this channel.
    pub own_membership: Option<(Vec<u8>, bool)>,
    /// Our nick changed to this.
    pub own_nick: Option<Vec<u8>>,
    /// Our PART or KICK from a channel we are not in: it concerns nothing.
    pub stray: bool,
}

impl NetState {
    pub fn new(nick: &[u8], shared: Arc<Shared>, network_key: Arc<str>) -> NetState {
        NetState {
            shared,
            network_key,
            conn: ConnState::Connecting {
                attempt: 0,
                last_error: None,
            },
            nick: nick.to_vec(),
            isupport: Arc::default(),
            caps: Arc::default(),
            user_modes: Vec::new(),
            userhost: None,
            motd: None,
            away: None,
            channels: HashMap::new(),
            changes: Vec::new(),
            listening: false,
        }
    }

    /// The changes applied since the last call (see [`StateChange`]).
    pub fn take_changes(&mut self) -> Vec<StateChange> {
        std::mem::take(&mut self.changes)
    }

    /// Forgets the changes not taken yet: the line that made them is undone (a JOIN
    /// over the channel bound) and no client hears of it.
    pub fn drop_changes(&mut self) {
        self.changes.clear();
    }

    /// Queues the change `make` describes, if a client listens.
    fn change(&mut self, make: impl FnOnce() -> StateChange) {
        if self.listening {
            self.changes.push(make());
        }
    }

    fn member(&mut self, make: impl FnOnce() -> MemberChange) {
        self.change(|| StateChange::Member(make()));
    }

    /// Members of a channel we are in (0 if we are not).
    pub fn member_count(&self, name: &[u8]) -> usize {
        self.channels
            .get(&self.fold(name))
            .map_or(0, |c| c.roster.len())
    }

    /// An empty member list for the channel `key` (folded), shared with other users'
    /// lists of it while their content is equal.
    pub fn new_roster(&self, key: &[u8]) -> Roster {
        self.shared.roster(&self.network_key, key)
    }

    /// The member list of the channel `key` (folded) holding `members` ((prefixes,
    /// nick), as [`Roster::snapshot`] gives them), as a whole NAMES reply would.
    pub fn roster_of<'a>(
        &self,
        key: &[u8],
        members: impl IntoIterator<Item = &'a (Vec<u8>, Vec<u8>)>,
    ) -> Roster {
        let cm = self.isupport.casemapping;
        let mut roster = self.new_roster(key);
        roster.begin_names();
        for (prefixes, nick) in members {
            roster.insert_with_prefixes(&cm.fold(nick), nick, prefixes);
        }
        roster.end_names();
        roster
    }

    pub fn fold(&self, name: &[u8]) -> Vec<u8> {
        self.isupport.casemapping.fold(name)
    }

    pub fn is_me(&self, nick: &[u8]) -> bool {
        self.isupport.casemapping.eq(nick, &self.nick)
    }

    pub fn is_channel(&self, name: &[u8]) -> bool {
        self.isupport.is_channel(name)
    }

    /// A fresh registration: the channels are gone until we rejoin them.
    pub fn registered(&mut self, reg: &Registration) {
        self.conn = ConnState::Connected;
        if self.nick != reg.nick {
            let old = std::mem::replace(&mut self.nick, reg.nick.clone());
            self.change(|| StateChange::Nick {
                old,
                new: reg.nick.clone(),
                relayed: false,
            });
        }
        let isupport = self
            .shared
            .share_isupport(&self.network_key, reg.isupport.clone());
        if *isupport != *self.isupport {
            self.change(|| StateChange::ISupport(isupport.clone()));
        }
        self.isupport = isupport;
        self.caps = self.shared.share_caps(&self.network_key, reg.caps.clone());
        self.user_modes = reg.user_modes.clone();
        self.userhost = reg.userhost.clone();
        self.motd = reg.motd.as_ref().map(|m| Arc::from(m.as_slice()));
        self.away = None;
        self.channels.clear();
    }

    pub fn disconnected(&mut self, state: ConnState) {
        self.conn = state;
        self.channels.clear();
    }

    /// Applies one line from the server and says which buffers it concerns.
    pub fn apply(&mut self, msg: &Message) -> Effect {
        let mut effect = Effect::default();
        match &msg.command {
            Command::Join => self.on_join(msg, &mut effect),
            Command::Part => self.on_part(msg, &mut effect),
            Command::Kick => self.on_kick(msg, &mut effect),
            Command::Quit => self.on_quit(msg, &mut effect),
            Command::Nick => self.on_nick(msg, &mut effect),
            Command::Topic => self.on_topic(msg, &mut effect),
            Command::Mode => self.on_mode(msg, &mut effect),
            Command::Chghost if msg.source_nick().is_some_and(|n| self.is_me(n)) => {
                let (user, host) = (param(msg, 0), param(msg, 1));
                self.userhost = Some([user, b"@", host].concat());
            }
            Command::Privmsg | Command::Notice => effect.buffers.extend(self.message_buffer(msg)),
            Command::Numeric(n) => match *n {
                Numeric::RPL_ISUPPORT => self.on_isupport(msg),
                Numeric::RPL_UMODEIS => {
                    self.user_modes.clear();
                    self.apply_user_mode(param(msg, 1));
                }
                Numeric::RPL_VISIBLEHOST => {
                    let host = param(msg, 1);
                    let old = self.userhost.take().unwrap_or_default();
                    self.userhost = Some(crate::upstream::with_host(&old, host));
                }
                Numeric::RPL_UNAWAY => self.away = None,
                Numeric::RPL_NOWAWAY => self.away = Some(Vec::new()),
                Numeric::RPL_TOPIC => self.on_topic_reply(msg),
                Numeric::RPL_TOPICWHOTIME => self.on_topic_who_time(msg),
                Numeric::RPL_NAMREPLY => self.on_names(msg),
                Numeric::RPL_ENDOFNAMES => self.on_end_of_names(msg),
                _ => {}
            },
            _ => {}
        }
        effect
    }

    // Membership: JOIN, PART, KICK, QUIT, NICK.

    fn on_join(&mut self, msg: &Message, effect: &mut Effect) {
        let (source, chan) = (msg.source_nick().unwrap_or_default(), param(msg, 0));
        let key = self.fold(chan);
        if self.is_me(source) {
            if let Some(uh) = msg
                .prefix
                .as_deref()
                .and_then(|p| p.iter().position(|&b| b == b'!').map(|i| &p[i + 1..]))
                .filter(|uh| uh.contains(&b'@'))
            {
                self.userhost = Some(uh.to_vec());
            }
            let mut roster = self.new_roster(&key);
            roster.insert(&self.fold(source), source);
            self.channels.insert(
                key,
                Channel {
                    name: chan.to_vec(),
                    topic: None,
                    topic_meta: None,
                    roster,
                    names_in_progress: false,
                },
            );
            effect.own_membership = Some((chan.to_vec(), true));
        } else if let Some(ch) = self.channels.get_mut(&key) {
            ch.roster
                .insert(&self.isupport.casemapping.fold(source), source);
        }
        let own = effect.own_membership.is_some();
        self.member(|| MemberChange::Joined {
            channel: chan.to_vec(),
            nick: source.to_vec(),
            own,
        });
        effect.buffers.push(chan.to_vec());
    }

    fn on_part(&mut self, msg: &Message, effect: &mut Effect) {
        let (source, chan) = (msg.source_nick().unwrap_or_default(), param(msg, 0));
        if let Some(own) = self.leave_or_depart(chan, source, effect) {
            self.member(|| MemberChange::Parted {
                channel: chan.to_vec(),
                nick: source.to_vec(),
                reason: param(msg, 1).to_vec(),
                own,
            });
        }
    }

    fn on_kick(&mut self, msg: &Message, effect: &mut Effect) {
        let (chan, who) = (param(msg, 0), param(msg, 1));
        if let Some(own) = self.leave_or_depart(chan, who, effect) {
            self.member(|| MemberChange::Kicked {
                channel: chan.to_vec(),
                nick: who.to_vec(),
                by: msg.source_nick().unwrap_or_default().to_vec(),
                reason: param(msg, 2).to_vec(),
                own,
            });
        }
    }

    /// `who` left `chan` (PART) or was kicked from it: our own leaving forgets the
    /// channel, anyone else's leaves its roster. Returns whether it was us, or
    /// `None` for our leaving a channel we are not in (a stray line).
    fn leave_or_depart(&mut self, chan: &[u8], who: &[u8], effect: &mut Effect) -> Option<bool> {
        let key = self.fold(chan);
        let own = self.is_me(who);
        if own {
            if self.channels.remove(&key).is_none() {
                effect.stray = true;
                return None;
            }
            effect.own_membership = Some((chan.to_vec(), false));
        } else if let Some(ch) = self.channels.get_mut(&key) {
            ch.roster.depart(&self.isupport.casemapping.fold(who));
        }
        effect.buffers.push(chan.to_vec());
        Some(own)
    }

    fn on_quit(&mut self, msg: &Message, effect: &mut Effect) {
        let source = msg.source_nick().unwrap_or_default();
        let folded = self.fold(source);
        for ch in self.channels.values_mut() {
            if ch.roster.depart(&folded) {
                effect.buffers.push(ch.name.clone());
            }
        }
        self.member(|| MemberChange::Quit {
            nick: source.to_vec(),
            reason: param(msg, 0).to_vec(),
            channels: effect.buffers.clone(),
        });
    }

    fn on_nick(&mut self, msg: &Message, effect: &mut Effect) {
        let (source, new) = (msg.source_nick().unwrap_or_default(), param(msg, 0));
        let folded = self.fold(source);
        let new_folded = self.fold(new);
        for ch in self.channels.values_mut() {
            if ch.roster.rename(&folded, &new_folded, new) {
                effect.buffers.push(ch.name.clone());
            }
        }
        let own = self.is_me(source);
        self.member(|| MemberChange::Renamed {
            old: source.to_vec(),
            new: new.to_vec(),
            channels: effect.buffers.clone(),
            own,
        });
        if own {
            self.nick = new.to_vec();
            effect.own_nick = Some(new.to_vec());
            self.change(|| StateChange::Nick {
                old: source.to_vec(),
                new: new.to_vec(),
                relayed: true,
            });
        }
    }

    // Channels: TOPIC, MODE and the replies that describe a channel.

    fn on_topic(&mut self, msg: &Message, effect: &mut Effect) {
        let chan = param(msg, 0);
        let key = self.fold(chan);
        if let Some(ch) = self.channels.get_mut(&key) {
            let topic = param(msg, 1);
            ch.topic = (!topic.is_empty()).then(|| topic.to_vec());
            let source = msg.source_nick().unwrap_or_default().to_vec();
            ch.topic_meta = Some((source, chrono::Utc::now().timestamp()));
        }
        effect.buffers.push(chan.to_vec());
    }

    fn on_mode(&mut self, msg: &Message, effect: &mut Effect) {
        let target = param(msg, 0);
        if self.is_channel(target) {
            self.apply_channel_mode(msg);
            effect.buffers.push(target.to_vec());
        } else if self.is_me(target) {
            self.apply_user_mode(param(msg, 1));
        }
    }

    /// `332 me #chan :topic`
    fn on_topic_reply(&mut self, msg: &Message) {
        let key = self.fold(param(msg, 1));
        if let Some(ch) = self.channels.get_mut(&key) {
            ch.topic = msg.param(2).map(<[u8]>::to_vec);
        }
    }

    /// `333 me #chan who when`
    fn on_topic_who_time(&mut self, msg: &Message) {
        let key = self.fold(param(msg, 1));
        if let Some(ch) = self.channels.get_mut(&key) {
            let who = param(msg, 2).to_vec();
            let when = msg
                .param_str(3)
                .and_then(|t| t.parse().ok())
                .unwrap_or_default();
            ch.topic_meta = Some((who, when));
        }
    }

    /// `353 me = #chan :@alice +bob carol`: the first of a reply replaces the roster.
    /// Every NAMES reply counts, the one after our JOIN and any a client asks for
    /// later: the list is always the server's latest word to this user.
    fn on_names(&mut self, msg: &Message) {
        let key = self.fold(param(msg, 2));
        let cm = self.isupport.casemapping;
        let is = &self.isupport;
        let Some(ch) = self.channels.get_mut(&key) else {
            return;
        };
        if !ch.names_in_progress {
            ch.roster.begin_names();
            ch.names_in_progress = true;
        }
        for entry in param(msg, 3).split(|&b| b == b' ') {
            if entry.is_empty() {
                continue;
            }
            let (prefixes, rest) = is.split_prefixes(entry);
            // userhost-in-names: nick!user@host
            let nick_end = rest.iter().position(|&b| b == b'!').unwrap_or(rest.len());
            let nick = &rest[..nick_end];
            ch.roster
                .insert_with_prefixes(&cm.fold(nick), nick, prefixes);
        }
    }

    /// `366 me #chan :End of /NAMES list`
    fn on_end_of_names(&mut self, msg: &Message) {
        let key = self.fold(param(msg, 1));
        if let Some(ch) = self.channels.get_mut(&key) {
            ch.names_in_progress = false;
            ch.roster.end_names();
            if self.listening {
                self.changes.push(StateChange::Members {
                    channel: ch.name.clone(),
                    members: ch.roster.snapshot(),
                });
            }
        }
    }

    // The connection: ISUPPORT.

    /// `005 me TOKEN… :are supported`
    fn on_isupport(&mut self, msg: &Message) {
        let n = msg.params.len();
        if n <= 2 {
            return;
        }
        let old = self.isupport.casemapping;
        let mut isupport = (*self.isupport).clone();
        isupport.apply(msg.params[1..n - 1].iter().map(|p| &p[..]));
        if isupport == *self.isupport {
            return;
        }
        self.isupport = self.shared.share_isupport(&self.network_key, isupport);
        let isupport = self.isupport.clone();
        self.change(|| StateChange::ISupport(isupport));
        if self.isupport.casemapping != old {
            self.rekey();
        }
    }

    /// The buffer a PRIVMSG/NOTICE belongs to: the channel, or the other
    /// party of a private conversation. Server notices belong nowhere.
    pub fn message_buffer(&self, msg: &Message) -> Option<Vec<u8>> {
        let target = msg.param(0)?;
        // STATUSMSG targets like @#chan go to #chan.
        let target = match target.first() {
            Some(c) if self.isupport.prefix.iter().any(|(_, s)| s == c) && target.len() > 1 => {
                &target[1..]
            }
            _ => target,
        };
        if self.is_channel(target) {
            return Some(target.to_vec());
        }
        let prefix = msg.prefix.as_deref()?;
        if !prefix.contains(&b'!') && !prefix.contains(&b'@') {
            // A server (no user@host): not a conversation.
            return None;
        }
        let source = msg.source_nick()?;
        if self.is_me(source) {
            Some(target.to_vec())
        } else {
            Some(source.to_vec())
        }
    }

    fn apply_channel_mode(&mut self, msg: &Message) {
        let key = self.fold(param(msg, 0));
        let is = &self.isupport;
        let Some(ch) = self.channels.get_mut(&key) else {
            return;
        };
        let (changes, listening) = (&mut self.changes, self.listening);
        let modes = param(msg, 1);
        let mut args = msg.params.iter().skip(2);
        let mut adding = true;
        for &m in modes {
            match m {
                b'+' => adding = true,
                b'-' => adding = false,
                m => {
                    let arg = if is.mode_takes_param(m, adding) {
                        args.next()
                    } else {
                        None
                    };
                    if let (Some(symbol), Some(nick)) = (is.prefix_symbol(m), arg) {
                        let folded = is.casemapping.fold(nick);
                        ch.roster.set_prefix(&folded, symbol, adding, &is.prefix);
                        if let Some(prefixes) = ch.roster.prefixes(&folded).filter(|_| listening) {
                            changes.push(StateChange::Member(MemberChange::Prefix {
                                channel: ch.name.clone(),
                                nick: nick.to_vec(),
                                prefixes,
                            }));
                        }
                    }
                }
            }
        }
    }

    fn apply_user_mode(&mut self, change: &[u8]) {
        let mut adding = true;
        for &m in change {
            match m {
                b'+' => adding = true,
                b'-' => adding = false,
                m => {
                    self.user_modes.retain(|&x| x != m && x != b'+');
                    if adding {
                        self.user_modes.push(m);
                    }
                }
            }
        }
    }

    /// CASEMAPPING changed (in a 005 after we joined, which is rare): the
    /// keys of our channels and of their members change.
    fn rekey(&mut self) {
        let cm = self.isupport.casemapping;
        let channels = std::mem::take(&mut self.channels);
        for (_, mut ch) in channels {
            let key = cm.fold(&ch.name);
            ch.roster = self.roster_of(&key, &ch.roster.snapshot());
            self.channels.insert(key, ch);
        }
    }

    /// One channel we are in, as a client sees it on attach.
    pub fn channel_view(&self, key: &[u8]) -> Option<ChannelView> {
        self.channels.get(key).map(|ch| ChannelView {
            name: ch.name.clone(),
            topic: ch.topic.clone(),
            topic_meta: ch.topic_meta.clone(),
            members: ch.roster.snapshot(),
            detached: false,
        })
    }

    /// Our `nick!user@host`, or the nick while the server has not said who we are.
    pub fn own_prefix(&self) -> Vec<u8> {
        match &self.userhost {
            Some(uh) => [&self.nick[..], b"!", uh].concat(),
            None => self.nick.clone(),
        }
    }

    pub fn view(&self, network_id: i64, network_name: &str) -> NetworkView {
        let mut channels: Vec<ChannelView> = self
            .channels
            .values()
            .map(|ch| ChannelView {
                name: ch.name.clone(),
                topic: ch.topic.clone(),
                topic_meta: ch.topic_meta.clone(),
                members: ch.roster.snapshot(),
                detached: false,
            })
            .collect();
        channels.sort_by(|a, b| a.name.cmp(&b.name));
        NetworkView {
            network_id,
            network_name: network_name.to_owned(),
            state: self.conn.clone(),
            nick: self.nick.clone(),
            isupport: (*self.isupport).clone(),
            upstream_caps: (*self.caps).clone(),
            user_modes: self.user_modes.clone(),
            userhost: self.userhost.clone(),
            motd: self.motd.clone(),
            away: self.away.clone(),
            channels,
        }
    }
}

/// Parameter `i`, empty when absent.
fn param(msg: &Message, i: usize) -> &[u8] {
    msg.param(i).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn m(line: &'static [u8]) -> Message {
        Message::parse(Bytes::from_static(line)).unwrap()
    }

    fn state() -> NetState {
        let mut s = NetState::new(
            b"me",
            Arc::new(Shared::default()),
            Arc::from("irc.test:6667"),
        );
        s.conn = ConnState::Connected;
        s.listening = true;
        s.apply(&m(
            b":srv 005 me PREFIX=(ov)@+ CHANMODES=b,k,l,nt :are supported",
        ));
        s
    }

    #[test]
    fn tracks_joins_names_modes_and_quits() {
        let mut s = state();
        let e = s.apply(&m(b":me!u@h JOIN #Chan"));
        assert_eq!(e.own_membership, Some((b"#Chan".to_vec(), true)));
        s.apply(&m(b":srv 353 me = #chan :@me +Bob carol"));
        s.apply(&m(b":srv 366 me #chan :End"));
        s.apply(&m(b":x!u@h JOIN #chan"));
        let ch = &s.channels[&b"#chan"[..]];
        assert_eq!(ch.roster.len(), 4);
        assert_eq!(ch.roster.prefixes(b"bob"), Some(b"+".to_vec()));
        s.apply(&m(b":op!u@h MODE #chan +o-v+k bob bob key"));
        assert_eq!(
            s.channels[&b"#chan"[..]].roster.prefixes(b"bob"),
            Some(b"@".to_vec())
        );
        let e = s.apply(&m(b":carol!u@h QUIT :bye"));
        assert_eq!(e.buffers, vec![b"#Chan".to_vec()]);
        assert_eq!(s.channels[&b"#chan"[..]].roster.len(), 3);
        let e = s.apply(&m(b":me!u@h NICK :me2"));
        assert_eq!(e.own_nick, Some(b"me2".to_vec()));
        assert!(s.is_me(b"ME2"));
    }

    #[test]
    fn private_messages_go_to_the_peer_buffer() {
        let s = state();
        assert_eq!(
            s.message_buffer(&m(b":bob!u@h PRIVMSG me :hi")),
            Some(b"bob".to_vec())
        );
        assert_eq!(
            s.message_buffer(&m(b":me!u@h PRIVMSG bob :hi")),
            Some(b"bob".to_vec())
        );
        assert_eq!(
            s.message_buffer(&m(b":bob!u@h PRIVMSG @#c :hi")),
            Some(b"#c".to_vec())
        );
        assert_eq!(
            s.message_buffer(&m(b":irc.test NOTICE me :*** hello")),
            None
        );
    }

    #[test]
    fn each_user_keeps_what_its_own_connection_was_told() {
        let shared = Arc::new(Shared::default());
        let net: Arc<str> = Arc::from("irc.test:6667");
        let mut op = NetState::new(b"op", shared.clone(), net.clone());
        let mut guest = NetState::new(b"guest", shared, net);
        for s in [&mut op, &mut guest] {
            s.conn = ConnState::Connected;
        }
        // An auditorium channel: the operator sees everyone, the guest only the
        // operators and itself.
        op.apply(&m(b":op!u@h JOIN #c"));
        op.apply(&m(b":srv 353 op = #c :@op carol"));
        op.apply(&m(b":srv 366 op #c :End"));
        guest.apply(&m(b":guest!u@h JOIN #c"));
        op.apply(&m(b":guest!u@h JOIN #c"));
        guest.apply(&m(b":srv 353 guest = #c :@op guest"));
        guest.apply(&m(b":srv 366 guest #c :End"));
        let names = |s: &NetState| {
            s.channels[&b"#c"[..]]
                .roster
                .snapshot()
                .into_iter()
                .map(|(_, n)| String::from_utf8(n).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&op), ["carol", "guest", "op"]);
        assert_eq!(names(&guest), ["guest", "op"]);
        assert!(!channel_roster(&op, b"#c").shares_with(channel_roster(&guest, b"#c")));
        // carol's QUIT reaches only the operator's connection.
        assert_eq!(
            op.apply(&m(b":carol!u@h QUIT :bye")).buffers,
            vec![b"#c".to_vec()]
        );
        assert!(guest.apply(&m(b":carol!u@h QUIT :bye")).buffers.is_empty());
        // A later NAMES reply replaces the list.
        guest.apply(&m(b":srv 353 guest = #c :@op guest dave"));
        guest.apply(&m(b":srv 366 guest #c :End"));
        assert_eq!(names(&guest), ["dave", "guest", "op"]);
    }

    fn channel_roster<'a>(s: &'a NetState, key: &[u8]) -> &'a Roster {
        &s.channels[key].roster
    }

    #[test]
    fn users_told_the_same_members_hold_one_list() {
        let shared = Arc::new(Shared::default());
        let net: Arc<str> = Arc::from("irc.test:6667");
        let mut users: Vec<NetState> = ["u1", "u2", "u3"]
            .iter()
            .map(|n| NetState::new(n.as_bytes(), shared.clone(), net.clone()))
            .collect();
        for (s, nick) in users.iter_mut().zip(["u1", "u2", "u3"]) {
            s.conn = ConnState::Connected;
            s.apply(&m(b":srv 005 x PREFIX=(ov)@+ :are supported"));
            let line = |l: String| Message::parse(Bytes::from(l)).unwrap();
            s.apply(&line(format!(":{nick}!u@h JOIN #big")));
            s.apply(&line(format!(":srv 353 {nick} = #big :@op u1 u2 u3")));
            s.apply(&line(format!(":srv 366 {nick} #big :End")));
        }
        assert!(channel_roster(&users[0], b"#big").shares_with(channel_roster(&users[1], b"#big")));
        assert!(channel_roster(&users[0], b"#big").shares_with(channel_roster(&users[2], b"#big")));
        // Another network's channel of the same name is another list.
        let mut elsewhere = NetState::new(b"u1", shared, Arc::from("other.test:6667"));
        elsewhere.conn = ConnState::Connected;
        elsewhere.apply(&m(b":u1!u@h JOIN #big"));
        elsewhere.apply(&m(b":srv 353 u1 = #big :@op u1 u2 u3"));
        elsewhere.apply(&m(b":srv 366 u1 #big :End"));
        assert_eq!(
            channel_roster(&elsewhere, b"#big").snapshot(),
            channel_roster(&users[0], b"#big").snapshot()
        );
        assert!(
            !channel_roster(&elsewhere, b"#big").shares_with(channel_roster(&users[0], b"#big"))
        );
        for s in &mut users {
            s.apply(&m(b":Dan!u@h JOIN #big"));
            s.apply(&m(b":op!u@h MODE #big +v Dan"));
            s.apply(&m(b":u3!u@h QUIT :bye"));
        }
        assert!(channel_roster(&users[0], b"#big").shares_with(channel_roster(&users[1], b"#big")));
        assert_eq!(
            channel_roster(&users[0], b"#big").prefixes(b"dan"),
            Some(b"+".to_vec())
        );
        assert_eq!(channel_roster(&users[0], b"#big").len(), 4);
    }

    #[test]
    fn changes_are_typed_as_they_are_applied() {
        let mut s = state();
        s.take_changes();
        s.apply(&m(b":me!u@h JOIN #c"));
        s.apply(&m(b":srv 353 me = #c :@me +bob"));
        assert!(
            s.take_changes()
                .iter()
                .all(|c| !matches!(c, StateChange::Members { .. })),
            "no list before the reply ends"
        );
        s.apply(&m(b":srv 353 me = #c :carol"));
        s.apply(&m(b":srv 366 me #c :End"));
        assert_eq!(
            s.take_changes(),
            vec![StateChange::Members {
                channel: b"#c".to_vec(),
                members: vec![
                    (b"+".to_vec(), b"bob".to_vec()),
                    (vec![], b"carol".to_vec()),
                    (b"@".to_vec(), b"me".to_vec()),
                ],
            }]
        );
        s.apply(&m(b":op!u@h MODE #c +o-v carol bob"));
        s.apply(&m(b":bob!u@h NICK :Bobby"));
        s.apply(&m(b":op!u@h KICK #c carol :out"));
        s.apply(&m(b":dave!u@h QUIT :bye"));
        s.apply(&m(b":me!u@h NICK :me2"));
        s.apply(&m(b":srv 005 me2 NICKLEN=30 :are supported"));
        s.apply(&m(b":srv 005 me2 NICKLEN=30 :are supported"));
        let v = |b: &[u8]| b.to_vec();
        let got = s.take_changes();
        assert_eq!(
            got[..7],
            [
                StateChange::Member(MemberChange::Prefix {
                    channel: v(b"#c"),
                    nick: v(b"carol"),
                    prefixes: v(b"@"),
                }),
                StateChange::Member(MemberChange::Prefix {
                    channel: v(b"#c"),
                    nick: v(b"bob"),
                    prefixes: Vec::new(),
                }),
                StateChange::Member(MemberChange::Renamed {
                    old: v(b"bob"),
                    new: v(b"Bobby"),
                    channels: vec![v(b"#c")],
                    own: false,
                }),
                StateChange::Member(MemberChange::Kicked {
                    channel: v(b"#c"),
                    nick: v(b"carol"),
                    by: v(b"op"),
                    reason: v(b"out"),
                    own: false,
                }),
                StateChange::Member(MemberChange::Quit {
                    nick: v(b"dave"),
                    reason: v(b"bye"),
                    channels: Vec::new(),
                }),
                StateChange::Member(MemberChange::Renamed {
                    old: v(b"me"),
                    new: v(b"me2"),
                    channels: vec![v(b"#c")],
                    own: true,
                }),
                StateChange::Nick {
                    old: v(b"me"),
                    new: v(b"me2"),
                    relayed: true,
                },
            ]
        );
        // One ISUPPORT change: the same tokens again change nothing.
        assert!(matches!(&got[7..], [StateChange::ISupport(is)] if is.nicklen == Some(30)));
        s.apply(&m(b":me2!u@h PART #c :done"));
        assert_eq!(
            s.take_changes(),
            vec![StateChange::Member(MemberChange::Parted {
                channel: v(b"#c"),
                nick: v(b"me2"),
                reason: v(b"done"),
                own: true,
            })]
        );
        // Our PART of a channel we are not in concerns nothing.
        s.apply(&m(b":me2!u@h PART #c"));
        assert!(s.take_changes().is_empty());
    }

    #[test]
    fn nobody_listening_no_changes() {
        let mut s = state();
        s.take_changes();
        s.listening = false;
        s.apply(&m(b":me!u@h JOIN #c"));
        s.apply(&m(b":srv 353 me = #c :@me bob"));
        s.apply(&m(b":srv 366 me #c :End"));
        s.apply(&m(b":bob!u@h NICK :bobby"));
        s.apply(&m(b":me!u@h NICK :me2"));
        assert!(s.take_changes().is_empty());
        assert_eq!(s.member_count(b"#c"), 2, "the state is kept all the same");
        assert!(s.is_me(b"me2"));
    }

    #[test]
    fn a_registration_under_another_nick_is_a_change() {
        let mut s = state();
        s.take_changes();
        let reg = Registration {
            nick: b"me_".to_vec(),
            isupport: (*s.isupport).clone(),
            caps: Default::default(),
            server_name: Vec::new(),
            user_modes: Vec::new(),
            userhost: None,
            motd: None,
            account: None,
        };
        s.registered(&reg);
        assert_eq!(
            s.take_changes(),
            vec![StateChange::Nick {
                old: b"me".to_vec(),
                new: b"me_".to_vec(),
                relayed: false,
            }]
        );
        s.registered(&reg);
        assert!(s.take_changes().is_empty(), "same nick, same ISUPPORT");
    }

    #[test]
    fn casemapping_change_rekeys() {
        let mut s = state();
        s.apply(&m(b":me!u@h JOIN #a[b]"));
        assert!(s.channels.contains_key(&b"#a{b}"[..]));
        s.apply(&m(b":srv 005 me CASEMAPPING=ascii :are supported"));
        assert!(s.channels.contains_key(&b"#a[b]"[..]));
    }
}
