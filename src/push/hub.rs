//! The node's push service as the rest of the node sees it: the [`Pusher`], the
//! cluster's VAPID key, and what the rules need to know about each user without
//! waiting — their subscriptions, settings and muted buffers (cached from the
//! store, reloaded when they change), which of their clients are active, and the
//! read markers moved since the node started.
//!
//! User actors call [`PushHub::offer`] for each stored line; it never awaits and
//! never blocks on an endpoint (the worker's queue is bounded and `try_send`).
//! HTTP and IRC (`WEBPUSH`) change subscriptions through [`PushHub::subscribe`] and
//! [`PushHub::unsubscribe`], which write the store and refresh the cache.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::irc::{decode, Casemapping, Message};
use crate::store::{NetworkId, PushSettings, Seq, Store, StoreError, UserId};

use super::coalesce::BufferKey;
use super::config::PushConfig;
use super::format::strip_formatting;
use super::payload::Payload;
use super::rules::{decide, Context, Incoming, Reason, Suppress};
use super::subscription::{Format, Subscription, SubscriptionError};
use super::vapid::VapidKey;
use super::worker::{Notification, Outcome, Pusher, ReadMarkers};

/// Why a subscription was not added.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Invalid(#[from] SubscriptionError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the rules need of one user, read from the store.
#[derive(Debug, Default)]
struct UserPush {
    subscriptions: Arc<[Subscription]>,
    settings: PushSettings,
    muted: HashSet<(NetworkId, Vec<u8>)>,
}

/// How many of a user's clients make them "active".
#[derive(Debug, Default, Clone, Copy)]
struct Activity {
    /// Web clients that said they are focused.
    focused_web: u32,
    /// IRC clients attached.
    irc: u32,
}

#[derive(Clone, Copy)]
enum ClientKind {
    FocusedWeb,
    Irc,
}

/// One stored chat line, as the actor offers it.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    pub user: UserId,
    pub network: NetworkId,
    pub network_name: &'a str,
    /// The buffer it was stored in (for a private message, the other person's nick).
    pub buffer: &'a [u8],
    /// `buffer` folded with the network's case mapping.
    pub buffer_key: &'a [u8],
    /// Its message id in that buffer.
    pub seq: Seq,
    pub time: DateTime<Utc>,
    pub msg: &'a Message,
    /// The user's current nick on the network.
    pub own_nick: &'a [u8],
    pub casemapping: Casemapping,
}

/// See the module docs. Shared as `Arc<PushHub>`.
pub struct PushHub {
    pusher: Pusher,
    store: Store,
    allow_http: bool,
    users: Mutex<HashMap<UserId, Arc<UserPush>>>,
    activity: Mutex<HashMap<UserId, Activity>>,
    /// Read markers moved on this node (network, buffer key) → id.
    read: Arc<ReadMarkers>,
}

impl std::fmt::Debug for PushHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushHub")
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

