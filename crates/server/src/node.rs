//! Starting and stopping a node: connect to its store, bind, serve the
//! transport, and on shutdown close every socket and flush what is owed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::server::Server;
use crate::settings::Settings;
use crate::store;
use crate::transport::http;
use crate::transport::tls::Tls;

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
        self.server.registry.backend().leave(grace).await;
        if let Some(webhooks) = &self.server.webhooks {
            webhooks.finish(grace.min(Duration::from_secs(1))).await;
        }
        let _ = tokio::time::timeout(grace, self.handle).await;
    }
}

/// Bind `settings.listen` and serve until [`Running::shutdown`]. With a
/// cluster configured, Redis must be reachable.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let backend = store::connect(&settings).await?;
    // A broken pair stops startup here, before anything listens.
    let tls = settings.tls.as_ref().map(Tls::new).transpose()?;
    let listener = TcpListener::bind(&settings.listen).await?;
    let addr = listener.local_addr()?;
    let server = Server::new(settings, backend);
    server.registry.backend().start(server.shutdown.clone());
    let acceptor = tls.map(|tls| {
        tls.clone().watch(server.shutdown.clone());
        tls.acceptor()
    });
    let handle = tokio::spawn(http::serve(listener, server.clone(), acceptor));
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
