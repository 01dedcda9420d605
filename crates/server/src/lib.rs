//! Roster: a Supabase-compatible Realtime Presence server.
//!
//! Layers, outside in:
//! * [`http`]: routes and the WebSocket upgrade (credentials, `vsn`);
//! * [`rest`]: REST broadcast;
//! * [`websocket`]: the handshake, tungstenite reading, [`frame_writer`] writing;
//! * [`connection`]: one task per socket, the I/O loop and timeouts;
//! * [`session`]: what each client message does on that socket;
//! * [`channel`]: the channel registry, presence and fan-out;
//! * [`outbound`]: the bounded per-socket queue of shared frames;
//! * [`cluster`]: several nodes sharing presence and broadcasts through Redis;
//! * [`webhooks`]: batched, signed POSTs of presence keys joining and leaving.
//!
//! The protocol lives in `roster-protocol`, presence logic in `roster-presence`.

pub mod admission;
pub mod auth;
pub mod authz;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod demo;
pub mod frame_writer;
pub mod http;
pub mod last_seen;
pub mod metrics;
pub mod outbound;
pub mod presence_api;
pub mod rest;
pub mod server;
pub mod session;
pub mod tls;
pub mod webhooks;
pub mod websocket;
pub mod when_woken;

pub use config::Settings;
pub use server::{start, Running, Server};
