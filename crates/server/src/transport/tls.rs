//! TLS on the listener (`--tls-cert` / `--tls-key`), with the certificate
//! pair reloaded on SIGHUP and when either file changes. A new pair serves
//! new connections only; established ones keep the session they made. A
//! pair that fails to load is logged and the old one kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::settings::TlsSettings;

/// How often the files' modification times are compared.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// ring, chosen explicitly: no process-wide default provider is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a PEM certificate chain and its private key, and check they match.
pub fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("TLS certificate {}: no certificate in it", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("TLS key {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, key_der, &provider())
        .map_err(|e| anyhow::anyhow!("TLS pair {} / {}: {e}", cert.display(), key.display()))
}

/// The current pair, swapped on reload; every handshake reads it.
#[derive(Debug)]
struct Resolver(parking_lot::RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// The listener's TLS: an acceptor, and what reloading needs.
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
    cert: PathBuf,
    key: PathBuf,
}

impl Tls {
    /// Load the pair; an error here stops startup.
    pub fn new(settings: &TlsSettings) -> anyhow::Result<Arc<Tls>> {
        let pair = load_pair(&settings.cert, &settings.key)?;
        let resolver = Arc::new(Resolver(parking_lot::RwLock::new(Arc::new(pair))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // HTTP/1.1 only, as the plain listener (WebSocket upgrades need it).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            cert: settings.cert.clone(),
            key: settings.key.clone(),
        }))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Load the files again; on success new handshakes use the new pair.
    pub fn reload(&self) -> anyhow::Result<()> {
        let pair = load_pair(&self.cert, &self.key)?;
        *self.resolver.0.write() = Arc::new(pair);
        Ok(())
    }

    fn stamps(&self) -> [Option<(SystemTime, u64)>; 2] {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        };
        [stamp(&self.cert), stamp(&self.key)]
    }

    fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(()) => tracing::info!(why, cert = %self.cert.display(), "TLS certificate reloaded"),
            Err(e) => {
                tracing::warn!(why, error = %e, "TLS certificate reload failed; keeping the old one")
            }
        }
    }

    /// Reload on SIGHUP and when the files change, until `shutdown`.
    pub fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut seen = self.stamps();
            let mut every = tokio::time::interval(POLL_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<Option<()>>();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = hangup => {
                        seen = self.stamps();
                        self.reload_logged("SIGHUP");
                    }
                    _ = every.tick() => {
                        let now = self.stamps();
                        // A half-written pair fails to load and is retried
                        // on the next change (the second file's write).
                        if now != seen {
                            seen = now;
                            self.reload_logged("files changed");
                        }
                    }
                }
            }
        });
    }
}
