//! A channel handle: callbacks, subscribe, presence, broadcast.
//!
//! The handle only talks to the client's background task (see `socket.rs`);
//! the presence view, status and callbacks live in [`ChannelShared`], which
//! the task updates and the handle reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use roster_protocol::push::ClientPush;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::command::Command;
use crate::link::ClientShared;
use crate::presence::decode_state;
use crate::shared::{lock, ChannelShared, ChannelStatus};
use crate::{BroadcastMessage, Error, Presence, PresenceChanges, PresenceState};

/// A channel (`realtime:<name>`), from [`RealtimeClient::channel`](crate::RealtimeClient::channel).
/// Cheap to clone; clones are the same channel.
///
/// ```no_run
/// # async fn demo() -> Result<(), roster_client::Error> {
/// use roster_client::RealtimeClient;
///
/// let client = RealtimeClient::new("http://127.0.0.1:4000", "sb_publishable_dev")?;
/// let room = client.channel("room_01");
/// room.on_presence_sync({
///     let room = room.clone();
///     move || println!("synced: {:?}", room.presence_state())
/// })
/// .on_presence_join(|key, _current, new| println!("join {key}: {new:?}"))
/// .on_presence_leave(|key, _current, left| println!("leave {key}: {left:?}"));
/// room.subscribe().await.into_result()?;
/// room.track(&serde_json::json!({"online_at": "2026-05-01T10:00:00Z"})).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RealtimeChannel {
    pub(crate) inner: Arc<ChannelShared>,
    pub(crate) client: Arc<ClientShared>,
}

impl std::fmt::Debug for RealtimeChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeChannel")
            .field("topic", &self.inner.topic)
            .field("status", &self.status())
            .finish()
    }
}

impl RealtimeChannel {
    /// The wire topic, `realtime:<name>`.
    ///
    /// ```
    /// let client = roster_client::RealtimeClient::new("http://127.0.0.1:4000", "k").unwrap();
    /// assert_eq!(client.channel("room_01").topic(), "realtime:room_01");
    /// ```
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// Call `f` after every change of the presence state (realtime-js
    /// `on('presence', {event: 'sync'})`). Callbacks run on the client's
    /// background task: keep them short and never block in them.
    ///
    /// ```no_run
    /// # fn demo(room: roster_client::RealtimeChannel) {
    /// let r = room.clone();
    /// room.on_presence_sync(move || println!("{:?}", r.presence_state()));
    /// # }
    /// ```
    pub fn on_presence_sync(&self, f: impl Fn() + Send + Sync + 'static) -> &Self {
        lock(&self.inner.handlers).sync.push(Arc::new(f));
        self
    }

    /// Call `f(key, current, new)` when presences join `key`; `current` is
    /// what the key had before (realtime-js `{event: 'join'}`).
    ///
    /// ```no_run
    /// # fn demo(room: roster_client::RealtimeChannel) {
    /// room.on_presence_join(|key, current, new| {
    ///     println!("{key}: {} before, {} joined", current.len(), new.len());
    /// });
    /// # }
    /// ```
    pub fn on_presence_join(
        &self,
        f: impl Fn(&str, &[Presence], &[Presence]) + Send + Sync + 'static,
    ) -> &Self {
        lock(&self.inner.handlers).join.push(Arc::new(f));
        self
    }

    /// Call `f(key, current, left)` when presences leave `key`; `current` is
    /// what the key has after (realtime-js `{event: 'leave'}`).
    ///
    /// ```no_run
    /// # fn demo(room: roster_client::RealtimeChannel) {
    /// room.on_presence_leave(|key, current, left| {
    ///     println!("{key}: {} left, {} remain", left.len(), current.len());
    /// });
    /// # }
    /// ```
    pub fn on_presence_leave(
        &self,
        f: impl Fn(&str, &[Presence], &[Presence]) + Send + Sync + 'static,
    ) -> &Self {
        lock(&self.inner.handlers).leave.push(Arc::new(f));
        self
    }

