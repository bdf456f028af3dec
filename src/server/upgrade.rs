//! The old process's side of an in-place upgrade (the protocol is in
//! `crate::upgrade`): start the new binary, have it check itself, then the barrier
//! (stop accepting, stop the users, flush the writer), hand the listening sockets and
//! the data-dir lock over, wait for the new process to serve.
//!
//! Before the barrier nothing has stopped: a refusal, a crash or silence leaves the
//! node as it was. After it (the new process failed to start) the node serves again:
//! its listeners accept again (they never closed) and the reconcile loop starts its
//! users, as a restart would.
//!
//! The node keeps its id, its lease and its users' ownership epochs: the new process
//! takes the node record over (same id, no check for a live id) and runs the users
//! the store assigns to it, with their epochs; nothing is released for adoption.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{info, warn};

use super::{heartbeat, listeners, reconcile, Ctx, Server};
use crate::store::UserId;
use crate::upgrade::{
    self, Channel, Check, Counts, FdKind, Handoff, ListenerRole, Msg, Ready, RecvError, Report,
    Side, UpgradeRequest, STATE_FORMAT,
};

/// How this process was started: what an upgrade runs by default. Recorded at start,
/// since a replaced binary's `/proc/self/exe` reads "… (deleted)".
#[derive(Clone, Debug)]
pub struct Launch {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

impl Launch {
    /// This process's binary and arguments.
    ///
    /// # Errors
    /// The binary's path cannot be read.
    pub fn current() -> anyhow::Result<Launch> {
        Ok(Launch {
            exe: std::env::current_exe().context("reading this binary's path")?,
            args: std::env::args_os().skip(1).collect(),
        })
    }
}

/// Runs a blocking exchange on the upgrade socket off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("upgrade socket task")
}

/// The new process, until it serves.
struct Child {
    child: std::process::Child,
}

