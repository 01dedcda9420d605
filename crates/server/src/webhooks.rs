//! Presence webhooks: key-level `member_join` / `member_leave` per channel,
//! POSTed in signed batches to a configured URL. Emitting never blocks
//! presence.
//!
//! # Events
//!
//! A key *joins* a channel when its first meta comes in and *leaves* when
//! its last meta goes (untrack, leave, a dropped socket, a reaped node);
//! a second socket under the same key, or a state update, sends nothing.
//! In a cluster each change is reported by one node only.
//!
//! # Requests
//!
//! ```text
//! POST <webhook_url>
//! content-type: application/json
//! x-roster-delivery: 5b0e7a52-…      (one id per batch; kept on retries)
//! x-roster-timestamp: 1700000000     (Unix seconds of this attempt)
//! x-roster-signature: sha256=<hex>   (see below)
//!
//! {"events":[{"event":"member_join","channel":"room1","private":false,"key":"alice","at_ms":1700000000123}]}
//! ```
//!
//! The signature is `hex(HMAC-SHA256(secret, "<timestamp>.<body>"))`: the
//! timestamp header's value, a `.`, and the raw body bytes, as Stripe does.
//! A receiver recomputes it over the body as received, compares in constant
//! time, and rejects a timestamp too far from its clock (say 5 minutes) to
//! stop replays. Retries are re-signed with a fresh timestamp.
//!
//! # Delivery
//!
//! [`Webhooks::emit`] only `try_send`s into a bounded queue
//! (`webhook_queue` events; when full, new events are dropped and counted),
//! so presence never waits on the receiver. One task per node takes events
//! off the queue in batches (up to `webhook_max_batch` events, collected for
//! up to `webhook_batch_ms`), and POSTs them one batch at a time. A 2xx
//! answer delivers the batch; anything else (another status, a connection
//! error, no answer within 5 s) retries the *same* batch, same body and same
//! `x-roster-delivery`, after 250 ms, doubling up to 30 s, until
//! `webhook_max_retry_ms` after its first attempt, when it is given up (and
//! counted). Batches go strictly in order, so a failing batch holds back the
//! later ones, which wait in the queue: a receiver sees events in the order
//! they happened, at the cost of head-of-line blocking while it is down.
//! Delivery is at least once (an answer lost on the way back means a
//! retry): dedupe on `x-roster-delivery`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, WebhookMetrics};
use crate::settings::WebhookSettings;

/// One attempt (connect, send, answer) may take this long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first retry's delay; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One key-level change of a channel.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    /// `member_join` (first meta under the key) or `member_leave` (last meta gone).
    pub event: &'static str,
    /// The channel name, without the `realtime:` prefix.
    pub channel: String,
    pub private: bool,
    pub key: String,
    /// Milliseconds since the Unix epoch, when the change was applied.
    pub at_ms: u64,
}

/// The sink channels and the cluster emit into.
pub struct Webhooks {
    tx: mpsc::Sender<Event>,
    metrics: Option<WebhookMetrics>,
    /// Set while the queue is full, so a full queue logs once, not per event.
    dropping: AtomicBool,
    delivery: parking_lot::Mutex<Option<Delivery>>,
}

/// The running delivery task.
struct Delivery {
    finish: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Events taken off the queue and not yet settled.
    in_flight: Arc<AtomicUsize>,
}

impl Webhooks {
    /// A sink whose events go to `tx` (the delivery task's queue).
    pub fn with_queue(tx: mpsc::Sender<Event>) -> Arc<Webhooks> {
        Arc::new(Webhooks {
            tx,
            metrics: None,
            dropping: AtomicBool::new(false),
            delivery: parking_lot::Mutex::new(None),
        })
    }

