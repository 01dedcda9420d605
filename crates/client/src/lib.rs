//! A Rust client for Supabase Realtime Presence and Broadcast: works with
//! Roster (a self-hostable Supabase-compatible presence server) and with
//! Supabase Realtime.
//!
//! The flow is the one of the Supabase Presence guide: connect, join a
//! channel, track a state, read the presence state, react to events, and
//! broadcast. It speaks the Phoenix protocol with serializer vsn 2.0.0
//! (default) or 1.0.0, sends heartbeats, reconnects with jittered backoff
//! (about 1, 2, 5, 10 s), rejoins its channels and, unless switched off,
//! tracks the last tracked state again. Presence state is computed by
//! [`roster_presence::ClientPresence`], the phx-js sync algorithm.
//!
//! # 1. Connect
//!
//! A project URL (`http://`, `https://`) or a WebSocket URL (`ws://`,
//! `wss://`). `wss://` uses rustls with Mozilla's roots; see
//! [`TlsRoots`] for the platform's roots or a private CA. Connecting is
//! optional (subscribing connects), but reports errors early:
//!
//! ```no_run
//! # async fn demo() -> Result<(), roster_client::Error> {
//! use roster_client::{ClientOptions, Error, RealtimeClient};
//!
//! let client = RealtimeClient::with_options(
//!     "https://realtime.example.com",
//!     "sb_publishable_dev",
//!     ClientOptions::default().trust_only_ca_file("ca.pem"),
//! )?;
//! match client.connect().await {
//!     Ok(()) => {}
//!     Err(Error::Refused { status: 401, message }) => eprintln!("bad key: {message}"),
//!     Err(Error::Tls { reason, message }) => eprintln!("TLS ({reason:?}): {message}"),
//!     Err(e) => eprintln!("{e}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # 2. Join a channel
//!
//! ```no_run
//! # async fn demo(client: roster_client::RealtimeClient) -> Result<(), roster_client::Error> {
//! use roster_client::ChannelOptions;
//!
//! let room = client.channel_with("room_01", ChannelOptions::default().presence_key("alice"));
//! room.subscribe().await.into_result()?;
//! # Ok(()) }
//! ```
//!
//! # 3. Track (and untrack) this client's state
//!
//! ```no_run
//! # async fn demo(room: roster_client::RealtimeChannel) -> Result<(), roster_client::Error> {
//! room.track(&serde_json::json!({ "user": "alice", "online_at": "2026-05-01T10:00:00Z" })).await?;
//! room.untrack().await?;
//! # Ok(()) }
//! ```
//!
//! # 4. Read the presence state
//!
//! ```no_run
//! # fn demo(room: roster_client::RealtimeChannel) -> Result<(), serde_json::Error> {
//! for (key, presences) in room.presence_state() {
//!     println!("{key}: {} connection(s)", presences.len());
//! }
//! #[derive(serde::Deserialize)]
//! struct User { user: String }
//! let typed = room.presence_state_as::<User>()?;
//! # Ok(()) }
//! ```
//!
//! # 5. Presence events
//!
//! Callbacks, registered before `subscribe` to see the first sync:
//!
//! ```no_run
//! # fn demo(room: roster_client::RealtimeChannel) {
//! room.on_presence_sync(|| println!("synced"))
//!     .on_presence_join(|key, _current, new| println!("join {key}: {new:?}"))
//!     .on_presence_leave(|key, _current, left| println!("leave {key}: {left:?}"));
//! # }
//! ```
//!
//! or a [`Stream`](futures_util::Stream) of [`PresenceChange`]s:
//!
//! ```no_run
//! # async fn demo(room: roster_client::RealtimeChannel) {
//! use futures_util::StreamExt;
//! use roster_client::PresenceChange;
//!
//! let mut changes = room.presence_changes();
//! while let Some(change) = changes.next().await {
//!     if let PresenceChange::Join { key, .. } = &change {
//!         println!("{key} joined");
//!     }
//! }
//! # }
//! ```
//!
//! # 6. Broadcast
//!
//! ```no_run
//! # async fn demo(client: roster_client::RealtimeClient) -> Result<(), roster_client::Error> {
//! use roster_client::ChannelOptions;
//!
//! let room = client.channel_with("cursors", ChannelOptions::default().broadcast_ack(true));
//! room.on_broadcast("cursor", |msg| println!("cursor at {}", msg.payload));
//! room.subscribe().await.into_result()?;
//! room.send_broadcast("cursor", &serde_json::json!({ "x": 10, "y": 20 })).await?;
//! client.disconnect().await;
//! # Ok(()) }
//! ```
//!
//! Everything together: `examples/presence.rs`. Modules, one concern each:
//! `client` (the handle), `channel` (channel handle, callbacks), `socket`
//! (the background task: connection, heartbeat, reconnection), `router`
//! (joins, pushes, replies, dispatch), `presence`, `broadcast`, `options`,
//! `tls`, `endpoint` (URL), `error`.

#![warn(missing_docs)]

mod broadcast;
mod channel;
mod client;
mod command;
mod endpoint;
mod error;
mod link;
mod options;
mod presence;
mod router;
mod shared;
mod socket;
mod tls;

pub use broadcast::BroadcastMessage;
pub use channel::RealtimeChannel;
pub use client::RealtimeClient;
pub use error::{Error, TlsReason};
pub use options::{ChannelOptions, ClientOptions};
pub use presence::{Presence, PresenceChange, PresenceChanges, PresenceState};
/// The serializer version, re-exported from `roster-protocol`.
///
/// ```
/// assert_eq!(roster_client::Vsn::V1.as_str(), "1.0.0");
/// ```
pub use roster_protocol::Vsn;
pub use shared::ChannelStatus;
pub use tls::TlsRoots;