impl Child {
    /// Ends it (if it still runs) and says how it ended.
    async fn end(mut self, kill: bool) -> String {
        blocking(move || {
            if kill {
                // Only our own child, by its handle.
                let _ = self.child.kill();
            }
            // It closed its end (exited) or was killed: reaped quickly.
            for _ in 0..50 {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return status.to_string();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            self.child
                .wait()
                .map_or_else(|e| e.to_string(), |s| s.to_string())
        })
        .await
    }
}

impl Server {
    /// Hands this node over to the binary `req` names (default: `launch`'s). On
    /// success the new process serves and this one must end with
    /// [`Server::finish_upgrade`]; on failure this node serves on and the error
    /// says why.
    ///
    /// # Errors
    /// The new binary refused, crashed or did not answer in time; the message says
    /// which, and whether the node had stopped its users (then it restarted them).
    pub async fn upgrade(
        &mut self,
        launch: &Launch,
        req: &UpgradeRequest,
        lock: Option<&std::fs::File>,
    ) -> anyhow::Result<Report> {
        let started = Instant::now();
        let timeout = req.timeout();
        let binary = req.binary.clone().unwrap_or_else(|| launch.exe.clone());
        let node = self.services.node.id.to_string();
        info!(node = %node, binary = %binary.display(), "upgrade: starting the new binary");
        let (channel, theirs) = Channel::pair().context("creating the upgrade socket")?;
        let child = upgrade::spawn(&binary, &launch.args, &theirs)
            .with_context(|| format!("starting {}", binary.display()))?;
        drop(theirs);
        let child = Child { child };

        // 1. The check: nothing has stopped yet.
        let hello = Msg::Hello {
            format: STATE_FORMAT,
            version: upgrade::version(),
            pid: std::process::id(),
        };
        let (mut channel, answer) = blocking(move || {
            let mut ch = channel;
            let r = ch
                .send(&hello, &[])
                .map_err(RecvError::from)
                .and_then(|()| ch.recv(timeout));
            (ch, r)
        })
        .await;
        let check = match answer {
            Ok((Msg::Check(c), _)) => c,
            Ok((Msg::Refuse { reason }, _)) => {
                child.end(false).await;
                anyhow::bail!("the new binary refused: {reason}; this node serves on, unchanged");
            }
            Ok((other, _)) => {
                child.end(true).await;
                anyhow::bail!(
                    "the new binary answered {other:?} instead of its check; this node serves on, unchanged"
                );
            }
            Err(RecvError::Timeout(t)) => {
                let status = child.end(true).await;
                anyhow::bail!(
                    "the new binary did not answer its check within {t:?} (killed: {status}); \
                     this node serves on, unchanged"
                );
            }
            Err(e) => {
                let status = child.end(false).await;
                anyhow::bail!(
                    "the new binary ended before answering its check ({status}; {e}); this node \
                     serves on, unchanged"
                );
            }
        };
        if let Err(reason) = self.accepts(&check).await {
            let sent = reason.clone();
            let _ = blocking(move || channel.send(&Msg::Abort { reason: sent }, &[])).await;
            child.end(false).await;
            anyhow::bail!("{reason}; this node serves on, unchanged");
        }
        info!(node = %node, new_pid = check.pid, new_version = %check.version,
              "upgrade: the new binary passed its check; stopping here");

        // 2. The barrier.
        let s = self.services.clone();
        let before = Counts {
            upstream: u64::try_from(s.health().sessions).unwrap_or(0),
            clients: u64::try_from(s.users.config().counters.clients.get()).unwrap_or(0),
            websocket: u64::try_from(s.sockets.open.get()).unwrap_or(0),
        };
        let barrier_us = upgrade::now_us();
        self.reconciling.cancel();
        self.accepting.cancel();
        let ids: Vec<UserId> = s.users.running().iter().map(|r| r.id).collect();
        let users = ids.len();
        futures::future::join_all(ids.into_iter().map(|id| {
            let users = s.users.clone();
            async move { users.stop(id, None).await }
        }))
        .await;
        if let Err(e) = s.writer.flush().await {
            warn!(error = %e, "upgrade: the writer is closed");
        }

        // 3. The handoff.
        let mut kinds = Vec::new();
        let mut fds: Vec<OwnedFd> = Vec::new();
        for (role, fd) in &self.kept {
            kinds.push(FdKind::Listener {
                role: *role,
                addr: self.addr_of(*role),
            });
            fds.push(fd.try_clone()?);
        }
        if let Some(lock) = lock {
            kinds.push(FdKind::Lock);
            fds.push(lock.as_fd().try_clone_to_owned()?);
        }
        let handoff = Msg::Handoff(Handoff {
            format: STATE_FORMAT,
            node_id: node.clone(),
            fds: kinds,
            connections: Vec::new(),
            reconnected: before,
            barrier_us,
        });
        let answer = blocking(move || {
            let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
            channel
                .send(&handoff, &borrowed)
                .map_err(RecvError::from)
                .and_then(|()| channel.recv(timeout))
        })
        .await;
        let ready: Ready = match answer {
            Ok((Msg::Ready(r), _)) => r,
            other => {
                let why = match other {
                    Ok((Msg::Refuse { reason }, _)) => format!("it refused: {reason}"),
                    Ok((m, _)) => format!("it answered {m:?}"),
                    Err(e) => e.to_string(),
                };
                let status = child.end(true).await;
                self.resume(lock)
                    .await
                    .context("resuming after a failed upgrade")?;
                anyhow::bail!(
                    "the new binary did not take over ({why}; {status}); this node resumed \
                     serving: its {users} user(s) reconnect"
                );
            }
        };
        // The new process runs on after this one exits: not waited for.
        drop(child);
        let moved = self
            .kept
            .iter()
            .map(|(role, _)| (role.name().to_owned(), 1))
            .fold(std::collections::BTreeMap::new(), |mut m, (k, v)| {
                *m.entry(k).or_insert(0) += v;
                m
            });
        let report = Report {
            node,
            old: Side {
                pid: std::process::id(),
                version: upgrade::version(),
            },
            new: Side {
                pid: ready.pid,
                version: ready.version,
            },
            moved,
            reconnected: before,
            pause_ms: ready.accepting_us.saturating_sub(barrier_us) as f64 / 1000.0,
            total_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        info!(old_pid = report.old.pid, new_pid = report.new.pid, new_version = %report.new.version,
              pause_ms = report.pause_ms, total_ms = report.total_ms, users,
              "upgrade: the new process serves; this one exits");
        Ok(report)
    }

    /// Whether this node can hand over to the binary that answered `check`.
    async fn accepts(&self, check: &Check) -> Result<(), String> {
        if check.format_max < STATE_FORMAT {
            return Err(format!(
                "the new binary ({}) reads state format {} at most, this node hands over {}",
                check.version, check.format_max, STATE_FORMAT
            ));
        }
        let have = self
            .services
            .store
            .schema_version()
            .await
            .map_err(|e| format!("reading the store's schema version: {e}"))?;
        if check.schema_known < have {
            return Err(format!(
                "the store is at schema version {have}, the new binary ({}) knows up to {}: \
                 it is older than the store",
                check.version, check.schema_known
            ));
        }
        Ok(())
    }

    fn addr_of(&self, role: ListenerRole) -> String {
        let b = &self.bound;
        let a = match role {
            ListenerRole::Http => Some(b.http),
            ListenerRole::Irc => b.irc,
            ListenerRole::IrcTls => b.irc_tls,
            ListenerRole::Ident => b.ident,
        };
        a.map(|a| a.to_string()).unwrap_or_default()
    }

    /// After a handoff that failed past the barrier: accept again on the same
    /// sockets, take the node record back, start the users again.
    async fn resume(&mut self, lock: Option<&std::fs::File>) -> anyhow::Result<()> {
        if let Some(lock) = lock {
            // The new process may have written its PID there.
            use std::os::unix::fs::FileExt;
            lock.set_len(0)?;
            lock.write_at(format!("{}\n", std::process::id()).as_bytes(), 0)?;
        }
        let ctx: Ctx = self.ctx.clone();
        let s = &self.services;
        let kept = self
            .kept
            .iter()
            .map(|(r, fd)| Ok((*r, fd.try_clone()?)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let (listeners, _) = listeners::Listeners::bind_or_adopt(&ctx.config, kept).await?;
        self.accepting = s.shutdown.child_token();
        listeners.serve(
            s,
            &ctx.config,
            &self.tasks,
            s.users.config().idents.clone(),
            &self.accepting,
            self.trigger.clone(),
        );
        heartbeat::register(&ctx).await?;
        reconcile::reconcile(&ctx).await?;
        self.reconciling = self.loops.child_token();
        self.tasks.spawn(reconcile::reconcile_loop(Ctx {
            loops: self.reconciling.clone(),
            ..ctx
        }));
        warn!(node = %s.node.id, users = s.users.count(), "upgrade failed after the barrier: serving again");
        Ok(())
    }

    /// Ends this process's part after [`Server::upgrade`] succeeded: its remaining
    /// tasks stop (the answer to `ferry upgrade` is sent first) and the writer, already
    /// flushed, closes. Unlike [`Server::shutdown`], the node stays registered and
    /// keeps its users: the new process is the node now.
    pub async fn finish_upgrade(self) {
        self.services.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        self.writer_cancel.cancel();
        let _ = self.writer_task.await;
    }
}
