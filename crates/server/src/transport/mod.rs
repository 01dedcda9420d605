//! Transport: bytes in and out. The HTTP routes and the WebSocket upgrade,
//! TLS, and one task per socket, which writes the socket's queue of shared
//! frames ([`crate::channel::outbound`]). Nothing here knows what a channel or a presence is beyond
//! handing text to the socket's [`crate::session::Session`].

pub mod connection;
pub mod frame_writer;
pub mod http;
pub mod tls;
pub mod websocket;
pub mod when_woken;