    /// Queue events; when the queue is full they are dropped (counted, and
    /// logged once per episode), never waited for.
    pub fn emit(&self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            if let Some(m) = &self.metrics {
                m.events.increment(1);
            }
            match self.tx.try_send(event) {
                Ok(()) => {
                    if self.dropping.load(Ordering::Relaxed)
                        && self.dropping.swap(false, Ordering::Relaxed)
                    {
                        tracing::info!("webhook queue has room again");
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if let Some(m) = &self.metrics {
                        m.dropped_queue_full.increment(1);
                    }
                    if !self.dropping.swap(true, Ordering::Relaxed) {
                        tracing::warn!("webhook queue full: dropping events until it drains");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    if let Some(m) = &self.metrics {
                        m.dropped_shutdown.increment(1);
                    }
                }
            }
        }
    }

    /// Shutdown: deliver what is queued, waiting at most `within`, then stop
    /// (events emitted later are dropped). What is left then is counted as
    /// dropped.
    pub async fn finish(&self, within: Duration) {
        let Some(Delivery {
            finish,
            mut task,
            in_flight,
        }) = self.delivery.lock().take()
        else {
            return;
        };
        finish.cancel();
        if tokio::time::timeout(within, &mut task).await.is_ok() {
            return;
        }
        task.abort();
        let queued = self.tx.max_capacity() - self.tx.capacity();
        let left = queued + in_flight.load(Ordering::Relaxed);
        if left > 0 {
            if let Some(m) = &self.metrics {
                m.dropped_shutdown.increment(left as u64);
            }
            tracing::warn!(events = left, "webhooks: stopping with events undelivered");
        }
    }
}

/// Start delivering to `settings.url`; the returned sink is what channels
/// and the cluster emit into. Needs a Tokio runtime.
pub fn start(settings: &WebhookSettings, metrics: &Metrics) -> Arc<Webhooks> {
    let (tx, rx) = mpsc::channel(settings.queue.max(1));
    let metrics = metrics.webhooks();
    let finish = CancellationToken::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(ATTEMPT_TIMEOUT));
    http.set_nodelay(true);
    http.enforce_http(false);
    let tls = tls_config(settings.ca_file.as_deref()).unwrap_or_else(|e| {
        // Checked when the settings were resolved; gone since: trust nothing.
        tracing::error!(error = %e, "webhook CA file unreadable: https deliveries will fail");
        empty_roots()
    });
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let uri: hyper::Uri = settings
        .url
        .parse()
        .expect("the webhook URL was checked when the settings were resolved");
    let deliverer = Deliverer {
        origin: origin(&uri),
        uri,
        secret: settings.secret.clone(),
        batch: settings.batch,
        max_batch: settings.max_batch.max(1),
        max_retry: settings.max_retry,
        client: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
        metrics: metrics.clone(),
        finish: finish.clone(),
        in_flight: in_flight.clone(),
    };
    let task = tokio::spawn(deliverer.run(rx));
    Arc::new(Webhooks {
        tx,
        metrics: Some(metrics),
        dropping: AtomicBool::new(false),
        delivery: parking_lot::Mutex::new(Some(Delivery {
            finish,
            task,
            in_flight,
        })),
    })
}

/// The TLS client for https receivers: the certificates of `ca_file` (PEM)
/// as the only roots, else webpki's. Certificate and hostname are always
/// verified.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    let roots = crate::settings::trusted_roots(ca_file)?;
    Ok(client_config(roots))
}

fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    // ring, chosen explicitly (as for the server's TLS): no process-wide default.
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn empty_roots() -> rustls::ClientConfig {
    client_config(rustls::RootCertStore::empty())
}

/// `hex(HMAC-SHA256(secret, "<timestamp>.<body>"))`: the value of
/// `x-roster-signature` after `sha256=`.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// A webhook URL as logs may show it: scheme, host and port. Its user
/// info, path and query are left out, since receivers often take their
/// credentials there (`https://hooks.example/t/<token>?key=…`).
fn origin(uri: &hyper::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or_default();
    match uri.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

#[derive(Serialize)]
struct Body<'a> {
    events: &'a [Event],
}

/// The delivery task's state.
struct Deliverer {
    uri: hyper::Uri,
    /// The URL as logs show it (see [`origin`]).
    origin: String,
    secret: String,
    batch: Duration,
    max_batch: usize,
    max_retry: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    metrics: WebhookMetrics,
    finish: CancellationToken,
    in_flight: Arc<AtomicUsize>,
}

impl Deliverer {
    async fn run(self, mut rx: mpsc::Receiver<Event>) {
        while let Some(batch) = self.collect(&mut rx).await {
            self.deliver(batch).await;
        }
    }

