//! The node: shared state, and starting / stopping it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use roster_presence::RefGen;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::admission::Admission;
use crate::access::auth::Auth;
use crate::channel::Registry;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::store::redis::Cluster;
use crate::transport::http;
use crate::transport::tls::Tls;
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

/// A started node.
pub struct Running {
    pub addr: SocketAddr,
    pub server: Arc<Server>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stop accepting, close every socket (their presences leave), and wait
    /// up to `grace` for the cleanup; then give pending webhook events up to
    /// a second more (at most `grace`) to go out.
    pub async fn shutdown(self, grace: Duration) {
        self.server.shutdown.cancel();
        self.server.tasks.close();
        let _ = tokio::time::timeout(grace, self.server.tasks.wait()).await;
        if let Some(cluster) = self.server.registry.cluster() {
            cluster.leave(grace).await;
        }
        if let Some(webhooks) = &self.server.webhooks {
            webhooks.finish(grace.min(Duration::from_secs(1))).await;
        }
        let _ = tokio::time::timeout(grace, self.handle).await;
    }
}

/// Bind `settings.listen` and serve until [`Running::shutdown`]. With a
/// cluster configured, Redis must be reachable.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let cluster = match &settings.cluster {
        Some(c) => {
            let cluster = Cluster::connect(c.clone()).await?;
            cluster.register().await?;
            Some(cluster)
        }
        None => None,
    };
    // A broken pair stops startup here, before anything listens.
    let tls = settings.tls.as_ref().map(Tls::new).transpose()?;
    let listener = TcpListener::bind(&settings.listen).await?;
    let addr = listener.local_addr()?;
    let server = Server::with_cluster(settings, cluster);
    if let Some(cluster) = server.registry.cluster() {
        cluster.start(server.shutdown.clone());
    }
    let acceptor = tls.map(|tls| {
        tls.clone().watch(server.shutdown.clone());
        tls.acceptor()
    });
    let handle = tokio::spawn(http::serve_with(listener, server.clone(), acceptor));
    let upkeep = server.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = every.tick() => upkeep.metrics.upkeep(),
                _ = upkeep.shutdown.cancelled() => break,
            }
        }
    });
    Ok(Running {
        addr,
        server,
        handle,
    })
}
