//! REST broadcast: `POST /api/broadcast` (batch) and
//! `POST /api/broadcast/{topic}/events/{event}` (single), also under
//! `/realtime/v1`. Topics are named without `realtime:`. Success is 202 with
//! an empty body; failures are 4xx with `{"error": …}`, which realtime-js
//! surfaces as the error message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use roster_protocol::{BroadcastBody, UserBroadcast, TOPIC_PREFIX};
use serde::Deserialize;
use serde_json::Value;

use crate::access::auth::Credential;
use crate::channel::Channel;
use crate::server::Server;

pub fn router() -> Router<Arc<Server>> {
    let mut router = Router::new();
    for prefix in ["", "/realtime/v1"] {
        router = router
            .route(&format!("{prefix}/api/broadcast"), post(batch))
            .route(
                &format!("{prefix}/api/broadcast/{{topic}}/events/{{event}}"),
                post(single),
            );
    }
    // Browsers call these from any origin, as on Supabase.
    router.layer(tower_http::cors::CorsLayer::permissive())
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// `Authorization: Bearer <key or JWT>` first, else the `apikey` header.
/// Returns the credential or the refusal.
pub(crate) fn authorize(server: &Server, headers: &HeaderMap) -> Result<Credential, Box<Response>> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let apikey = headers.get("apikey").and_then(|v| v.to_str().ok());
    server
        .access
        .auth
        .verify_socket(bearer.or(apikey))
        .map_err(|e| {
            tracing::info!(reason = %e, "REST call refused");
            server.metrics.auth_failure(e.label());
            Box::new(error(StatusCode::UNAUTHORIZED, e.to_string()))
        })
}

/// The body, read up to the REST body budget: 413 past it, before more
/// is read.
async fn read_body(server: &Server, body: Body) -> Result<Bytes, Response> {
    let max = server.settings.limits.max_rest_body_bytes;
    axum::body::to_bytes(body, max).await.map_err(|_| {
        server.metrics.refused("rest_body_bytes");
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {max} bytes"),
        )
    })
}

/// One message to deliver: its topic (without `realtime:`), private or not,
/// and the broadcast.
struct Outgoing {
    topic: String,
    private: bool,
    msg: UserBroadcast,
}

/// Check every message's budgets and the rates of every channel they go
/// to, then deliver them all, or none: 413/422 for a message over a byte
/// budget, 429 when the sender's address or a channel is at its rate.
fn deliver_all(
    server: &Server,
    cred: &Credential,
    ip: std::net::IpAddr,
    batch: Vec<Outgoing>,
) -> Response {
    let limits = &server.settings.limits;
    for (i, m) in batch.iter().enumerate() {
        if TOPIC_PREFIX.len() + m.topic.len() > limits.max_topic_bytes {
            server.metrics.refused("topic_bytes");
            let max = limits.max_topic_bytes - TOPIC_PREFIX.len();
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("messages[{i}]: a topic may be at most {max} bytes"),
            );
        }
        if let Err(refused) = crate::session::check_broadcast(&m.msg, limits) {
            server.metrics.refused(refused.budget);
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("messages[{i}]: {}", refused.message),
            );
        }
    }
    let max_per_ip = limits.max_broadcasts_per_second_per_ip;
    if !(0..batch.len()).all(|_| server.admission.allow_broadcast_from(ip, max_per_ip)) {
        server.metrics.refused("ip_broadcast_rate");
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many broadcasts from this address",
        );
    }
    // A private message without broadcast-write on its topic is skipped
    // silently, as rt does.
    let batch: Vec<Outgoing> = batch
        .into_iter()
        .filter(|m| !m.private || server.access.rights(&m.topic, cred).broadcast_write)
        .collect();
    // Each channel's share of the batch, taken from its budget at once.
    let mut channels: Vec<(Arc<Channel>, u32, usize)> = Vec::new();
    let mut targets = Vec::with_capacity(batch.len());
    for m in &batch {
        let topic = format!("{TOPIC_PREFIX}{}", m.topic);
        let channel = server.registry.get(&topic, m.private);
        if let Some(channel) = &channel {
            match channels.iter_mut().find(|(c, ..)| Arc::ptr_eq(c, channel)) {
                Some((_, count, bytes)) => {
                    *count += 1;
                    *bytes += m.msg.body.len();
                }
                None => channels.push((channel.clone(), 1, m.msg.body.len())),
            }
        }
        targets.push((topic, channel));
    }
    for (i, (channel, count, bytes)) in channels.iter().enumerate() {
        if channel.take_budget(*count, *bytes).is_err() {
            for (channel, count, bytes) in &channels[..i] {
                channel.refund_budget(*count, *bytes);
            }
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                crate::session::CHANNEL_BUSY.trim_start_matches("RateLimited: "),
            );
        }
    }
    for (m, (topic, channel)) in batch.iter().zip(targets) {
        match channel {
            Some(channel) => {
                channel.broadcast_prepaid(&m.msg, None);
            }
            // Nobody here; maybe on other nodes.
            None => server
                .registry
                .relay_to_other_nodes(&topic, m.private, &m.msg),
        }
    }
    StatusCode::ACCEPTED.into_response()
}

