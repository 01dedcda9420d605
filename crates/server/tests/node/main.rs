//! One node, over real sockets: the protocol as the official clients speak
//! it, auth and limits, hostile input, presence and broadcast behaviour,
//! the HTTP APIs, webhooks and operability. One binary, one module per
//! concern (it compiles the shared harness once).

#[path = "../certs/mod.rs"]
mod certs;
#[path = "../common/mod.rs"]
mod common;
#[path = "../webhook_receiver/mod.rs"]
mod webhook_receiver;

mod auth_limits;
mod broadcast;
mod checklist;
mod grace;
mod hostile;
mod large_rooms;
mod operability;
mod presence_api;
mod private_channels;
mod quiet_updates;
mod robustness;
mod webhooks;
mod webhooks_tls;
