//! Everything the sockets of one node share, built from its settings.
//! Starting and stopping it is [`crate::node`]'s.

use std::sync::Arc;

use roster_presence::RefGen;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::admission::Admission;
use crate::access::auth::Auth;
use crate::channel::Registry;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::store::redis::Cluster;
use crate::webhooks::{self, Webhooks};

/// Everything the sockets of one node share.
pub struct Server {
    pub settings: Settings,
    pub auth: Auth,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub admission: Arc<Admission>,
    pub refs: RefGen,
    /// Presence webhooks' sink, when configured (the registry and the
    /// cluster emit into it; shutdown flushes it).
    pub webhooks: Option<Arc<Webhooks>>,
    /// Cancelled on shutdown: every socket closes and cleans up.
    pub shutdown: CancellationToken,
    /// Socket tasks, so shutdown can wait for their cleanup.
    pub tasks: TaskTracker,
    uuid_node: [u8; 6],
}

impl Server {
    pub fn new(settings: Settings) -> Arc<Server> {
        Self::with_cluster(settings, None)
    }

    /// With webhooks configured, call this within a Tokio runtime: it starts
    /// their delivery task.
    pub fn with_cluster(settings: Settings, cluster: Option<Arc<Cluster>>) -> Arc<Server> {
        let coalesce = settings.presence_coalesce;
        let frame_limit = settings.presence_frame_bytes;
        let broadcast_rates = crate::channel::BroadcastRates {
            per_second: settings.limits.channel_broadcasts_per_second,
            bytes_per_second: settings.limits.channel_broadcast_bytes_per_second,
        };
        let random = uuid::Uuid::new_v4();
        let bytes = random.as_bytes();
        let mut uuid_node = [0u8; 6];
        uuid_node.copy_from_slice(&bytes[..6]);
        // Multicast bit set: a random node id, not a MAC address (RFC 4122 §4.5).
        uuid_node[0] |= 0x01;
        let metrics = Arc::new(Metrics::new());
        let features = &settings.presence_features;
        // In a cluster last seen lives in Redis, so every node answers the same.
        let last_seen = match &cluster {
            Some(cluster) => {
                cluster.set_last_seen(features.last_seen_keys, features.last_seen_max_age);
                None
            }
            None => crate::channel::last_seen::LastSeen::new(
                features.last_seen_keys,
                features.last_seen_max_age,
            ),
        };
        let webhooks = settings
            .webhooks
            .as_ref()
            .map(|w| webhooks::start(w, &metrics));
        if let Some(cluster) = &cluster {
            cluster.set_webhooks(webhooks.clone());
        }
        Arc::new(Server {
            auth: Auth::with_options(settings.keys.clone(), settings.jwt.clone()),
            settings,
            registry: Registry::new(metrics.clone(), cluster, webhooks.clone())
                .with_coalesce(coalesce)
                .with_frame_limit(frame_limit)
                .with_last_seen(last_seen)
                .with_broadcast_rates(broadcast_rates),
            webhooks,
            metrics,
            admission: Arc::default(),
            refs: RefGen::new(u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]])),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            uuid_node,
        })
    }

    /// A presence key for a join that named none: a UUID v1, like rt.
    pub fn generate_key(&self) -> String {
        uuid::Uuid::now_v1(&self.uuid_node).to_string()
    }
}
