//! In-place upgrade: the handoff between a running node (the *old* process) and the
//! binary that replaces it (the *new* process), as data and a socket. No policy here:
//! `server::upgrade` drives the old side, `cli::serve` the new one.
//!
//! The old process makes a Unix socketpair and starts the new binary with the same
//! arguments, one end inherited as fd [`INHERITED_FD`] (named in [`FD_ENV`]). On it,
//! frames go both ways: a big-endian `u32` length and a JSON [`Msg`]; a frame may carry
//! file descriptors (SCM_RIGHTS, through `nix`), attached to its first byte.
//!
//! 1. old → new `Hello` (the state format the old will send);
//! 2. new → old `Check` (its version, the schema it can run, the state formats it
//!    takes) or `Refuse` (why). The new process has parsed the configuration by then.
//!    Nothing has stopped yet: a refusal, a crash (end of file) or silence until the
//!    timeout leaves the old process serving as it was.
//! 3. old: the barrier (stop accepting, park every user — `Users::park` —, stop
//!    those that do not park, flush the writer), then `Handoff` with the listening
//!    sockets, the data-dir lock and every parked connection's socket (`Abort`
//!    instead when the old process rejects the check). A frame carries at most
//!    [`FDS_PER_FRAME`] descriptors (the kernel's limit is 253): the rest follow in
//!    `Fds` frames, in order ([`Channel::send_fds`], [`Channel::recv_fds`]);
//! 4. new → old `Resuming` right before it first touches a parked connection (from
//!    then on the old process's copy of the parts is stale), then `Ready` once it
//!    serves; the old process exits.
//!
//! [`Handoff`] is versioned by [`STATE_FORMAT`]: a binary refuses a format newer than
//! its own. Its `users` hold each parked user's `UserPark`; `fds` say which passed
//! descriptor is which (a listener, the lock, a user's upstream or IRC client).

use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub mod bytes;

/// The state format this binary writes, and the newest it reads.
///
/// 2: parked users and their connections move (`Handoff::users`, `FdKind::Upstream`,
/// `FdKind::IrcClient`, `Fds` frames, `Resuming`).
/// 3: client lines the old process had not handled are carried (`UserPark::pending`,
/// and in front of a parked client's unread bytes), and rejoin windows
/// (`NetPark::rejoins`); a reader of 2 would drop them.
/// 4: the users move in batches (`Handoff::batched`, `Up`, `Batch`, `Resumed`,
/// `Done`); the parked state's byte strings travel as base64 strings ([`bytes`])
/// instead of arrays of numbers; each moved user says when it was parked
/// (`MovedUser::parked_us`, for its own pause). This binary still takes a format-3
/// handoff (one barrier for all, `Resuming`); a reader of 3 refuses 4.
/// 5: TLS connections move as kernel TLS where the kernel offers it
/// (`UpstreamPark::ktls`, `ClientPark::ktls`; counted in `Moved::upstream_ktls` and
/// `Moved::irc_client_ktls`); a reader of 4 would take such a socket for plain TCP,
/// so it refuses 5. This binary still takes a format-3 or 4 handoff.
pub const STATE_FORMAT: u32 = 5;
/// The variable that tells a starting `ferry serve` it is the new process of an
/// upgrade, and which fd is its end of the socket.
pub const FD_ENV: &str = "FERRY_UPGRADE_FD";
/// The fd number the new process gets its end of the socket on.
pub const INHERITED_FD: RawFd = 3;
/// Overrides the version a node reports (`/healthz`, the node list, the upgrade
/// report): tests tell two starts of one binary apart with it.
pub const VERSION_ENV: &str = "FERRY_VERSION_OVERRIDE";
/// When set, a new process refuses the upgrade with this reason (tests).
pub const REFUSE_ENV: &str = "FERRY_UPGRADE_REFUSE";
/// When set, a new process fails right after taking the handoff (tests: the old
/// process must serve again).
pub const FAIL_AFTER_HANDOFF_ENV: &str = "FERRY_UPGRADE_FAIL_AFTER_HANDOFF";
/// When set to N, a new process fails right after it resumed N batches of parked
/// users (tests: the users of those batches reconnect, the old process carries on
/// with the others).
pub const FAIL_AFTER_BATCHES_ENV: &str = "FERRY_UPGRADE_FAIL_AFTER_BATCHES";
/// Users per batch of a batched handoff [default [`BATCH_USERS`]] (benchmarks and
/// tests).
///
/// While users of one channel are split between the two processes, each process's
/// `SeqClock` gives ids to shared channel lines; the new process's clock starts
/// `SEQ_RESERVE` above the old one's at the barrier (`Handoff::clock`), so the two
/// never give one (stream, seq) to two lines (before that, `FERRY_UPGRADE_BATCH=10`
/// in `upgrade_scale` lost a line).
pub const BATCH_ENV: &str = "FERRY_UPGRADE_BATCH";
/// Users per batch by default. Each user's pause is about two batches' work (its own
/// park and resume, the batch before being resumed meanwhile) instead of the whole
/// run's: at 5,000 users 179 ms at most against 1,230 ms in one batch
/// (docs/benchmarks.md §12).
pub const BATCH_USERS: usize = 256;
/// When set, a new process fails right after it resumed the parked users, before it
/// confirms (tests: the old process must not carry on on what it kept, which is
/// stale by then; its users reconnect).
pub const FAIL_AFTER_RESUME_ENV: &str = "FERRY_UPGRADE_FAIL_AFTER_RESUME";
/// The largest frame accepted.
const MAX_FRAME: usize = 64 << 20;
/// The most descriptors one frame is read with (the kernel's `SCM_MAX_FD`).
const MAX_FDS: usize = 253;
/// The most descriptors one frame is sent with.
pub const FDS_PER_FRAME: usize = 250;

