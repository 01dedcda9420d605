//! HTTP: the WebSocket endpoints and the upgrade checks.
//!
//! Credentials and `vsn` are checked before the upgrade, so a refused client
//! gets a 4xx with a JSON `{"error": …}` body, never a 101 and then silence.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use roster_protocol::Vsn;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::connection;
use crate::server::Server;

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        // What supabase-js derives from a project URL…
        .route("/realtime/v1/websocket", get(websocket))
        // …and what a Realtime-style host serves.
        .route("/socket/websocket", get(websocket))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::rest::router())
        .merge(crate::presence_api::router())
        .merge(crate::demo::router())
        .with_state(server)
}

/// Accept connections until shutdown. Our own loop rather than
/// `axum::serve`, for a timer on HTTP/1 request headers: a client that
/// opens a connection and trickles its headers (slowloris) is cut off after
/// the handshake timeout instead of holding a socket and a task forever.
pub async fn serve(listener: TcpListener, server: Arc<Server>) -> std::io::Result<()> {
    let app = router(server.clone());
    let mut builder = Builder::new(TokioExecutor::new());
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
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = server.shutdown.cancelled() => break,
        };
        // Presence frames are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "http connection ended");
            }
        });
    }
    // Plain HTTP requests in flight get a moment; upgraded sockets are
    // closed by their own tasks, which watch the same shutdown token.
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

/// Accepting joins? 503 once shutdown began.
async fn ready(State(server): State<Arc<Server>>) -> Response {
    if server.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if server.registry.cluster().is_some_and(|c| !c.is_healthy()) {
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
            if let Some(cluster) = server.registry.cluster() {
                text.push_str(&cluster.render_metrics());
            }
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
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
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
    let credential = match server.auth.verify_socket(presented) {
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
    let permit = match server.admission.admit(
        peer.ip(),
        settings.limits.max_connections,
        settings.limits.max_connections_per_ip,
    ) {
        Ok(p) => p,
        Err(refusal) => {
            tracing::info!(%peer, reason = refusal.message(), "connection refused");
            server.metrics.auth_failure(refusal.label());
            return refuse(StatusCode::TOO_MANY_REQUESTS, refusal.message());
        }
    };
    let upgrade = upgrade
        .max_message_size(settings.max_message_bytes)
        .max_frame_size(settings.max_message_bytes)
        // Small buffers: memory per idle connection matters more than
        // throughput per connection for presence (a larger frame grows the
        // read buffer as needed; 512 against 1,024 saved 0.45 KB a socket).
        .read_buffer_size(512)
        .write_buffer_size(16 * 1024);
    let tasks = server.tasks.clone();
    upgrade
        .on_failed_upgrade(move |e| tracing::debug!(%peer, error = %e, "upgrade failed"))
        .on_upgrade(move |socket| {
            tasks.track_future(async move {
                connection::run(server, socket, vsn, credential, peer).await;
                drop(permit);
            })
        })
}
