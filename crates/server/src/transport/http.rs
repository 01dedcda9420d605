//! HTTP: the WebSocket endpoints and the upgrade checks.
//!
//! Credentials and `vsn` are checked before the upgrade, so a refused client
//! gets a 4xx with a JSON `{"error": …}` body, never a 101 and then silence.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use roster_protocol::Vsn;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::access::admission::Permit;
use crate::server::Server;
use crate::transport::connection;
use crate::transport::websocket::Upgrade;

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        // What supabase-js derives from a project URL…
        .route("/realtime/v1/websocket", get(websocket))
        // …and what a Realtime-style host serves.
        .route("/socket/websocket", get(websocket))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::api::broadcast::router())
        .merge(crate::api::presence::router())
        .merge(crate::api::demo::router())
        .with_state(server)
}

/// An accepted connection's place under the connection caps. The HTTP
/// connection holds it from accept to close; a WebSocket upgraded from it
/// takes a clone into its socket task, so the place stays taken until the
/// socket ends too.
#[derive(Clone)]
struct ConnectionPermit(#[allow(dead_code)] Arc<Permit>); // held, never read

/// The longest an over-cap connection is kept to answer its request with a
/// 429; a client that means it sends its request at once.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(1);

/// Accept connections until shutdown. Our own loop rather than
/// `axum::serve`, so that every connection is held to deadlines and caps:
/// - it counts against `--max-connections` / `--max-connections-per-ip`
///   from accept until it closes, plain HTTP included (one place per
///   connection, however many requests it carries); over a cap it gets a
///   429 (or, past [`crate::access::admission::MAX_REFUSALS_IN_FLIGHT`], is closed at once);
/// - it must deliver a request's headers within the handshake timeout of
///   being accepted, or it is closed: hyper's own header timer only starts
///   once the protocol is sniffed, i.e. never for a connection that sends
///   nothing. Hyper's timer then covers each later request of a kept-alive
///   connection (and the idle time before it).
///
/// HTTP/1 only: no HTTP/2 connection could be idled out after its first
/// request (hyper has no idle timeout for it), and no client of ours needs it.
///
/// With `tls`, every accepted connection is TLS first; the TLS handshake
/// counts against the handshake timeout too.
pub async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let app = router(server.clone());
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.settings.handshake_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep
                    // serving (existing sockets run in their own tasks; the
                    // kernel queues new connections until we accept again).
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = server.shutdown.cancelled() => break,
        };
        // Presence frames are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let limits = &server.settings.limits;
        match server.admission.admit(
            peer.ip(),
            limits.max_connections,
            limits.max_connections_per_ip,
        ) {
            Ok(permit) => {
                let permit = ConnectionPermit(Arc::new(permit));
                let app = app.clone();
                let service = move |mut req: hyper::Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req.extensions_mut().insert(permit.clone());
                    app.clone().oneshot(req)
                };
                let deadline = server.settings.handshake_timeout;
                spawn_connection(
                    &builder,
                    &graceful,
                    tls.clone(),
                    stream,
                    peer,
                    deadline,
                    service,
                );
            }
            Err(refusal) => {
                server.metrics.auth_failure(refusal.label());
                let Some(slot) = server.admission.refusal_slot() else {
                    tracing::debug!(%peer, reason = refusal.message(), "connection refused, closed at once");
                    continue;
                };
                tracing::debug!(%peer, reason = refusal.message(), "connection refused");
                let service = move |_req: hyper::Request<Incoming>| {
                    let _slot = &slot;
                    let mut response = refuse(StatusCode::TOO_MANY_REQUESTS, refusal.message());
                    response.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                    std::future::ready(Ok::<_, std::convert::Infallible>(response))
                };
                let deadline = server.settings.handshake_timeout.min(REFUSAL_DEADLINE);
                spawn_connection(
                    &builder,
                    &graceful,
                    tls.clone(),
                    stream,
                    peer,
                    deadline,
                    service,
                );
            }
        }
    }
    // Plain HTTP requests in flight get a moment; upgraded sockets are
    // closed by their own tasks, which watch the same shutdown token.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

