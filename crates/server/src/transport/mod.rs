//! Transport: bytes in and out. The HTTP routes and the WebSocket upgrade,
//! TLS, one task per socket, and the bounded queue of shared frames each
//! socket writes. Nothing here knows what a channel or a presence is beyond
//! handing text to the socket's [`crate::session::Session`].

pub mod connection;
pub mod frame_writer;
pub mod http;
pub mod outbound;
pub mod tls;
pub mod websocket;
pub mod when_woken;
