//! The HTTP APIs beside the socket: REST broadcast, the presence API and
//! the demo page. Each checks its credential with [`crate::access`] and acts
//! through the channel registry, as a socket's session would.

pub mod broadcast;
pub mod demo;
pub mod presence;