    /// The next batch: the first event, then whatever follows within the
    /// batch window, up to `max_batch`. Once finishing, only what is already
    /// queued, and `None` when that is all gone.
    async fn collect(&self, rx: &mut mpsc::Receiver<Event>) -> Option<Vec<Event>> {
        let first = tokio::select! {
            biased;
            event = rx.recv() => event?,
            _ = self.finish.cancelled() => rx.try_recv().ok()?,
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + self.batch;
        while batch.len() < self.max_batch {
            match rx.try_recv() {
                Ok(event) => {
                    batch.push(event);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) if self.finish.is_cancelled() => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            tokio::select! {
                biased;
                event = rx.recv() => match event {
                    Some(event) => batch.push(event),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.finish.cancelled() => {}
            }
        }
        self.in_flight.store(batch.len(), Ordering::Relaxed);
        Some(batch)
    }

    /// POST one batch until it is taken or too old.
    async fn deliver(&self, events: Vec<Event>) {
        let n = events.len() as u64;
        let body = Bytes::from(
            serde_json::to_vec(&Body { events: &events }).expect("webhook events serialize"),
        );
        let id = uuid::Uuid::new_v4().to_string();
        let first_attempt = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 1u32;
        loop {
            match self.post(&id, &body).await {
                Ok(()) => {
                    self.metrics.ok.increment(1);
                    self.metrics.delivered.increment(n);
                    if attempts > 1 {
                        tracing::info!(delivery = %id, attempts, "webhook delivered after retries");
                    }
                    break;
                }
                Err(error) => {
                    let age = first_attempt.elapsed();
                    if age >= self.max_retry {
                        self.metrics.gave_up.increment(1);
                        self.metrics.dropped_expired.increment(n);
                        tracing::warn!(delivery = %id, events = n, attempts, %error,
                            "webhook batch given up");
                        break;
                    }
                    self.metrics.retry.increment(1);
                    if attempts == 1 {
                        tracing::warn!(delivery = %id, url = %self.origin, %error,
                            "webhook delivery failed; retrying with backoff");
                    } else {
                        tracing::debug!(delivery = %id, attempts, %error, "webhook retry failed");
                    }
                    tokio::time::sleep(backoff.min(self.max_retry - age)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempts += 1;
                }
            }
        }
        self.in_flight.store(0, Ordering::Relaxed);
    }

    /// One attempt: `Ok` on a 2xx answer.
    async fn post(&self, id: &str, body: &Bytes) -> Result<(), String> {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let signature = format!("sha256={}", sign(&self.secret, &timestamp, body));
        let request = hyper::Request::post(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("roster/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-roster-delivery", id)
            .header("x-roster-timestamp", &timestamp)
            .header("x-roster-signature", signature)
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let attempt = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status();
            // Read (a little of) the answer so the connection can be reused.
            let _ = Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
            .await
            .map_err(|_| format!("no answer within {ATTEMPT_TIMEOUT:?}"))?
    }
}

/// An error with its causes: hyper's own message alone says little
/// ("client error (Connect)").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Events for keys that came in (`joined`) and went (`left`) in `topic`.
pub fn key_events<S: AsRef<str>>(
    topic: &str,
    private: bool,
    joined: &[S],
    left: &[S],
) -> Vec<Event> {
    if joined.is_empty() && left.is_empty() {
        return Vec::new();
    }
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let channel = topic
        .strip_prefix(roster_protocol::TOPIC_PREFIX)
        .unwrap_or(topic)
        .to_owned();
    let event = |event, key: &str| Event {
        event,
        channel: channel.clone(),
        private,
        key: key.to_owned(),
        at_ms,
    };
    joined
        .iter()
        .map(|k| event("member_join", k.as_ref()))
        .chain(left.iter().map(|k| event("member_leave", k.as_ref())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body_in_hex() {
        // As Python computes it:
        // hmac.new(b"whsec_test", b'1700000000.{"events":[]}', hashlib.sha256).hexdigest()
        assert_eq!(
            sign("whsec_test", "1700000000", br#"{"events":[]}"#),
            "4f6f9b7a41398ad124e52a1320534f978e522923f3f2b2724e31d7a9dbf78a7f"
        );
        assert_ne!(
            sign("whsec_test", "1700000001", br#"{"events":[]}"#),
            sign("whsec_test", "1700000000", br#"{"events":[]}"#)
        );
    }

    #[test]
    fn logs_show_a_webhook_url_without_its_credentials() {
        let shown = |url: &str| origin(&url.parse().unwrap());
        assert_eq!(
            shown("https://user:pass@hooks.example.com:8443/t/SECRET?key=K#f"),
            "https://hooks.example.com:8443"
        );
        assert_eq!(shown("http://[::1]/hook?token=T"), "http://[::1]");
        assert_eq!(
            shown("https://hooks.example.com"),
            "https://hooks.example.com"
        );
    }

    #[test]
    fn body_is_an_events_array() {
        let events = key_events("realtime:room", true, &["a"], &["b"]);
        let body: serde_json::Value = serde_json::to_value(Body { events: &events }).unwrap();
        assert_eq!(body["events"][0]["event"], "member_join");
        assert_eq!(body["events"][0]["channel"], "room");
        assert_eq!(body["events"][0]["private"], true);
        assert_eq!(body["events"][1]["event"], "member_leave");
        assert_eq!(body["events"][1]["key"], "b");
        assert!(body["events"][1]["at_ms"].as_u64().unwrap() > 1_600_000_000_000);
    }
}
