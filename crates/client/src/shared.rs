//! What the handles and the background task share: the socket's settings
//! and token ([`SocketShared`]), and each channel's presence, status and
//! callbacks ([`ChannelShared`]). The bottom of the crate's handle/task
//! split: it imports nothing of theirs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use roster_presence::{ClientPresence, PresenceEvent};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::presence::state_of;
use crate::{
    BroadcastMessage, ChannelOptions, ClientOptions, Error, Presence, PresenceChange, PresenceState,
};

/// Where a channel stands. [`RealtimeChannel::subscribe`] returns the outcome
/// of the join; [`RealtimeChannel::status_changes`] follows every change
/// (including rejoins after a reconnection).
///
/// ```
/// use roster_client::ChannelStatus;
///
/// let s = ChannelStatus::ChannelError("MalformedJWT: The token provided is not a valid JWT".into());
/// assert!(!s.is_subscribed());
/// assert!(s.into_result().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelStatus {
    /// Not joined (initial state, or after unsubscribe / removal / `phx_close`).
    Closed,
    /// A join is on its way (or waits for the connection).
    Joining,
    /// Joined.
    Subscribed,
    /// The join got no answer in time; the client keeps retrying.
    TimedOut,
    /// The join was refused (the server's reason), or the connection failed
    /// or was lost; the client keeps retrying with backoff.
    ChannelError(String),
}

impl ChannelStatus {
    /// `true` for [`ChannelStatus::Subscribed`].
    ///
    /// ```
    /// assert!(roster_client::ChannelStatus::Subscribed.is_subscribed());
    /// ```
    pub fn is_subscribed(&self) -> bool {
        matches!(self, ChannelStatus::Subscribed)
    }

    /// `Ok(())` when subscribed, otherwise the matching [`Error`]
    /// (`TimedOut`, `Rejected(reason)`, `ChannelClosed`), for use with `?`.
    ///
    /// ```no_run
    /// # async fn demo(channel: roster_client::RealtimeChannel) -> Result<(), roster_client::Error> {
    /// channel.subscribe().await.into_result()?;
    /// # Ok(()) }
    /// ```
    pub fn into_result(self) -> Result<(), Error> {
        match self {
            ChannelStatus::Subscribed => Ok(()),
            ChannelStatus::TimedOut | ChannelStatus::Joining => Err(Error::TimedOut),
            ChannelStatus::ChannelError(reason) => Err(Error::Rejected(reason)),
            ChannelStatus::Closed => Err(Error::ChannelClosed),
        }
    }
}

type SyncFn = Arc<dyn Fn() + Send + Sync>;
type PresenceFn = Arc<dyn Fn(&str, &[Presence], &[Presence]) + Send + Sync>;
type UpdateFn = Arc<dyn Fn(&str, &Presence, &Presence) + Send + Sync>;
type BroadcastFn = Arc<dyn Fn(&BroadcastMessage) + Send + Sync>;

#[derive(Default)]
pub(crate) struct Handlers {
    pub(crate) sync: Vec<SyncFn>,
    pub(crate) join: Vec<PresenceFn>,
    pub(crate) leave: Vec<PresenceFn>,
    pub(crate) update: Vec<UpdateFn>,
    pub(crate) broadcast: Vec<(String, BroadcastFn)>,
    pub(crate) streams: Vec<mpsc::UnboundedSender<PresenceChange>>,
}

/// One channel's state shared by its handles and the background task.
pub(crate) struct ChannelShared {
    pub(crate) topic: String,
    pub(crate) options: ChannelOptions,
    pub(crate) presence: Mutex<ClientPresence>,
    pub(crate) status: watch::Sender<ChannelStatus>,
    pub(crate) handlers: Mutex<Handlers>,
}

/// Lock, ignoring poisoning: user callbacks never run under these locks.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run a user callback; a panic in it is logged, not propagated into the
/// background task.
fn guarded(what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!(callback = what, "a channel callback panicked");
    }
}

impl ChannelShared {
    pub(crate) fn new(topic: String, options: ChannelOptions) -> Self {
        ChannelShared {
            topic,
            options,
            presence: Mutex::new(ClientPresence::new()),
            status: watch::channel(ChannelStatus::Closed).0,
            handlers: Mutex::new(Handlers::default()),
        }
    }

    pub(crate) fn set_status(&self, status: ChannelStatus) {
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    pub(crate) fn status(&self) -> ChannelStatus {
        self.status.borrow().clone()
    }

    pub(crate) fn state(&self) -> PresenceState {
        state_of(lock(&self.presence).view())
    }

    /// A (re)join was sent: buffer diffs until its snapshot (phx-js).
    pub(crate) fn rejoined(&self) {
        lock(&self.presence).rejoined();
    }

    /// Apply a `presence_state` (`snapshot`) or `presence_diff` and fire callbacks.
    pub(crate) fn on_presence(&self, payload: &Value, snapshot: bool) {
        let events = {
            let mut presence = lock(&self.presence);
            if snapshot {
                presence.on_state(payload)
            } else {
                presence.on_diff(payload)
            }
        };
        match events {
            Ok(events) => self.dispatch_presence(events),
            Err(e) => tracing::warn!(topic = %self.topic, error = %e, "malformed presence message"),
        }
    }

    fn dispatch_presence(&self, events: Vec<PresenceEvent>) {
        if events.is_empty() {
            return;
        }
        let (sync, join, leave, update) = {
            let mut h = lock(&self.handlers);
            h.streams.retain(|s| !s.is_closed());
            (
                h.sync.clone(),
                h.join.clone(),
                h.leave.clone(),
                h.update.clone(),
            )
        };
        for event in events {
            let change = PresenceChange::from_event(event);
            match &change {
                PresenceChange::Sync => {
                    for f in &sync {
                        guarded("presence sync", || f());
                    }
                }
                PresenceChange::Join { key, current, new } => {
                    for f in &join {
                        guarded("presence join", || f(key, current, new));
                    }
                }
                PresenceChange::Leave { key, current, left } => {
                    for f in &leave {
                        guarded("presence leave", || f(key, current, left));
                    }
                }
                PresenceChange::Update { key, old, new } => {
                    for f in &update {
                        guarded("presence update", || f(key, old, new));
                    }
                }
            }
            for s in &lock(&self.handlers).streams {
                let _ = s.send(change.clone());
            }
        }
    }

    pub(crate) fn dispatch_broadcast(&self, msg: &BroadcastMessage) {
        let matching: Vec<BroadcastFn> = lock(&self.handlers)
            .broadcast
            .iter()
            .filter(|(event, _)| event == "*" || *event == msg.event)
            .map(|(_, f)| f.clone())
            .collect();
        for f in matching {
            guarded("broadcast", || f(msg));
        }
    }
}

/// What the task shares with the handles.
pub(crate) struct SocketShared {
    pub(crate) url: String,
    pub(crate) options: ClientOptions,
    /// Sent in every join; the API key until `set_auth`.
    pub(crate) access_token: Mutex<String>,
    pub(crate) connected: AtomicBool,
    /// For `wss://` URLs.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl SocketShared {
    pub(crate) fn new(url: String, key: String, options: ClientOptions) -> Self {
        SocketShared {
            url,
            options,
            access_token: Mutex::new(key),
            connected: AtomicBool::new(false),
            tls: None,
        }
    }
}
