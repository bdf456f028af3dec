//! Routing: a client whose user runs on another node is proxied there, and a client
//! whose user moves follows it on the same socket.
//!
//! This node has verified the credentials against the shared store. It opens a TCP
//! connection to the owner's advertised IRC address, registers again there with the
//! same credentials and the capabilities this client negotiated (`CAP LS 302`,
//! `CAP REQ`, `CAP END`, `PASS`, `NICK`, `USER`), drops the owner's replies up to its
//! `001`, then relays both ways. The client never knows.
//!
//! When the user moves (a drain, a rebalance, a spill), the client follows on the
//! same socket ([`follow`]): an attached client of the old owner is handed here by
//! its connection task, and a proxied one sees the owner close with
//! [`crate::user::MOVING`] (the owner knows it is proxied by the hidden capability
//! [`caps::PROXY`]). Either way this node waits for the new owner to run the user,
//! logs in there the same way and drops the welcome and the channel burst the client
//! already has (a `NICK` when the nick changed), so the client sees only what it
//! missed: the new owner replays it from the position the client saved before the
//! move, with the move's gap marker.
//!
//! Owner-to-client lines are read one by one (to follow the nick and channels and
//! to spot the move); client-to-owner bytes are copied as they come. The nick is
//! followed from lines, not from the actor's typed state (`StateChange::Nick`) as
//! an attached client does: the actor runs on the owner node and its state events
//! do not cross nodes. The lines are complete for it: the owner's session for this
//! client renders every nick change it is told of as a `NICK` line (a fallback
//! nick at registration included), and a client handed here from a local session
//! starts from that session's typed nick.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::caps::{self, Caps};
use super::io::{self, BoxStream, Reader, Writer};
use super::login::{Registered, Verified};
use crate::irc::{Casemapping, Message};
use crate::services::Services;

/// How long the owner may take to accept the replayed registration.
const OWNER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a client following a move waits for the new owner to run its user (a
/// move reconnects the user's networks through their limits first).
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(180);
/// The longest wait between two tries to reach the new owner.
const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest line read from the owner (IRC lines with tags are at most 8 KiB + 512).
const MAX_LINE: usize = 16 * 1024;

/// What the client already has: its nick and the channels it is in.
#[derive(Clone, Debug, Default)]
pub struct Known {
    pub nick: Vec<u8>,
    pub channels: Vec<Vec<u8>>,
}

impl Known {
    fn has_channel(&self, name: &[u8]) -> bool {
        self.channels.iter().any(|c| fold_eq(c, name))
    }

    /// Follows the client's nick and channels through a line from the owner.
    fn track(&mut self, m: &Message) {
        let ours = m.source_nick().is_some_and(|n| fold_eq(n, &self.nick));
        match m.command.as_str() {
            "001" => {
                if let Some(n) = m.param(0) {
                    self.nick = n.to_vec();
                }
            }
            "NICK" if ours => {
                if let Some(n) = m.param(0) {
                    self.nick = n.to_vec();
                }
            }
            "JOIN" if ours => {
                if let Some(c) = m.param(0) {
                    if !self.has_channel(c) {
                        self.channels.push(c.to_vec());
                    }
                }
            }
            "PART" if ours => {
                if let Some(c) = m.param(0) {
                    self.channels.retain(|x| !fold_eq(x, c));
                }
            }
            "KICK" if m.param(1).is_some_and(|n| fold_eq(n, &self.nick)) => {
                if let Some(c) = m.param(0) {
                    self.channels.retain(|x| !fold_eq(x, c));
                }
            }
            _ => {}
        }
    }
}

/// Names compared as the networks Ferry meets fold them (`rfc1459`, the default).
fn fold_eq(a: &[u8], b: &[u8]) -> bool {
    Casemapping::Rfc1459.eq(a, b)
}

/// Who this node logs in as on the owner.
struct Login<'a> {
    verified: &'a Verified,
    nick: String,
    caps: Vec<&'static str>,
}