/// The version this process reports: [`VERSION_ENV`], else the crate's.
pub fn version() -> String {
    std::env::var(VERSION_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
}

/// Microseconds since the Unix epoch: times the two processes compare.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The newest schema version this binary can run on the store at `url`.
pub fn known_schema(url: &str) -> i64 {
    let m = if url.starts_with("postgres") {
        &POSTGRES_MIGRATIONS
    } else {
        &SQLITE_MIGRATIONS
    };
    m.iter().map(|m| m.version).max().unwrap_or(0)
}

/// One frame.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    Hello {
        /// The state format the `Handoff` will be in.
        format: u32,
        version: String,
        pid: u32,
    },
    Check(Check),
    Refuse {
        reason: String,
    },
    Handoff(Handoff),
    /// More descriptors of the handoff (see [`Channel::send_fds`]).
    Fds {
        /// How many came before this frame's.
        from: usize,
    },
    Abort {
        reason: String,
    },
    /// The new process is about to take over the parked connections (a handoff
    /// that is not `batched`).
    Resuming,
    /// New → old, after a `batched` handoff: the new process is up (store open,
    /// node registered, listeners adopted but not accepting): send the users.
    Up,
    /// Old → new: parked users, their descriptors with this frame and `Fds` frames
    /// after it, in the order of `fds`.
    Batch(Batch),
    /// New → old: it resumed the batch before (`users` of them on their parts; the
    /// others it could not resume reconnect from there).
    Resumed {
        users: u64,
    },
    /// Old → new: no more batches; the users the old process could not park, for the
    /// new one to connect again.
    Done {
        reconnected: Counts,
    },
    Ready(Ready),
}

/// Parked users handed over together (`Msg::Batch`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Batch {
    /// Numbered from 0.
    pub seq: u64,
    /// What each descriptor that comes with the batch is (`user` indexes `users`).
    pub fds: Vec<FdKind>,
    pub users: Vec<MovedUser>,
}

/// The new process's answer to `Hello`: what it is and what it can take.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub version: String,
    pub pid: u32,
    /// The newest schema version it can run (its migrations).
    pub schema_known: i64,
    /// The newest state format it reads.
    pub format_max: u32,
}