    /// Call `f(key, old, new)` when a presence of `key` is updated in place
    /// (a quiet update: same `presence_ref`, no join and no leave; a Roster
    /// extension, see [`ChannelOptions::quiet_updates`](crate::ChannelOptions::quiet_updates)).
    ///
    /// ```no_run
    /// # fn demo(room: roster_client::RealtimeChannel) {
    /// room.on_presence_update(|key, old, new| {
    ///     println!("{key}: {:?} -> {:?}", old.fields, new.fields);
    /// });
    /// # }
    /// ```
    pub fn on_presence_update(
        &self,
        f: impl Fn(&str, &Presence, &Presence) + Send + Sync + 'static,
    ) -> &Self {
        lock(&self.inner.handlers).update.push(Arc::new(f));
        self
    }

    /// Call `f` for each broadcast whose event is `event`, or every
    /// broadcast for `"*"`.
    ///
    /// ```no_run
    /// # fn demo(room: roster_client::RealtimeChannel) {
    /// room.on_broadcast("cursor", |msg| println!("cursor at {}", msg.payload));
    /// room.on_broadcast("*", |msg| println!("{}: {}", msg.event, msg.payload));
    /// # }
    /// ```
    pub fn on_broadcast(
        &self,
        event: impl Into<String>,
        f: impl Fn(&BroadcastMessage) + Send + Sync + 'static,
    ) -> &Self {
        lock(&self.inner.handlers)
            .broadcast
            .push((event.into(), Arc::new(f)));
        self
    }