impl<'a> Login<'a> {
    fn new(verified: &'a Verified, nick: &[u8], caps: &Caps) -> Login<'a> {
        let nick = String::from_utf8_lossy(nick).into_owned();
        let nick = if nick.is_empty() {
            verified.creds.user.clone()
        } else {
            nick
        };
        let mut caps: Vec<&'static str> = caps.enabled().filter(|c| *c != caps::PROXY).collect();
        caps.push(caps::PROXY);
        Login {
            verified,
            nick,
            caps,
        }
    }
}

/// Proxies a registered client to the node that owns its user, until either side
/// closes (following the user when it moves).
pub async fn run(reader: Reader, writer: Writer, services: &Services, reg: &Registered) {
    let user = &reg.verified.user.name;
    let owner = match services.owner_of(reg.verified.user.id).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "owner lookup failed");
            return writer
                .close("your bouncer session cannot be found, try again later")
                .await;
        }
    };
    let Some(addr) = owner.irc_addr.filter(|_| !owner.local) else {
        return writer
            .close("your bouncer session is not running on any node right now, try again shortly")
            .await;
    };
    let owner_id = owner.node_id.unwrap_or_default();
    let login = Login::new(&reg.verified, &reg.nick, &reg.caps);
    let (up, first) = match tokio::time::timeout(OWNER_TIMEOUT, login_on_owner(&addr, &login)).await
    {
        Ok(Ok(up)) => up,
        Ok(Err(e)) => {
            tracing::warn!(user = %user, owner = %owner_id, %addr, error = %e, "proxy to the owner node failed");
            return writer
                .close(&format!("could not reach node {owner_id}: {e}"))
                .await;
        }
        Err(_) => {
            return writer
                .close(&format!(
                    "node {owner_id} did not accept the session in time"
                ))
                .await
        }
    };
    tracing::info!(user = %user, owner = %owner_id, %addr, "client proxied to the owner node");
    let (mut client, pending) = io::reunite(reader, writer).await;
    let mut known = Known::default();
    if let Ok(m) = parse(&first) {
        known.track(&m);
    }
    if client.write_all(&first).await.is_err() {
        return;
    }
    splice(client, pending, services, login, known, owner_id, Some(up)).await;
}

/// Follows a client's user, which has just left node `from`, to its new owner on
/// the same socket; `known` is what the client has (see the module doc).
pub async fn follow(
    reader: Reader,
    writer: Writer,
    services: &Services,
    verified: &Verified,
    caps: &Caps,
    known: Known,
    from: String,
) {
    let login = Login::new(verified, &known.nick, caps);
    let (client, pending) = io::reunite(reader, writer).await;
    splice(client, pending, services, login, known, from, None).await;
}

/// Relays between the client and its user's owner, logging in again on the new
/// owner each time the user moves, until the client or an owner closes otherwise.
async fn splice(
    mut client: BoxStream,
    mut pending: BytesMut,
    services: &Services,
    login: Login<'_>,
    mut known: Known,
    mut from: String,
    mut up: Option<BufReader<TcpStream>>,
) {
    let user = &login.verified.user.name;
    loop {
        let (mut owner, resync) = match up.take() {
            Some(u) => (u, None),
            None => match reach_new_owner(services, &login, &mut known, &mut client).await {
                Ok((u, node, resync)) => {
                    tracing::info!(user = %user, from = %from, to = %node, "client followed its user to the new owner");
                    from = node;
                    (u, Some(resync))
                }
                Err(reason) => {
                    tracing::warn!(user = %user, from = %from, reason = %reason, "client could not follow its user");
                    let _ = client
                        .write_all(format!("ERROR :{reason}\r\n").as_bytes())
                        .await;
                    return;
                }
            },
        };
        if !pending.is_empty() {
            if owner.get_mut().write_all(&pending).await.is_err() {
                continue;
            }
            pending.clear();
        }
        match pump(&mut client, &mut owner, &mut known, &mut pending, resync).await {
            Pumped::Moved => {
                tracing::info!(user = %user, from = %from, "the owner released the user; the client follows it");
                continue;
            }
            Pumped::Closed => return,
        }
    }
}

enum Pumped {
    /// The owner closed with [`crate::user::MOVING`]: follow.
    Moved,
    /// Either side closed otherwise.
    Closed,
}