/// Serve one connection in its own task (after its TLS handshake, with
/// `tls`); close it if no request has come `deadline` after accept.
fn spawn_connection<S, F>(
    builder: &Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    tls: Option<TlsAcceptor>,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Duration,
    service: S,
) where
    S: Fn(hyper::Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response, std::convert::Infallible>> + Send + 'static,
{
    let first_request = CancellationToken::new();
    let seen = first_request.clone();
    let service = hyper::service::service_fn(move |req| {
        seen.cancel();
        service(req)
    });
    let builder = builder.clone();
    let watcher = graceful.watcher();
    let started = tokio::time::Instant::now();
    tokio::spawn(async move {
        let io = match tls {
            None => Either::Left(stream),
            Some(acceptor) => match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Either::Right(tls),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no TLS handshake within the handshake timeout: closed");
                    return;
                }
            },
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let conn = watcher.watch(conn.into_owned());
        let mut conn = std::pin::pin!(conn);
        let in_time = tokio::select! {
            biased;
            ended = conn.as_mut() => return log_end(peer, ended),
            _ = first_request.cancelled() => true,
            _ = tokio::time::sleep_until(started + deadline) => false,
        };
        if in_time {
            log_end(peer, conn.await);
        } else {
            // Dropping the connection closes it.
            tracing::debug!(%peer, "no request within the handshake timeout: closed");
        }
    });
}

fn log_end<E: std::fmt::Display>(peer: SocketAddr, ended: Result<(), E>) {
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "http connection ended");
    }
}

/// Accepting joins? 503 once shutdown began.
async fn ready(State(server): State<Arc<Server>>) -> Response {
    if server.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if !server.registry.backend().is_healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "cluster link lost").into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics(State(server): State<Arc<Server>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        {
            let mut text = server.metrics.render();
            text.push_str(&server.registry.backend().render_metrics());
            text
        },
    )
        .into_response()
}

fn refuse(status: StatusCode, error: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": error.into() }))).into_response()
}

async fn websocket(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    permit: Option<Extension<ConnectionPermit>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Response {
    let vsn = match Vsn::from_query(params.get("vsn").map(String::as_str)) {
        Ok(v) => v,
        Err(e) => {
            tracing::info!(%peer, reason = %e, "connection refused");
            server.metrics.auth_failure("unsupported_vsn");
            return refuse(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    // Header first (gateways set it), then the query parameter (browsers can't set headers).
    let presented = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| params.get("apikey").map(String::as_str));
    let credential = match server.access.auth.verify_socket(presented) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%peer, reason = %e, "connection refused");
            server.metrics.auth_failure(e.label());
            return refuse(StatusCode::UNAUTHORIZED, e.to_string());
        }
    };
    if server.shutdown.is_cancelled() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
    }
    let settings = &server.settings;
    // Served by `serve`, the connection already holds its place; embedded
    // through `router` alone, the socket takes one here.
    let permit = match permit {
        Some(Extension(permit)) => SocketPermit::Connection(permit),
        None => match server.admission.admit(
            peer.ip(),
            settings.limits.max_connections,
            settings.limits.max_connections_per_ip,
        ) {
            Ok(p) => SocketPermit::Own(p),
            Err(refusal) => {
                tracing::info!(%peer, reason = refusal.message(), "connection refused");
                server.metrics.auth_failure(refusal.label());
                return refuse(StatusCode::TOO_MANY_REQUESTS, refusal.message());
            }
        },
    };
    let tasks = server.tasks.clone();
    let compress = settings.compression.is_some();
    upgrade.on_upgrade(
        compress,
        move |e| tracing::debug!(%peer, error = %e, "upgrade failed"),
        move |socket, deflate| {
            tasks.track_future(async move {
                connection::run(server, socket, deflate, vsn, credential, peer).await;
                drop(permit);
            })
        },
    )
}

/// What keeps a WebSocket's place under the caps until its task ends.
#[allow(dead_code)] // held, never read
enum SocketPermit {
    Connection(ConnectionPermit),
    Own(Permit),
}