/// What the old process hands over at the barrier. The descriptors travel with this
/// frame, in the order of `fds`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Handoff {
    pub format: u32,
    pub node_id: String,
    /// What each passed descriptor is, in order (they may span several frames).
    pub fds: Vec<FdKind>,
    /// Parked users, whose connections move (their sockets among `fds`).
    #[serde(default)]
    pub users: Vec<MovedUser>,
    /// Sessions stopped by the old process, for the new one to establish again.
    pub reconnected: Counts,
    /// When the old process stopped accepting and began parking: its upstreams stop
    /// reading from here on (microseconds since the epoch).
    pub barrier_us: u64,
    /// The users follow in `Batch` frames once the new process says `Up` (`users`
    /// is empty then, `fds` are the listeners and the lock).
    #[serde(default)]
    pub batched: bool,
    /// The old process's id clock at the barrier (`user::SeqClock`; 0 without shared
    /// lines). The new process numbers from `clock + SEQ_RESERVE` on, so that while a
    /// channel's users are split between the two processes (a batched handoff) the
    /// ids each gives the channel's lines never meet: two lines never become one
    /// event. Older senders leave it out (0).
    #[serde(default)]
    pub clock: i64,
}

/// A parked user handed over: who, and what its actor carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MovedUser {
    pub id: crate::store::UserId,
    pub name: String,
    pub park: crate::user::UserPark,
    /// When the old process asked this user to park (microseconds since the epoch):
    /// its last read there is at or after it. 0 from a format before 4.
    #[serde(default)]
    pub parked_us: u64,
}

impl PartialEq for MovedUser {
    fn eq(&self, other: &MovedUser) -> bool {
        // `UserPark` has no `PartialEq`: compared as it travels.
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

/// One passed descriptor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FdKind {
    Listener {
        role: ListenerRole,
        addr: String,
    },
    /// The SQLite data directory's lock (`<db>.lock`, an `flock` that moves with the
    /// open file).
    Lock,
    /// The upstream connection of `users[user]` to `network`.
    Upstream {
        user: usize,
        network: crate::store::NetworkId,
    },
    /// The socket of `users[user].park.clients[client]`.
    IrcClient {
        user: usize,
        client: usize,
    },
}

/// Which listener a passed socket is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ListenerRole {
    Http,
    Irc,
    IrcTls,
    Ident,
}

impl ListenerRole {
    pub fn name(self) -> &'static str {
        match self {
            ListenerRole::Http => "http",
            ListenerRole::Irc => "irc",
            ListenerRole::IrcTls => "irc_tls",
            ListenerRole::Ident => "ident",
        }
    }
}

/// Sessions by kind.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Upstream connections (one per running user and network).
    pub upstream: u64,
    /// Client attachments (IRC and websocket clients, per network).
    pub clients: u64,
    /// Open websockets.
    pub websocket: u64,
}

/// The new process serves.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Ready {
    pub pid: u32,
    pub version: String,
    /// When its listeners were accepting again (microseconds since the epoch).
    pub accepting_us: u64,
    /// Users it runs.
    pub users: u64,
    /// Connections it took over and serves on.
    #[serde(default)]
    pub moved: Moved,
    /// Parked sessions it could not resume: closed, started again by reconcile.
    #[serde(default)]
    pub failed: Counts,
    /// When every parked connection was reading again (microseconds since the epoch).
    #[serde(default)]
    pub resumed_us: Option<u64>,
    /// Each moved user's own pause, over the users.
    #[serde(default)]
    pub user_pause: Option<UserPause>,
}