/// Relays until one side closes. Bytes the client sent that could not be passed
/// on before the owner went away are left in `pending`.
async fn pump(
    client: &mut BoxStream,
    owner: &mut BufReader<TcpStream>,
    known: &mut Known,
    pending: &mut BytesMut,
    mut resync: Option<Resync>,
) -> Pumped {
    let mut line = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            // Cancel-safe: a partial line stays in `line` for the next round.
            r = owner.read_until(b'\n', &mut line) => {
                match r {
                    Ok(0) | Err(_) => return Pumped::Closed,
                    Ok(_) if !line.ends_with(b"\n") => {
                        if line.len() > MAX_LINE {
                            return Pumped::Closed;
                        }
                    }
                    Ok(_) => {
                        // This line and every whole line already buffered behind it,
                        // written to the client at once.
                        let mut out = Vec::new();
                        loop {
                            match look(&line, known, &mut resync) {
                                Look::Moved => {
                                    let _ = client.write_all(&out).await;
                                    return Pumped::Moved;
                                }
                                Look::Drop => {}
                                Look::Pass => out.extend_from_slice(&line),
                            }
                            line.clear();
                            if !owner.buffer().contains(&b'\n') {
                                break;
                            }
                            if owner.read_until(b'\n', &mut line).await.is_err() {
                                return Pumped::Closed;
                            }
                        }
                        if !out.is_empty() && client.write_all(&out).await.is_err() {
                            return Pumped::Closed;
                        }
                    }
                }
            }
            r = client.read(&mut buf) => {
                match r {
                    Ok(0) | Err(_) => {
                        let _ = owner.get_mut().shutdown().await;
                        return Pumped::Closed;
                    }
                    Ok(n) => {
                        if owner.get_mut().write_all(&buf[..n]).await.is_err() {
                            pending.extend_from_slice(&buf[..n]);
                            // The owner is gone; whether it moved shows in what it
                            // sent last, which the next round reads.
                        }
                    }
                }
            }
        }
    }
}

/// What the relay does with one line from the owner.
enum Look {
    Pass,
    /// The client already has it (see [`Resync`]).
    Drop,
    /// The owner closed with [`crate::user::MOVING`]: follow.
    Moved,
}

/// Follows the nick and channels through one line from the owner and says what to do
/// with it. Only lines that can matter are parsed: the relay of a proxied client
/// stays a copy for everything else (messages, mostly).
fn look(line: &[u8], known: &mut Known, resync: &mut Option<Resync>) -> Look {
    if resync.as_ref().is_some_and(Resync::done) {
        *resync = None;
    }
    if resync.is_none()
        && !matches!(
            command_of(line),
            b"ERROR" | b"001" | b"NICK" | b"JOIN" | b"PART" | b"KICK"
        )
    {
        return Look::Pass;
    }
    let Ok(m) = parse(line) else {
        return Look::Pass;
    };
    if m.command.as_str() == "ERROR" {
        let moving = m
            .param_str(0)
            .is_some_and(|t| t.contains(crate::user::MOVING));
        return if moving { Look::Moved } else { Look::Pass };
    }
    let drop = resync
        .as_mut()
        .is_some_and(|r| r.drop_line(&m, &known.nick));
    known.track(&m);
    if drop {
        Look::Drop
    } else {
        Look::Pass
    }
}

/// The command word of a raw line (after the tags and the prefix), without parsing it.
fn command_of(line: &[u8]) -> &[u8] {
    let mut words = line
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .skip_while(|w| w[0] == b'@')
        .skip_while(|w| w[0] == b':');
    let w = words.next().unwrap_or_default();
    w.strip_suffix(b"\r\n")
        .or_else(|| w.strip_suffix(b"\n"))
        .unwrap_or(w)
}