impl PushHub {
    /// Reads (or makes, once for the cluster) the VAPID key, starts the worker and
    /// the task that removes subscriptions the push services say are gone.
    ///
    /// # Errors
    /// When the store fails, the stored key is not a key, or the HTTP client
    /// cannot be built.
    pub async fn start(
        store: Store,
        config: PushConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<PushHub>> {
        let stored = store.vapid_key(|| VapidKey::generate().to_base64()).await?;
        let vapid = VapidKey::from_base64(&stored)?;
        let allow_http = config.allow_http;
        let (pusher, outcomes) = Pusher::spawn(config, vapid, shutdown.clone())?;
        let hub = Arc::new(PushHub {
            pusher,
            store,
            allow_http,
            users: Mutex::default(),
            activity: Mutex::default(),
            read: Arc::default(),
        });
        tokio::spawn(hub.clone().handle_outcomes(outcomes, shutdown));
        Ok(hub)
    }

    async fn handle_outcomes(
        self: Arc<Self>,
        mut outcomes: mpsc::Receiver<Outcome>,
        shutdown: CancellationToken,
    ) {
        loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                o = outcomes.recv() => match o {
                    Some(o) => o,
                    None => return,
                },
            };
            if let Outcome::Gone { user, endpoint } = outcome {
                match self
                    .store
                    .delete_push_subscription(user, endpoint.as_str())
                    .await
                {
                    Ok(_) => info!(user, "push subscription removed (gone)"),
                    Err(e) => warn!(user, error = %e, "could not remove a gone push subscription"),
                }
                self.reload(user).await;
            }
        }
    }

    pub fn pusher(&self) -> &Pusher {
        &self.pusher
    }

    /// The VAPID public key, base64url (`applicationServerKey`, ISUPPORT `VAPID`).
    pub fn application_server_key(&self) -> &str {
        self.pusher.application_server_key()
    }

    pub fn allow_http(&self) -> bool {
        self.allow_http
    }

    /// Reads `user`'s subscriptions, settings and mutes into the cache. Failures
    /// are logged and keep the previous cache.
    pub async fn reload(&self, user: UserId) {
        match self.read_user(user).await {
            Ok(u) => {
                self.users.lock().unwrap().insert(user, Arc::new(u));
            }
            Err(e) => warn!(user, error = %e, "could not load push settings"),
        }
    }

    async fn read_user(&self, user: UserId) -> Result<UserPush, StoreError> {
        let subscriptions = self
            .store
            .push_subscriptions(user)
            .await?
            .into_iter()
            // Stored subscriptions were checked when added; `http:` ones are checked
            // again by the worker before each send.
            .filter_map(|s| {
                let mut sub = Subscription::parse(&s.endpoint, &s.p256dh, &s.auth, true).ok()?;
                if s.irc {
                    sub.format = Format::Irc;
                }
                Some(sub)
            })
            .collect();
        Ok(UserPush {
            subscriptions,
            settings: self.store.push_settings(user).await?,
            muted: self.store.push_mutes(user).await?.into_iter().collect(),
        })
    }

    /// Checks and stores a subscription of `user`; returns whether it is new.
    ///
    /// # Errors
    /// [`SubscribeError::Invalid`] naming the bad field, or a store error.
    pub async fn subscribe(
        &self,
        user: UserId,
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        format: Format,
    ) -> Result<bool, SubscribeError> {
        let sub = Subscription::parse(endpoint, p256dh, auth, self.allow_http)?;
        let (p256dh, auth) = sub.keys.to_base64();
        let new = self
            .store
            .add_push_subscription(
                user,
                sub.endpoint.as_str(),
                &p256dh,
                &auth,
                format == Format::Irc,
            )
            .await?;
        self.reload(user).await;
        Ok(new)
    }

    /// Removes a subscription of `user` by endpoint; returns whether there was one.
    ///
    /// # Errors
    /// A store error.
    pub async fn unsubscribe(&self, user: UserId, endpoint: &str) -> Result<bool, StoreError> {
        // Stored endpoints are in `Url`'s normal form; accept what the client sent
        // as well as that form.
        let normal = reqwest::Url::parse(endpoint).map(|u| u.to_string());
        let mut gone = self.store.delete_push_subscription(user, endpoint).await?;
        if let Ok(normal) = normal {
            if normal != endpoint {
                gone |= self.store.delete_push_subscription(user, &normal).await?;
            }
        }
        self.reload(user).await;
        Ok(gone)
    }

    /// A read marker moved to `seq`.
    pub fn note_read(&self, network: NetworkId, key: &[u8], seq: Seq) {
        self.read.note(network, key, seq);
    }

    /// Marks a client of `user` active until the guard is dropped: an attached IRC
    /// client (active only when the user's setting says so).
    pub fn irc_attached(self: &Arc<Self>, user: UserId) -> ActiveGuard {
        self.activate(user, ClientKind::Irc)
    }

    /// A focused web client of `user`, until the guard is dropped.
    pub fn web_focused(self: &Arc<Self>, user: UserId) -> ActiveGuard {
        self.activate(user, ClientKind::FocusedWeb)
    }

    fn activate(self: &Arc<Self>, user: UserId, kind: ClientKind) -> ActiveGuard {
        self.count(user, kind, true);
        ActiveGuard {
            hub: self.clone(),
            user,
            kind,
        }
    }

    fn count(&self, user: UserId, kind: ClientKind, up: bool) {
        let mut map = self.activity.lock().unwrap();
        let a = map.entry(user).or_default();
        let n = match kind {
            ClientKind::FocusedWeb => &mut a.focused_web,
            ClientKind::Irc => &mut a.irc,
        };
        *n = if up {
            n.saturating_add(1)
        } else {
            n.saturating_sub(1)
        };
        if a.focused_web == 0 && a.irc == 0 {
            map.remove(&user);
        }
    }

    /// Queues a push for `line` when the rules say so; returns why it was pushed.
    /// Never waits: a full queue drops the push (counted).
    pub fn offer(&self, line: &Line<'_>) -> Option<Reason> {
        let incoming = Incoming::from_message(line.msg)?;
        let user = self.users.lock().unwrap().get(&line.user).cloned()?;
        if user.subscriptions.is_empty() {
            return None;
        }
        let activity = self
            .activity
            .lock()
            .unwrap()
            .get(&line.user)
            .copied()
            .unwrap_or_default();
        let already_read = self.read.is_read(line.network, line.buffer_key, line.seq);
        let suppress = Suppress {
            already_read,
            muted: user
                .muted
                .contains(&(line.network, line.buffer_key.to_vec())),
            client_active: activity.focused_web > 0
                || (user.settings.irc_is_active && activity.irc > 0),
        };
        let ctx = Context {
            own_nick: line.own_nick,
            casemapping: line.casemapping,
            keywords: &user.settings.keywords,
        };
        let reason = decide(&incoming, &ctx, suppress)?;
        let notification = Notification {
            key: BufferKey {
                user: line.user,
                network: line.network,
                buffer: line.buffer_key.to_vec(),
            },
            irc_line: user
                .subscriptions
                .iter()
                .any(|s| s.format == Format::Irc)
                .then(|| irc_line(line.msg)),
            subscriptions: user.subscriptions.clone(),
            read: Some(self.read.clone()),
            payload: Payload {
                network: line.network_name.to_owned(),
                buffer: decode(line.buffer).into_owned(),
                sender: decode(incoming.sender).into_owned(),
                text: strip_formatting(&decode(incoming.text)).into_owned(),
                id: line.seq,
                time: line.time,
                reason,
                count: 1,
                truncated: false,
            },
        };
        // A drop is counted by the pusher; the line itself is stored regardless.
        let _ = self.pusher.notify(notification);
        Some(reason)
    }
}

/// The line for `soju.im/webpush` subscriptions: the message without its CRLF and
/// without tags but `msgid` and `time` (the spec lets servers drop tags to fit, and
/// never `msgid`).
fn irc_line(msg: &Message) -> Arc<[u8]> {
    let mut m = msg.clone();
    m.tags.retain(|t| t.key == "msgid" || t.key == "time");
    Arc::from(&m.to_bytes()[..])
}

/// Keeps a client counted as active; see [`PushHub::web_focused`].
pub struct ActiveGuard {
    hub: Arc<PushHub>,
    user: UserId,
    kind: ClientKind,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.hub.count(self.user, self.kind, false);
    }
}

impl std::fmt::Debug for ActiveGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveGuard")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}