/// Each moved user's own pause: from the old process asking it to park (its last
/// read there is at or after that moment) to the new process having resumed it (its
/// connections read again), over the users resumed.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct UserPause {
    pub users: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl UserPause {
    /// From each user's pause in microseconds; `None` for none.
    pub fn of(mut us: Vec<u64>) -> Option<UserPause> {
        if us.is_empty() {
            return None;
        }
        us.sort_unstable();
        let at = |q: f64| {
            let i = ((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1;
            us[i] as f64 / 1000.0
        };
        Some(UserPause {
            users: us.len() as u64,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

/// Live connections that moved, per kind.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Moved {
    /// Users resumed on their parked parts.
    pub users: u64,
    pub upstream: u64,
    pub irc_client: u64,
    /// Of `upstream`, those on TLS that moved as kernel TLS (`crate::ktls`).
    #[serde(default)]
    pub upstream_ktls: u64,
    /// Of `irc_client`, those on TLS that moved as kernel TLS.
    #[serde(default)]
    pub irc_client_ktls: u64,
}

/// One side of an upgrade, for the report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Side {
    pub pid: u32,
    pub version: String,
}

/// What `ferry upgrade` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub node: String,
    pub old: Side,
    pub new: Side,
    /// Sockets that moved, per kind (`http`, `irc`, …, `upstream`, `irc_client`).
    pub moved: BTreeMap<String, u64>,
    /// Sessions that were re-established instead.
    pub reconnected: Counts,
    /// From the old process's barrier (its last reads) to the new one's reading again
    /// on every moved connection (its first accept when nothing moved).
    pub pause_ms: f64,
    /// From the old process's last accept to the new one's first.
    #[serde(default)]
    pub accept_pause_ms: f64,
    /// Each moved user's own pause (see [`UserPause`]); `None` when none moved.
    #[serde(default)]
    pub user_pause: Option<UserPause>,
    /// From the request to the new process's confirmation.
    pub total_ms: f64,
}

/// What the admin API's `POST /api/admin/upgrade` takes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UpgradeRequest {
    /// The new binary [default: the path this node was started from].
    #[serde(default)]
    pub binary: Option<std::path::PathBuf>,
    /// How long the new binary gets for its check and for its start, each, in
    /// seconds [default: 30].
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

impl UpgradeRequest {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(30).max(1))
    }
}

/// A request to the serving loop, with where its outcome goes.
pub type Trigger = tokio::sync::mpsc::Sender<(
    UpgradeRequest,
    tokio::sync::oneshot::Sender<Result<Report, String>>,
)>;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the other process closed the upgrade socket (it exited)")]
    Closed,
    #[error("upgrade socket: {0}")]
    Io(io::Error),
    #[error("unreadable upgrade message: {0}")]
    Format(String),
}

impl From<io::Error> for RecvError {
    fn from(e: io::Error) -> RecvError {
        match e.kind() {
            // The other process exited with our frame unread.
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof => RecvError::Closed,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                RecvError::Timeout(Duration::ZERO)
            }
            _ => RecvError::Io(e),
        }
    }
}

/// One end of the upgrade socket (blocking; run it on a blocking thread).
pub struct Channel {
    sock: UnixStream,
}

