//! A tiny webhook receiver for the tests: records every request, checks
//! its signature as a receiver should, answers a status the test sets, and
//! can go down and come back on the same port.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;

use crate::common::now;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub content_type: String,
    pub delivery: String,
    pub timestamp: String,
    pub signature: String,
    pub raw: Bytes,
    /// The receiver's signature and timestamp checks passed.
    pub verified: bool,
    /// What the receiver answered.
    pub status: u16,
}

impl Request {
    pub fn events(&self) -> Vec<Value> {
        let body: Value = serde_json::from_slice(&self.raw).expect("a JSON body");
        body["events"].as_array().expect("an events array").clone()
    }
}

/// Check a request as a receiver should: HMAC-SHA256 over
/// "<timestamp>.<body>", compared in constant time, and a timestamp within
/// 5 minutes of now.
pub fn verify(secret: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(ts) = timestamp.parse::<u64>() else {
        return false;
    };
    if now().abs_diff(ts) > 300 || hex.len() != 64 {
        return false;
    }
    let Some(expected) = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// A tiny HTTP receiver that records every request, checks its signature
/// (401 when it fails) and otherwise answers `status`; it can go down
/// (refusing connections, cutting open ones) and come back on the same port.
pub struct Receiver {
    pub addr: SocketAddr,
    secret: String,
    log: Arc<Mutex<Vec<Request>>>,
    status: Arc<AtomicU16>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start(secret: &str) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            secret: secret.into(),
            log: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            server: None,
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&mut self, listener: TcpListener) {
        let (log, status, secret) = (self.log.clone(), self.status.clone(), self.secret.clone());
        self.server = Some(tokio::spawn(async move {
            // Dropped with this task when it is aborted: cuts every connection.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let (log, status, secret) = (log.clone(), status.clone(), secret.clone());
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(req, secret.clone(), log.clone(), status.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// A URL of its own per sender (`/hooks/<name>`), to tell senders apart.
    pub fn url_for(&self, name: &str) -> String {
        format!("http://{}/hooks/{name}", self.addr)
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Refuse connections and cut the open ones.
    pub async fn down(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listen again on the same port.
    pub async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("port free again");
        self.serve(listener);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().clone()
    }

    /// The events of the requests answered 200, in order.
    pub fn delivered(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.status == 200)
            .flat_map(Request::events)
            .collect()
    }
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    secret: String,
    log: Arc<Mutex<Vec<Request>>>,
    status: Arc<AtomicU16>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (content_type, delivery, timestamp, signature) = (
        header("content-type"),
        header("x-roster-delivery"),
        header("x-roster-timestamp"),
        header("x-roster-signature"),
    );
    // Anything but a POST is recorded with its method, which no path check accepts.
    let path = if req.method() == hyper::Method::POST {
        req.uri().path().to_owned()
    } else {
        format!("{} {}", req.method(), req.uri().path())
    };
    let raw = req.into_body().collect().await.unwrap().to_bytes();
    let verified = verify(&secret, &timestamp, &raw, &signature);
    let answer = if verified {
        status.load(Ordering::SeqCst)
    } else {
        401
    };
    log.lock().push(Request {
        path,
        content_type,
        delivery,
        timestamp,
        signature,
        raw,
        verified,
        status: answer,
    });
    Ok(hyper::Response::builder()
        .status(answer)
        .body(Full::new(Bytes::from_static(b"noted")))
        .unwrap())
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}