    /// A [`Stream`](futures_util::Stream) of every presence change from now
    /// on, like Swift's `presenceChange()` or Kotlin's flow.
    ///
    /// ```no_run
    /// # async fn demo(room: roster_client::RealtimeChannel) {
    /// use futures_util::StreamExt;
    /// let mut changes = room.presence_changes();
    /// while let Some(change) = changes.next().await {
    ///     println!("{change:?}");
    /// }
    /// # }
    /// ```
    pub fn presence_changes(&self) -> PresenceChanges {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.handlers).streams.push(tx);
        PresenceChanges { rx }
    }

    /// Join the channel and wait for the outcome (at most the client's
    /// timeout). Connects first if needed. After `TimedOut` or
    /// `ChannelError` the client keeps retrying in the background, as the
    /// official clients do; follow it with [`status_changes`](Self::status_changes).
    ///
    /// ```no_run
    /// # async fn demo(room: roster_client::RealtimeChannel) {
    /// use roster_client::ChannelStatus;
    /// match room.subscribe().await {
    ///     ChannelStatus::Subscribed => println!("joined"),
    ///     ChannelStatus::ChannelError(reason) => eprintln!("refused: {reason}"),
    ///     other => eprintln!("{other:?}"),
    /// }
    /// # }
    /// ```
    pub async fn subscribe(&self) -> ChannelStatus {
        let (tx, rx) = oneshot::channel();
        self.client.send(Command::Subscribe(self.inner.clone(), tx));
        // The task answers within its timeout; this is only a safety net.
        let grace = self.client.options().timeout + std::time::Duration::from_secs(1);
        match tokio::time::timeout(grace, rx).await {
            Ok(Ok(status)) => status,
            Ok(Err(_)) => ChannelStatus::Closed,
            Err(_) => ChannelStatus::TimedOut,
        }
    }

    /// The current status.
    ///
    /// ```no_run
    /// # fn demo(room: roster_client::RealtimeChannel) {
    /// if room.status().is_subscribed() { println!("joined"); }
    /// # }
    /// ```
    pub fn status(&self) -> ChannelStatus {
        self.inner.status()
    }

    /// A `watch` receiver following the status (e.g. `Subscribed` →
    /// `ChannelError("connection lost…")` → `Joining` → `Subscribed` across a reconnection).
    ///
    /// ```no_run
    /// # async fn demo(room: roster_client::RealtimeChannel) {
    /// let mut status = room.status_changes();
    /// while status.changed().await.is_ok() {
    ///     println!("now {:?}", *status.borrow());
    /// }
    /// # }
    /// ```
    pub fn status_changes(&self) -> watch::Receiver<ChannelStatus> {
        self.inner.status.subscribe()
    }

    /// Track `state` as this client's presence (an object; its fields show
    /// up in everyone's presence state). A second call updates it. Resolves
    /// when the server replies: `Err(Error::TimedOut)` without a reply,
    /// `Err(Error::Rejected(reason))` when refused. The payload is kept and
    /// re-tracked after a rejoin unless [`ChannelOptions::auto_retrack`] is off.
    ///
    /// ```no_run
    /// # async fn demo(room: roster_client::RealtimeChannel) -> Result<(), roster_client::Error> {
    /// #[derive(serde::Serialize)]
    /// struct Me<'a> { user: &'a str, online_at: &'a str }
    /// room.track(&Me { user: "user-1", online_at: "2026-05-01T10:00:00Z" }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn track(&self, state: &impl Serialize) -> Result<(), Error> {
        let state = serde_json::to_value(state).map_err(|e| Error::Serialize(e.to_string()))?;
        self.push(ClientPush::Track(state), true).await
    }

    /// Stop tracking (and stop re-tracking after rejoins).
    ///
    /// ```no_run
    /// # async fn demo(room: roster_client::RealtimeChannel) -> Result<(), roster_client::Error> {
    /// room.untrack().await?;
    /// # Ok(()) }
    /// ```
    pub async fn untrack(&self) -> Result<(), Error> {
        self.push(ClientPush::Untrack, true).await
    }

    /// The presences of the channel: key → one [`Presence`] per tracking
    /// client, each with its `presence_ref` (realtime-js `presenceState()`).
    ///
    /// ```no_run
    /// # fn demo(room: roster_client::RealtimeChannel) {
    /// for (key, presences) in room.presence_state() {
    ///     println!("{key}: {} connection(s)", presences.len());
    /// }
    /// # }
    /// ```
    pub fn presence_state(&self) -> PresenceState {
        self.inner.state()
    }

    /// [`presence_state`](Self::presence_state) with each presence's fields decoded as `T`.
    ///
    /// ```no_run
    /// # fn demo(room: roster_client::RealtimeChannel) -> Result<(), serde_json::Error> {
    /// #[derive(serde::Deserialize)]
    /// struct User { user: String }
    /// for (key, users) in room.presence_state_as::<User>()? {
    ///     println!("{key}: {:?}", users.iter().map(|u| &u.user).collect::<Vec<_>>());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn presence_state_as<T: DeserializeOwned>(
        &self,
    ) -> Result<BTreeMap<String, Vec<T>>, serde_json::Error> {
        decode_state(&self.presence_state())
    }

    /// Send a broadcast to the channel's other members (and to this client
    /// too with [`ChannelOptions::broadcast_self`]). Sent as a JSON text
    /// frame. With [`ChannelOptions::broadcast_ack`] it waits for the
    /// server's acknowledgement; otherwise it resolves once sent.
    ///
    /// ```no_run
    /// # async fn demo(room: roster_client::RealtimeChannel) -> Result<(), roster_client::Error> {
    /// room.send_broadcast("cursor", &serde_json::json!({"x": 10, "y": 20})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_broadcast(&self, event: &str, payload: &impl Serialize) -> Result<(), Error> {
        let payload = serde_json::to_value(payload).map_err(|e| Error::Serialize(e.to_string()))?;
        let push = ClientPush::Broadcast {
            event: event.to_owned(),
            payload,
        };
        let ack = self.inner.options.broadcast_ack;
        self.push(push, ack).await
    }

    /// Leave the channel (`phx_leave`); its presence, if tracked, leaves
    /// too. The channel can be subscribed again later.
    ///
    /// ```no_run
    /// # async fn demo(room: roster_client::RealtimeChannel) {
    /// let _ = room.unsubscribe().await;
    /// # }
    /// ```
    pub async fn unsubscribe(&self) -> Result<(), Error> {
        self.client.leave(&self.inner.topic, false).await
    }

    async fn push(&self, push: ClientPush, awaits_reply: bool) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Push {
            topic: self.inner.topic.clone(),
            push: Box::new(push),
            awaits_reply,
            reply: tx,
        };
        if self.client.send_running(cmd).is_err() {
            return Err(Error::NotSubscribed);
        }
        let grace = self.client.options().timeout + std::time::Duration::from_secs(1);
        match tokio::time::timeout(grace, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => Err(Error::TimedOut),
        }
    }
}