impl Channel {
    /// A connected pair: ours, and the end for the new process (both close-on-exec;
    /// [`spawn`] puts the other end on [`INHERITED_FD`] in the child only).
    pub fn pair() -> io::Result<(Channel, OwnedFd)> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((
            Channel {
                sock: UnixStream::from(a),
            },
            b,
        ))
    }

    /// The new process's end, when [`FD_ENV`] names one (a later upgrade of this
    /// process sets the variable again for its own child).
    ///
    /// # Errors
    /// The variable is not a descriptor number, or the descriptor is not a socket.
    pub fn from_env() -> Option<io::Result<Channel>> {
        let v = std::env::var(FD_ENV).ok()?;
        let Ok(fd) = v.trim().parse::<RawFd>() else {
            return Some(Err(io::Error::other(format!(
                "{FD_ENV}={v} is not a descriptor"
            ))));
        };
        // SAFETY: fcntl on a descriptor number only reads its flags.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Some(Err(io::Error::other(format!("{FD_ENV}={fd} is not open"))));
        }
        // SAFETY: the old process passed this descriptor to us alone; nothing else in
        // this process owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Not inherited any further.
        // SAFETY: sets a flag on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        Some(Ok(Channel {
            sock: UnixStream::from(owned),
        }))
    }

    /// Another handle on the same socket (one thread reads, another writes).
    ///
    /// # Errors
    /// Out of descriptors.
    pub fn try_clone(&self) -> io::Result<Channel> {
        Ok(Channel {
            sock: self.sock.try_clone()?,
        })
    }

    /// Sends `msg` with `fds` attached.
    ///
    /// # Errors
    /// The socket fails (the other side is gone).
    pub fn send(&mut self, msg: &Msg, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        frame.extend_from_slice(&body);
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
        let sent = loop {
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &[IoSlice::new(&frame)],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r?,
            }
        };
        // The descriptors went with the first byte; the rest is plain data.
        self.sock.write_all(&frame[sent..])?;
        Ok(())
    }

    /// Sends `msg` with `fds` attached, [`FDS_PER_FRAME`] at a time: the first ones
    /// with `msg`, the rest in `Fds` frames after it.
    ///
    /// # Errors
    /// The socket fails (the other side is gone).
    pub fn send_fds(&mut self, msg: &Msg, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut chunks = fds.chunks(FDS_PER_FRAME);
        self.send(msg, chunks.next().unwrap_or(&[]))?;
        let mut from = fds.len().min(FDS_PER_FRAME);
        for chunk in chunks {
            self.send(&Msg::Fds { from }, chunk)?;
            from += chunk.len();
        }
        Ok(())
    }

    /// After a frame that came with `got` of the `expected` descriptors
    /// ([`Channel::send_fds`]): reads the `Fds` frames with the rest.
    ///
    /// # Errors
    /// Timeout, the other side closed, or a frame out of order.
    pub fn recv_fds(
        &mut self,
        mut got: Vec<OwnedFd>,
        expected: usize,
        timeout: Duration,
    ) -> Result<Vec<OwnedFd>, RecvError> {
        while got.len() < expected {
            match self.recv(timeout)? {
                (Msg::Fds { from }, fds) if from == got.len() && !fds.is_empty() => {
                    got.extend(fds);
                }
                (other, fds) => {
                    return Err(RecvError::Format(format!(
                        "expected descriptors from {} (of {expected}), got {other:?} with {}",
                        got.len(),
                        fds.len()
                    )))
                }
            }
        }
        if got.len() > expected {
            return Err(RecvError::Format(format!(
                "{} descriptors came, {expected} expected",
                got.len()
            )));
        }
        Ok(got)
    }

    /// Receives one frame and the descriptors that came with it, waiting at most
    /// `timeout`.
    ///
    /// # Errors
    /// Timeout, the other side closed, or a frame that does not parse.
    pub fn recv(&mut self, timeout: Duration) -> Result<(Msg, Vec<OwnedFd>), RecvError> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let deadline = Instant::now() + timeout;
        let remaining = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or(RecvError::Timeout(timeout))
        };
        let mut fds = Vec::new();
        let mut header = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            self.sock.set_read_timeout(Some(remaining()?))?;
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
            let mut iov = [IoSliceMut::new(&mut header[got..])];
            let r = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let msg = match r {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Err(RecvError::Timeout(timeout)),
                Err(e) => return Err(io::Error::from(e).into()),
            };
            for c in msg.cmsgs().map_err(|e| RecvError::Io(e.into()))? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these descriptors for us.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            if msg.bytes == 0 {
                return Err(RecvError::Closed);
            }
            got += msg.bytes;
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME {
            return Err(RecvError::Format(format!("a frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        self.sock.set_read_timeout(Some(remaining()?))?;
        self.sock
            .read_exact(&mut body)
            .map_err(|e| match RecvError::from(e) {
                RecvError::Timeout(_) => RecvError::Timeout(timeout),
                other => other,
            })?;
        let msg = serde_json::from_slice(&body).map_err(|e| RecvError::Format(e.to_string()))?;
        Ok((msg, fds))
    }
}

/// Starts `binary` with `args`, `theirs` on [`INHERITED_FD`] and [`FD_ENV`] set;
/// stdin from /dev/null, stdout and stderr shared with this process.
///
/// # Errors
/// The binary cannot be started.
pub fn spawn(
    binary: &Path,
    args: &[std::ffi::OsString],
    theirs: &OwnedFd,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(binary);
    cmd.args(args)
        .env(FD_ENV, INHERITED_FD.to_string())
        .stdin(std::process::Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if fd == INHERITED_FD {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, INHERITED_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// The new process's side of the check: answers `hello` with `Check`, or with the
/// reason it refuses (a state format newer than its own, [`REFUSE_ENV`]).
pub fn answer_hello(hello: &Msg, database_url: &str) -> Msg {
    let Msg::Hello { format, .. } = hello else {
        return Msg::Refuse {
            reason: format!("expected a hello, got {hello:?}"),
        };
    };
    if *format > STATE_FORMAT {
        return Msg::Refuse {
            reason: format!(
                "the running node hands over state format {format}, this binary ({}) reads up to \
                 {STATE_FORMAT}: it is older than the running one",
                version()
            ),
        };
    }
    if let Some(reason) = std::env::var(REFUSE_ENV).ok().filter(|r| !r.is_empty()) {
        return Msg::Refuse { reason };
    }
    Msg::Check(Check {
        version: version(),
        pid: std::process::id(),
        schema_known: known_schema(database_url),
        format_max: STATE_FORMAT,
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn frames_and_descriptors_cross_the_socket() {
        let (mut a, b) = Channel::pair().unwrap();
        let mut b = Channel {
            sock: UnixStream::from(b),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handoff = Msg::Handoff(Handoff {
            format: STATE_FORMAT,
            node_id: "n1".into(),
            fds: vec![FdKind::Listener {
                role: ListenerRole::Irc,
                addr: addr.to_string(),
            }],
            users: vec![],
            reconnected: Counts {
                upstream: 2,
                clients: 1,
                websocket: 0,
            },
            barrier_us: now_us(),
            batched: false,
            clock: 42,
        });
        a.send(&handoff, &[listener.as_fd()]).unwrap();
        let (got, mut fds) = b.recv(Duration::from_secs(5)).unwrap();
        assert_eq!(got, handoff);
        assert_eq!(fds.len(), 1);
        // The received descriptor is the same listening socket.
        let passed = std::net::TcpListener::from(fds.pop().unwrap());
        assert_eq!(passed.local_addr().unwrap(), addr);
        drop(listener);
        let _c = std::net::TcpStream::connect(addr).unwrap();
        passed.accept().unwrap();
        // No descriptors, and the other direction.
        b.send(&Msg::Refuse { reason: "x".into() }, &[]).unwrap();
        let (got, fds) = a.recv(Duration::from_secs(5)).unwrap();
        assert_eq!(got, Msg::Refuse { reason: "x".into() });
        assert!(fds.is_empty());
    }

    /// More descriptors than one frame takes cross in order, in several frames.
    #[test]
    fn many_descriptors_cross_in_chunks() {
        let (mut a, b) = Channel::pair().unwrap();
        let mut b = Channel {
            sock: UnixStream::from(b),
        };
        // Each descriptor a different pipe, so the order can be checked.
        let n = FDS_PER_FRAME * 2 + 17;
        let mut readers = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..n {
            let (r, w) = nix::unistd::pipe().unwrap();
            readers.push(r);
            writers.push(w);
        }
        let sender = std::thread::spawn(move || {
            let borrowed: Vec<_> = writers.iter().map(AsFd::as_fd).collect();
            a.send_fds(&Msg::Resuming, &borrowed).unwrap();
            a
        });
        let (msg, first) = b.recv(Duration::from_secs(5)).unwrap();
        assert_eq!(msg, Msg::Resuming);
        assert_eq!(first.len(), FDS_PER_FRAME);
        let all = b.recv_fds(first, n, Duration::from_secs(5)).unwrap();
        sender.join().unwrap();
        assert_eq!(all.len(), n);
        for (i, (w, r)) in all.into_iter().zip(readers).enumerate() {
            let mut w = std::fs::File::from(w);
            w.write_all(&[(i % 251) as u8]).unwrap();
            let mut got = [0u8];
            std::fs::File::from(r).read_exact(&mut got).unwrap();
            assert_eq!(got[0], (i % 251) as u8, "descriptor {i} in its place");
        }
    }

    #[test]
    fn silence_times_out_and_a_closed_end_is_seen() {
        let (mut a, b) = Channel::pair().unwrap();
        let err = a.recv(Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, RecvError::Timeout(_)), "{err}");
        drop(b);
        let err = a.recv(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, RecvError::Closed), "{err}");
    }

    #[test]
    fn an_older_binary_refuses_a_newer_state_format() {
        let hello = |format| Msg::Hello {
            format,
            version: "9.9.9".into(),
            pid: 1,
        };
        match answer_hello(&hello(STATE_FORMAT + 1), "sqlite://x") {
            Msg::Refuse { reason } => assert!(reason.contains("older"), "{reason}"),
            other => panic!("accepted a newer format: {other:?}"),
        }
        match answer_hello(&hello(STATE_FORMAT), "sqlite://x") {
            Msg::Check(c) => {
                assert_eq!(c.format_max, STATE_FORMAT);
                assert!(c.schema_known >= 15, "{c:?}");
                assert_eq!(c.pid, std::process::id());
            }
            other => panic!("refused its own format: {other:?}"),
        }
    }
}
