//! Pure presence state, with no I/O and no clock.
//!
//! Two halves that must agree, and are property-tested against each other:
//!
//! * [`ChannelPresence`] is the server's truth for one channel: who tracks what,
//!   under which key. Every change returns the [`Diff`] to send to the members.
//! * [`ClientPresence`] is what a client builds from the `presence_state` and
//!   `presence_diff` messages it receives: the sync algorithm of Phoenix's
//!   `presence.js`, used by the Rust client and by the tests.
//!
//! Data flows one way: server core → [`Diff`] → (wire) → client core.

mod client;
mod meta;
mod refs;
mod tracker;

pub use client::{ClientPresence, PresenceEvent, View};
pub use meta::{Meta, State, StateError};
pub use refs::RefGen;
pub use tracker::{
    meta_weight, ChannelPresence, Diff, MemberId, MetaUpdate, SnapshotParts, Updates, META_OVERHEAD,
};