/// Waits for the user's owner to run it again and logs in there, passing the client
/// only what it does not have: returns the connection and the owner's node id.
async fn reach_new_owner(
    services: &Services,
    login: &Login<'_>,
    known: &mut Known,
    client: &mut BoxStream,
) -> Result<(BufReader<TcpStream>, String, Resync), String> {
    let user = login.verified.user.id;
    let deadline = tokio::time::Instant::now() + FOLLOW_TIMEOUT;
    let mut delay = Duration::from_millis(100);
    let mut last_error = String::from("no node runs it yet");
    loop {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "your bouncer session did not come up on its new node in time ({last_error}); reconnect to continue"
            ));
        }
        // This node still releasing the user: nothing to try yet.
        if !services.users.is_held(user) {
            match services.owner_of(user).await {
                Ok(o) => match (o.irc_addr, o.node_id) {
                    (Some(addr), Some(node)) => {
                        match tokio::time::timeout(OWNER_TIMEOUT, login_on_owner(&addr, login))
                            .await
                        {
                            Ok(Ok((up, first))) => {
                                let resync = welcome(&first, known, client).await?;
                                return Ok((up, node, resync));
                            }
                            Ok(Err(e)) => last_error = e.to_string(),
                            Err(_) => last_error = format!("node {node} did not answer in time"),
                        }
                    }
                    _ => last_error = "no node runs it yet".into(),
                },
                Err(e) => last_error = e.to_string(),
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(FOLLOW_RETRY_MAX);
    }
}

/// What a client following a move already has, dropped from what the new owner
/// sends: the welcome (`002` to the end of the MOTD), the owner's own notices about
/// the network's connection while the user comes up there (the move is not a
/// disconnect to the client: the gap marker says what it may have missed), and for
/// each channel the client is in, our JOIN (in the burst, or live when the owner
/// rejoins) with its topic, modes and names. Other channels pass, so the client
/// learns of them. Ends once every known channel was seen again, or after
/// [`RESYNC_LIMIT`].
struct Resync {
    /// The owner's server name (the `001`'s prefix): its notices are dropped.
    server: Vec<u8>,
    welcome_done: bool,
    /// Known channels not yet seen again.
    waiting: Vec<Vec<u8>>,
    /// Known channels whose JOIN was dropped and whose names have not ended.
    syncing: Vec<Vec<u8>>,
    /// Known channels whose names came from the owner's burst: the network's own
    /// names reply for the rejoin may still follow (a client attached between the
    /// rejoin's JOIN and its names gets both), until [`ECHO_WAIT`] has passed.
    echo: Vec<Vec<u8>>,
    echo_until: tokio::time::Instant,
    until: tokio::time::Instant,
}

/// How long the network's names reply may follow the owner's burst of a channel.
const ECHO_WAIT: Duration = Duration::from_secs(10);

/// The longest a following client's view is filtered (the new owner rejoins within
/// this, or the client sees what the network says).
const RESYNC_LIMIT: Duration = Duration::from_secs(120);

impl Resync {
    fn new(first: &Message, known: &Known) -> Resync {
        Resync {
            server: first.prefix.as_deref().unwrap_or_default().to_vec(),
            welcome_done: false,
            waiting: known.channels.clone(),
            syncing: Vec::new(),
            echo: Vec::new(),
            echo_until: tokio::time::Instant::now() + ECHO_WAIT,
            until: tokio::time::Instant::now() + RESYNC_LIMIT,
        }
    }

    fn done(&self) -> bool {
        let now = tokio::time::Instant::now();
        (self.welcome_done
            && self.waiting.is_empty()
            && self.syncing.is_empty()
            && (self.echo.is_empty() || now > self.echo_until))
            || now > self.until
    }

