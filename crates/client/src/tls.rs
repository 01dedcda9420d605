//! TLS for `wss://`: which certificates are trusted, and what a failed
//! handshake means. Certificates and hostnames are always verified.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::error::{Error, TlsReason};

/// Which certificate authorities a `wss://` server's certificate may chain
/// to. There is no setting that skips verification.
///
/// ```
/// use roster_client::{ClientOptions, TlsRoots};
///
/// let o = ClientOptions::default().tls_roots(TlsRoots::Native);
/// let o = ClientOptions::default().trust_only_ca_file("ca.pem");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsRoots {
    /// Mozilla's roots, built in (the `webpki-roots` crate). The default.
    #[default]
    WebPki,
    /// The operating system's trust store (`rustls-native-certs`).
    Native,
    /// Only the CA certificates in this PEM file (a private CA, a test CA);
    /// the public roots are then *not* trusted.
    OnlyCaFile(PathBuf),
}

fn config_error(message: String) -> Error {
    Error::Tls {
        reason: TlsReason::Config,
        message,
    }
}

/// The rustls client configuration for `roots`.
pub(crate) fn client_config(roots: &TlsRoots) -> Result<Arc<ClientConfig>, Error> {
    let mut store = RootCertStore::empty();
    match roots {
        TlsRoots::WebPki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        TlsRoots::Native => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(config_error(format!(
                    "no usable certificate in the platform's trust store ({:?})",
                    found.errors
                )));
            }
        }
        TlsRoots::OnlyCaFile(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| config_error(format!("CA file {}: {e}", path.display())))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(config_error(format!(
                    "CA file {}: no usable certificate",
                    path.display()
                )));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A failed handshake with `host`, as an [`Error::Tls`] that says why.
pub(crate) fn handshake_error(host: &str, e: std::io::Error) -> Error {
    let Some(rustls_error) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return Error::Connection(format!("TLS handshake with {host}: {e}"));
    };
    let reason = match rustls_error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsReason::WrongHostname
            }
            CertificateError::UnknownIssuer => TlsReason::UntrustedCertificate,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                TlsReason::Expired
            }
            _ => TlsReason::InvalidCertificate,
        },
        _ => TlsReason::Handshake,
    };
    let message = match reason {
        TlsReason::WrongHostname => {
            format!("the server's certificate is not valid for {host}: {rustls_error}")
        }
        TlsReason::UntrustedCertificate => format!(
            "the server's certificate ({host}) is not signed by a trusted CA: {rustls_error}"
        ),
        _ => format!("TLS handshake with {host} failed: {rustls_error}"),
    };
    Error::Tls { reason, message }
}
