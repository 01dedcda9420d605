//! Everything the sockets of one node share, built from its settings.
//! Starting and stopping it is [`crate::node`]'s.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::admission::Admission;
use crate::channel::Registry;
use crate::metrics::Metrics;
use crate::session::{Access, SessionContext};
use crate::settings::Settings;
use crate::store::Backend;
use crate::webhooks::{self, Webhooks};

/// Everything the sockets of one node share.
pub struct Server {
    pub settings: Settings,
    /// Keys, JWT checks and private-channel policies (connect, REST, sessions).
    pub access: Arc<Access>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub admission: Arc<Admission>,
    /// What each socket's session is built from: the narrow handles above
    /// (shared, not copied), the limits, refs and presence keys.
    pub sessions: Arc<SessionContext>,
    /// Presence webhooks' sink, when configured (the registry and the
    /// backend emit into it; shutdown flushes it).
    pub webhooks: Option<Arc<Webhooks>>,
    /// Cancelled on shutdown: every socket closes and cleans up.
    pub shutdown: CancellationToken,
    /// Socket tasks, so shutdown can wait for their cleanup.
    pub tasks: TaskTracker,
}

impl Server {
    /// A node whose presence lives in `backend` (`store::connect`). With
    /// webhooks configured, call this within a Tokio runtime: it starts
    /// their delivery task.
    pub fn new(settings: Settings, backend: Arc<dyn Backend>) -> Arc<Server> {
        let coalesce = settings.presence_coalesce;
        let frame_limit = settings.presence_frame_bytes;
        let broadcast_rates = crate::channel::BroadcastRates {
            per_second: settings.limits.channel_broadcasts_per_second,
            bytes_per_second: settings.limits.channel_broadcast_bytes_per_second,
        };
        let metrics = Arc::new(Metrics::new());
        let webhooks = settings
            .webhooks
            .as_ref()
            .map(|w| webhooks::start(w, &metrics));
        backend.report_to(webhooks.clone());
        let registry = Arc::new(
            Registry::new(metrics.clone(), backend, webhooks.clone())
                .with_coalesce(coalesce)
                .with_frame_limit(frame_limit)
                .with_broadcast_rates(broadcast_rates),
        );
        let access = Arc::new(Access::from_settings(&settings));
        let admission = Arc::<Admission>::default();
        let shutdown = CancellationToken::new();
        let sessions = Arc::new(SessionContext::new(
            &settings,
            access.clone(),
            registry.clone(),
            admission.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        Arc::new(Server {
            settings,
            access,
            registry,
            metrics,
            admission,
            sessions,
            webhooks,
            shutdown,
            tasks: TaskTracker::new(),
        })
    }
}