    /// Whether the client already has `m` (see the type).
    fn drop_line(&mut self, m: &Message, nick: &[u8]) -> bool {
        let ours = m.source_nick().is_some_and(|n| fold_eq(n, nick));
        let from_owner = !self.server.is_empty() && m.prefix.as_deref() == Some(&self.server[..]);
        let echo_open = tokio::time::Instant::now() <= self.echo_until;
        let syncing = |i: usize, me: &Self| {
            m.param(i).is_some_and(|c| {
                me.syncing.iter().any(|x| fold_eq(x, c))
                    || (!from_owner && echo_open && me.echo.iter().any(|x| fold_eq(x, c)))
            })
        };
        match m.command.as_str() {
            "376" | "422" => {
                self.welcome_done = true;
                true
            }
            "002" | "003" | "004" | "005" | "042" | "221" | "250" | "251" | "252" | "253"
            | "254" | "255" | "265" | "266" | "372" | "375" | "396" => true,
            "NOTICE" => from_owner && m.param(0).is_some_and(|t| fold_eq(t, nick)),
            "JOIN" if ours => {
                let Some(c) = m.param(0) else { return false };
                match self.waiting.iter().position(|x| fold_eq(x, c)) {
                    Some(i) => {
                        let c = self.waiting.remove(i);
                        self.syncing.push(c);
                        true
                    }
                    None => false,
                }
            }
            // RPL_TOPIC, RPL_TOPICWHOTIME, RPL_CHANNELMODEIS, RPL_CREATIONTIME:
            // `<nick> <channel> …`.
            "332" | "333" | "324" | "329" => syncing(1, self),
            // RPL_NAMREPLY: `<nick> <type> <channel> :names`.
            "353" => syncing(2, self),
            // RPL_ENDOFNAMES ends the channel's sync.
            "366" => {
                let Some(c) = m.param(1) else { return false };
                if let Some(i) = self.syncing.iter().position(|x| fold_eq(x, c)) {
                    let c = self.syncing.remove(i);
                    if from_owner {
                        self.echo.push(c);
                    }
                    return true;
                }
                if !from_owner && echo_open {
                    if let Some(i) = self.echo.iter().position(|x| fold_eq(x, c)) {
                        self.echo.remove(i);
                        return true;
                    }
                }
                false
            }
            _ => false,
        }
    }
}

/// Takes the new owner's `001` for a client following a move: a changed nick
/// becomes a `NICK`; returns the filter for what follows.
async fn welcome(
    first: &[u8],
    known: &mut Known,
    client: &mut BoxStream,
) -> Result<Resync, String> {
    let m = parse(first).map_err(|e| format!("the new node sent a bad welcome: {e}"))?;
    if let Some(nick) = m.param(0).filter(|n| !fold_eq(n, &known.nick)) {
        let line = format!(
            ":{} NICK :{}\r\n",
            String::from_utf8_lossy(&known.nick),
            String::from_utf8_lossy(nick)
        );
        client
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("connection lost: {e}"))?;
        known.nick = nick.to_vec();
    }
    Ok(Resync::new(&m, known))
}

fn parse(line: &[u8]) -> Result<Message, crate::irc::ParseError> {
    let trimmed = line
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(line);
    Message::parse(Bytes::copy_from_slice(trimmed))
}