#[derive(Deserialize)]
struct Batch {
    messages: Vec<BatchMessage>,
}

#[derive(Deserialize)]
struct BatchMessage {
    topic: String,
    event: String,
    #[serde(default)]
    payload: Option<Value>,
    /// Deliver to the private channel of that name; needs broadcast-write there.
    #[serde(default)]
    private: bool,
    #[serde(default)]
    id: Option<Value>,
}

async fn batch(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let cred = match authorize(&server, &headers) {
        Ok(c) => c,
        Err(refusal) => return *refusal,
    };
    let body = match read_body(&server, body).await {
        Ok(b) => b,
        Err(refusal) => return refusal,
    };
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("expected {{\"messages\": [{{\"topic\", \"event\", \"payload\"}}]}}: {e}"),
            )
        }
    };
    let max = server.settings.limits.max_rest_messages;
    if batch.messages.len() > max {
        server.metrics.refused("rest_messages");
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {max} messages per call"),
        );
    }
    // Validate all before delivering any: a batch is all or nothing.
    let mut ready = Vec::with_capacity(batch.messages.len());
    for (i, m) in batch.messages.into_iter().enumerate() {
        if m.topic.is_empty() || m.event.is_empty() {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("messages[{i}]: topic and event must be non-empty"),
            );
        }
        let payload = m
            .payload
            .unwrap_or_else(|| Value::Object(Default::default()));
        let msg = UserBroadcast {
            event: m.event,
            body: BroadcastBody::Json(payload.to_string()),
            meta: m.id.map(|id| serde_json::json!({ "id": id }).to_string()),
        };
        ready.push(Outgoing {
            topic: m.topic,
            private: m.private,
            msg,
        });
    }
    deliver_all(&server, &cred, peer.ip(), ready)
}

async fn single(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((topic, event)): Path<(String, String)>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    let cred = match authorize(&server, &headers) {
        Ok(c) => c,
        Err(refusal) => return *refusal,
    };
    let body = match read_body(&server, body).await {
        Ok(b) => b,
        Err(refusal) => return refusal,
    };
    let private = query.get("private").is_some_and(|v| v == "true");
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let body = match mime {
        "application/json" => match serde_json::from_slice::<Value>(&body) {
            Ok(v) => BroadcastBody::Json(v.to_string()),
            Err(e) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("body is not JSON: {e}"),
                )
            }
        },
        "application/octet-stream" => BroadcastBody::Binary(body.to_vec()),
        other => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type {other:?}: use application/json or application/octet-stream"),
            )
        }
    };
    let msg = UserBroadcast {
        event,
        body,
        meta: None,
    };
    let one = Outgoing {
        topic,
        private,
        msg,
    };
    deliver_all(&server, &cred, peer.ip(), vec![one])
}
