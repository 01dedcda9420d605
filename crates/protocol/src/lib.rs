//! The Supabase Realtime wire protocol (Phoenix Channels underneath).
//!
//! * [`Vsn`]: the two serializers, picked per connection by the `vsn` query
//!   parameter: 1.0.0 sends JSON objects, 2.0.0 JSON arrays.
//! * [`decode`]: a text frame → [`Frame`] (the five envelope fields), with
//!   clear [`DecodeError`]s; [`ClientEvent`] then types what the client asked.
//! * [`Outgoing`]: the five fields of a server frame; encoded once per vsn so
//!   fan-out can share the bytes.
//!
//! * [`push`]: what a client sends (join payloads, presence, broadcast,
//!   heartbeats), typed and encoded for either vsn.
//! * [`websocket`]: WebSocket frames in and out of bytes, with
//!   `permessage-deflate`, for the server's reader and the bench's clients.
//!
//! No I/O here; the server and the Rust client both build on it.

mod broadcast;
mod decode;
mod encode;
mod event;
mod join;
pub mod push;
mod vsn;
pub mod websocket;

pub use broadcast::{
    decode_binary, decode_user_broadcast, BinaryBroadcast, BinaryError, BinaryPush, BroadcastBody,
    Encoded, UserBroadcast,
};
pub use decode::{decode, reply_address, DecodeError, Frame};
pub use encode::{Outgoing, Reply};
pub use event::{ClientEvent, PresenceAction};
pub use join::{JoinConfig, PresenceUpdates};
pub use vsn::{UnsupportedVsn, Vsn};

/// Every channel topic starts with this; `supabase.channel('x')` joins `realtime:x`.
pub const TOPIC_PREFIX: &str = "realtime:";
/// The reserved topic of heartbeats.
pub const PHOENIX_TOPIC: &str = "phoenix";

/// Event names, as on the wire.
pub mod events {
    pub const HEARTBEAT: &str = "heartbeat";
    pub const JOIN: &str = "phx_join";
    pub const LEAVE: &str = "phx_leave";
    pub const REPLY: &str = "phx_reply";
    pub const CLOSE: &str = "phx_close";
    pub const ERROR: &str = "phx_error";
    pub const PRESENCE: &str = "presence";
    pub const PRESENCE_STATE: &str = "presence_state";
    pub const PRESENCE_DIFF: &str = "presence_diff";
    /// Roster extension, for `count_only` members: `{"keys": n, "presences": m}`.
    pub const PRESENCE_COUNT: &str = "presence_count";
    pub const BROADCAST: &str = "broadcast";
    pub const ACCESS_TOKEN: &str = "access_token";
    pub const SYSTEM: &str = "system";
}