/// Registers on the owner; returns the connection just after its `001`, and the
/// `001` line.
async fn login_on_owner(
    addr: &str,
    login: &Login<'_>,
) -> anyhow::Result<(BufReader<TcpStream>, Vec<u8>)> {
    let stream = TcpStream::connect(addr).await?;
    let mut up = BufReader::new(stream);
    let c = &login.verified.creds;
    let ident = format!(
        "{}{}{}",
        c.user,
        c.client
            .as_deref()
            .map(|c| format!("@{c}"))
            .unwrap_or_default(),
        login
            .verified
            .network
            .as_ref()
            .map(|n| format!("/{}", n.name))
            .unwrap_or_default()
    );
    let mut lines = vec!["CAP LS 302".to_owned()];
    if !login.caps.is_empty() {
        lines.push(format!("CAP REQ :{}", login.caps.join(" ")));
    }
    lines.push("CAP END".to_owned());
    lines.push(format!("PASS {ident}:{}", c.password));
    lines.push(format!("NICK {}", login.nick));
    lines.push(format!("USER {} 0 * :{}", c.user, c.user));
    let mut out = lines.join("\r\n");
    out.push_str("\r\n");
    up.get_mut().write_all(out.as_bytes()).await?;

    // Drop the owner's replies (CAP LS/ACK, …) up to 001; it is the client's first line.
    let mut line = Vec::new();
    loop {
        line.clear();
        if up.read_until(b'\n', &mut line).await? == 0 {
            anyhow::bail!("the owner closed the connection during registration");
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let command = text
            .split_whitespace()
            .find(|w| !w.starts_with('@') && !w.starts_with(':'))
            .unwrap_or("");
        match command {
            "001" => return Ok((up, line)),
            "ERROR" | "464" => anyhow::bail!("the owner refused the login: {}", text.trim_end()),
            "PING" => {
                let token = text.trim_end().split_once(' ').map_or("", |(_, t)| t);
                up.get_mut()
                    .write_all(format!("PONG {token}\r\n").as_bytes())
                    .await?;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Known {
        Known {
            nick: b"alice".to_vec(),
            channels: vec![b"#Ferry".to_vec()],
        }
    }

    #[test]
    fn what_the_client_has_is_dropped_once() {
        let k = known();
        let first = parse(b":ferry 001 alice :Welcome").unwrap();
        let mut r = Resync::new(&first, &k);
        let run = |r: &mut Resync, l: &str| r.drop_line(&parse(l.as_bytes()).unwrap(), b"alice");
        for l in [
            ":ferry 005 alice CHANTYPES=# :are supported",
            ":ferry NOTICE alice :Network test is not connected: registering (attempt 1)",
            ":ferry 376 alice :End of MOTD",
            ":alice!a@h JOIN #ferry",
            ":irc.test 332 alice #ferry :topic",
            ":irc.test 353 alice = #ferry :alice bob",
            ":irc.test 366 alice #FERRY :End of /NAMES list",
        ] {
            assert!(run(&mut r, l), "dropped: {l}");
        }
        assert!(r.done());
        // Names from the owner's burst, then the network's for the same rejoin.
        let mut r = Resync::new(&first, &k);
        for l in [
            ":ferry 376 alice :End of MOTD",
            ":alice!a@h JOIN #ferry",
            ":ferry 353 alice = #ferry :alice",
            ":ferry 366 alice #ferry :End of /NAMES list",
        ] {
            assert!(run(&mut r, l), "dropped: {l}");
        }
        assert!(!r.done(), "the network's names may follow");
        assert!(run(&mut r, ":irc.test 353 alice = #ferry :alice bob"));
        assert!(run(&mut r, ":irc.test 366 alice #ferry :End"));
        assert!(r.done());
        let mut r = Resync::new(&first, &k);
        for l in [
            ":alice!a@h JOIN #other",
            ":irc.test 353 alice = #other :alice",
            ":bob!b@h PRIVMSG #ferry :hi",
            ":bob!b@h JOIN #ferry",
            ":*ferry*!ferry@ferry NOTICE #ferry :[gap] …",
            ":irc.test NOTICE alice :from the network",
        ] {
            assert!(!run(&mut r, l), "passed: {l}");
        }
        assert!(run(&mut r, ":alice!a@h JOIN #ferry"));
        assert!(run(&mut r, ":irc.test 366 alice #ferry :End"));
        assert!(!run(&mut r, ":irc.test 366 alice #ferry :End"), "once");
        assert!(!run(&mut r, ":alice!a@h JOIN #ferry"), "once");
    }

    #[test]
    fn the_command_word_is_found_without_parsing() {
        assert_eq!(command_of(b"@time=x :a!b@c PRIVMSG #f :hi\r\n"), b"PRIVMSG");
        assert_eq!(command_of(b":srv 001 alice :Welcome\r\n"), b"001");
        assert_eq!(command_of(b"ERROR :bye\r\n"), b"ERROR");
        assert_eq!(command_of(b"PING\r\n"), b"PING");
    }

    #[test]
    fn nick_and_channels_are_followed() {
        let mut k = known();
        for l in [
            ":alice!a@h JOIN #two",
            ":alice!a@h NICK :alice_",
            ":alice_!a@h PART #ferry :bye",
            ":op!o@h KICK #two alice_ :out",
            ":alice_!a@h JOIN #three",
        ] {
            k.track(&parse(l.as_bytes()).unwrap());
        }
        assert_eq!(k.nick, b"alice_");
        assert_eq!(k.channels, vec![b"#three".to_vec()]);
    }
}
