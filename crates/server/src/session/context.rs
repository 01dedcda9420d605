//! What a session needs from its node, and nothing more: narrow handles,
//! built once per node and shared by every session through one `Arc`.
//!
//! A session sees its limits, who may do what ([`Access`]), the shared
//! rates ([`Admission`]), the channel [`Registry`], how presence refs and
//! keys are made, the metrics, and whether the node is shutting down. It
//! never sees the node's transport, webhooks or settings as a whole, so a
//! test can build one from a handful of parts and drive it without sockets.

use std::sync::Arc;
use std::time::Duration;

use roster_presence::{RefGen, Updates};
use tokio_util::sync::CancellationToken;

use crate::access::admission::Admission;
use crate::access::auth::{Auth, AuthError, Credential};
use crate::access::authz::{self, Rights};
use crate::channel::Registry;
use crate::metrics::Metrics;
use crate::settings::{Limits, Policy, Settings};

/// Who may do what: the node's keys and JWT checks, and the policies of
/// its private channels.
pub struct Access {
    pub auth: Auth,
    pub policies: Vec<Policy>,
    /// Public channels are refused.
    pub private_only: bool,
}

impl Access {
    pub fn from_settings(settings: &Settings) -> Access {
        Access {
            auth: Auth::with_options(settings.keys.clone(), settings.jwt.clone()),
            policies: settings.policies.clone(),
            private_only: settings.private_only,
        }
    }

    /// A JWT presented in a join or a refresh.
    pub fn verify_jwt(&self, token: &str) -> Result<Credential, AuthError> {
        self.auth.verify_jwt(token)
    }

    /// The rights `cred` has in the private channel named `name` (the topic
    /// without `realtime:`).
    pub fn rights(&self, name: &str, cred: &Credential) -> Rights {
        authz::rights(&self.policies, name, cred)
    }
}

/// Presence keys for joins that name none: UUID v1s under a random node
/// id, like rt's.
pub struct KeyGen {
    node: [u8; 6],
}

impl KeyGen {
    pub fn random() -> KeyGen {
        let mut node = [0u8; 6];
        node.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..6]);
        // Multicast bit set: a random node id, not a MAC address (RFC 4122 §4.5).
        node[0] |= 0x01;
        KeyGen { node }
    }

    pub fn next(&self) -> String {
        uuid::Uuid::now_v1(&self.node).to_string()
    }
}

/// How a session's presences behave by default.
#[derive(Debug, Clone, Copy)]
pub struct PresenceDefaults {
    /// For joins without `config.presence.updates`.
    pub updates: Updates,
    /// How long a vanished socket's presences stay (zero: they leave at once).
    pub grace: Duration,
}

/// Everything a [`super::Session`] uses of its node.
pub struct SessionContext {
    pub limits: Limits,
    pub access: Arc<Access>,
    pub admission: Arc<Admission>,
    pub registry: Arc<Registry>,
    pub presence: PresenceDefaults,
    /// `phx_ref`s of the presences tracked through this node.
    pub refs: RefGen,
    pub keys: KeyGen,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the node shuts down: presences then leave at once.
    pub shutdown: CancellationToken,
}

impl SessionContext {
    /// The node's shared parts, with the rest taken from `settings`.
    pub fn new(
        settings: &Settings,
        access: Arc<Access>,
        registry: Arc<Registry>,
        admission: Arc<Admission>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> SessionContext {
        let salt = uuid::Uuid::new_v4().as_bytes()[..4]
            .iter()
            .fold(0u32, |salt, b| salt << 8 | u32::from(*b));
        SessionContext {
            limits: settings.limits.clone(),
            access,
            admission,
            registry,
            presence: PresenceDefaults {
                updates: settings.presence_features.updates,
                grace: settings.presence_grace,
            },
            refs: RefGen::new(salt),
            keys: KeyGen::random(),
            metrics,
            shutdown,
        }
    }
}
