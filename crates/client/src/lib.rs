//! A Rust client for Supabase Realtime Presence and Broadcast, for
//! [Roster](https://github.com/) and Supabase Realtime alike.
//!
//! Shaped like the Supabase Presence guide: create a client, get a channel,
//! register `sync` / `join` / `leave` callbacks, subscribe, then track.
//! Speaks the Phoenix protocol with serializer vsn 2.0.0 (default) or 1.0.0,
//! sends heartbeats, reconnects with backoff (1, 2, 5, 10 s), rejoins its
//! channels and, unless switched off, tracks the last tracked payload again.
//! Presence state is computed by [`roster_presence::ClientPresence`], the
//! phx-js sync algorithm the Roster server is tested against.
//!
//! ```no_run
//! use roster_client::{ChannelOptions, RealtimeClient};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), roster_client::Error> {
//!     let client = RealtimeClient::new("http://127.0.0.1:4000", "sb_publishable_dev")?;
//!     let room = client.channel_with("room_01", ChannelOptions::default().presence_key("alice"));
//!     room.on_presence_sync({
//!         let room = room.clone();
//!         move || println!("sync: {:?}", room.presence_state())
//!     })
//!     .on_presence_join(|key, _current, new| println!("join {key}: {new:?}"))
//!     .on_presence_leave(|key, _current, left| println!("leave {key}: {left:?}"));
//!
//!     room.subscribe().await.into_result()?;
//!     room.track(&serde_json::json!({"online_at": "2026-05-01T10:00:00Z"})).await?;
//!     Ok(())
//! }
//! ```
//!
//! Modules, one concern each: `client` (the handle), `channel` (channel
//! handle, callbacks), `socket` (the background task: connection,
//! heartbeat, reconnection), `router` (joins, pushes, replies, dispatch),
//! `presence`, `broadcast`, `options`, `endpoint` (URL), `error`.

#![warn(missing_docs)]

mod broadcast;
mod channel;
mod client;
mod command;
mod endpoint;
mod error;
mod options;
mod presence;
mod router;
mod socket;
mod tls;

pub use broadcast::BroadcastMessage;
pub use channel::{ChannelStatus, RealtimeChannel};
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
pub use tls::TlsRoots;
