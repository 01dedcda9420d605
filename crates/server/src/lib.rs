//! Roster: a Supabase-compatible Realtime Presence server.
//!
//! The tree shows the layers, outside in; each imports only from the
//! layers below it:
//! * `transport`: HTTP routes, the WebSocket upgrade, TLS, one task per
//!   socket (`transport::connection`) and its queue of shared frames;
//! * `api`: REST broadcast, the presence API, the demo page;
//! * `server`: the state one node's sockets share, and the narrow
//!   handles each session is built from;
//! * `session`: what each client message does on its socket, knowing its
//!   node only through a `SessionContext`;
//! * `channel`: the channel registry, presence, fan-out;
//! * `store`: where presence lives and a channel's changes are applied:
//!   here (one node, last seen in memory), or in Redis for several nodes;
//! * `access`: keys and JWTs, private-channel policies, caps and rates;
//! * `webhooks`: batched, signed POSTs of presence keys joining and leaving;
//! * `settings`: flags, environment and the TOML file, resolved once.
//!
//! `node` starts a server and stops it; `metrics` sits between
//! webhooks and settings. The protocol lives in `roster-protocol`,
//! presence logic in `roster-presence`.
//!
//! Only what the binary, the integration tests and the examples need is
//! public; the layers are private modules.

mod access;
mod api;
mod channel;
mod metrics;
mod node;
mod server;
mod session;
pub mod settings;
mod store;
mod transport;
mod webhooks;

#[cfg(test)]
mod import_graph;

pub use node::{start, Running};
pub use server::Server;
pub use settings::Settings;

// What the integration tests and examples reach past the binary's surface.
pub use access::auth::MAX_NUMERIC_DATE;
pub use store::last_seen::LastSeen;
pub use transport::tls::provider as tls_provider;
