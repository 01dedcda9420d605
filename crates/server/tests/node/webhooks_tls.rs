//! Webhooks to an https receiver (a tiny hyper + tokio-rustls server with a
//! certificate of a test CA): delivered when roster trusts that CA
//! (`--webhook-ca-file`), refused and counted as failed attempts when it
//! does not (the default webpki roots), or when the name does not match.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::certs::{TempDir, TestCa};
use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use roster_server::settings::WebhookSettings;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const SECRET: &str = "whsec_tls_test";

/// An HTTPS receiver that records each request body.
struct HttpsReceiver {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
    handshakes_failed: Arc<Mutex<usize>>,
}

impl HttpsReceiver {
    async fn start(cert_pem: &str, key_pem: &str) -> HttpsReceiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(roster_server::tls_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = HttpsReceiver {
            port: listener.local_addr().unwrap().port(),
            bodies: Arc::default(),
            handshakes_failed: Arc::default(),
        };
        let (bodies, failed) = (receiver.bodies.clone(), receiver.handshakes_failed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, bodies, failed) = (acceptor.clone(), bodies.clone(), failed.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        *failed.lock() += 1;
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let bodies = bodies.clone();
                            async move {
                                let raw = req.into_body().collect().await?.to_bytes();
                                bodies.lock().push(serde_json::from_slice(&raw).unwrap());
                                Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        receiver
    }

    fn events(&self) -> Vec<String> {
        let bodies = self.bodies.lock();
        bodies
            .iter()
            .flat_map(|b| b["events"].as_array().unwrap().clone())
            .map(|e| {
                format!(
                    "{} {}",
                    e["event"].as_str().unwrap(),
                    e["key"].as_str().unwrap()
                )
            })
            .collect()
    }
}

async fn roster_posting_to(
    url: String,
    ca_file: Option<std::path::PathBuf>,
) -> roster_server::Running {
    start_with(move |s| {
        s.webhooks = Some(WebhookSettings {
            url,
            ca_file,
            secret: SECRET.into(),
            batch: Duration::from_millis(10),
            max_batch: 100,
            queue: 100,
            max_retry: Duration::from_secs(60),
        })
    })
    .await
}

async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn track_alice(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr, 2).await;
    let join_ref = c.join("realtime:tls-hooks", Some("alice")).await;
    c.track(&join_ref, "realtime:tls-hooks", json!({"user": "alice"}))
        .await;
    c
}

#[tokio::test]
async fn webhooks_reach_an_https_receiver_of_a_trusted_ca_only() {
    let ca = TestCa::new("Webhook test CA");
    let dir = TempDir::new("hooks-tls");
    let ca_file = dir.write("ca.pem", &ca.pem);
    let (cert, key) = ca.server_pair(&["localhost"]);
    let receiver = HttpsReceiver::start(&cert, &key).await;
    let url = format!("https://localhost:{}/hooks", receiver.port);

    // Trusting the test CA: delivered.
    let trusting = roster_posting_to(url.clone(), Some(ca_file.clone())).await;
    let _alice = track_alice(trusting.addr).await;
    let deadline = Instant::now() + WAIT;
    while receiver.events() != ["member_join alice"] {
        assert!(Instant::now() < deadline, "got {:?}", receiver.events());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Counted once roster has the answer, just after the body arrived.
    let ok = r#"roster_webhook_deliveries_total{outcome="ok"}"#;
    while metric(trusting.addr, ok).await < 1.0 {
        assert!(Instant::now() < deadline, "the delivery was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // With the default (public) roots the test CA is untrusted; with the
    // CA but a name the certificate lacks, the hostname check fails.
    let retry = r#"roster_webhook_deliveries_total{outcome="retry"}"#;
    let by_ip = format!("https://127.0.0.1:{}/hooks", receiver.port);
    for (url, ca_file) in [(url, None), (by_ip, Some(ca_file))] {
        let refusing = roster_posting_to(url, ca_file).await;
        let _alice = track_alice(refusing.addr).await;
        let deadline = Instant::now() + WAIT;
        while metric(refusing.addr, retry).await < 1.0 {
            assert!(Instant::now() < deadline, "no failed attempt counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metric(refusing.addr, ok).await, 0.0);
        refusing.shutdown(Duration::from_millis(200)).await;
    }
    assert_eq!(
        receiver.events(),
        ["member_join alice"],
        "nothing more got through"
    );
    assert!(*receiver.handshakes_failed.lock() >= 2);
    trusting.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn an_unusable_webhook_ca_file_stops_startup() {
    let dir = TempDir::new("hooks-ca");
    let empty = dir.write("empty.pem", "");
    let err = roster_server::settings::ServeArgs {
        webhook_url: Some("https://localhost/hooks".into()),
        webhook_secret: Some(SECRET.into()),
        webhook_ca_file: Some(empty),
        ..Default::default()
    }
    .resolve()
    .unwrap_err();
    assert!(err.to_string().contains("no usable certificate"), "{err}");
}
