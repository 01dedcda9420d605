//! REST broadcast: `POST /api/broadcast` (batch) and
//! `POST /api/broadcast/{topic}/events/{event}` (single), also under
//! `/realtime/v1`. Topics are named without `realtime:`. Success is 202 with
//! an empty body; failures are 4xx with `{"error": …}`, which realtime-js
//! surfaces as the error message.

use std::sync::Arc;

use axum::body::Bytes;
use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use roster_protocol::{BroadcastBody, UserBroadcast, TOPIC_PREFIX};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Credential;
use crate::authz;
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
    server.auth.verify_socket(bearer.or(apikey)).map_err(|e| {
        tracing::info!(reason = %e, "REST call refused");
        server.metrics.auth_failure(e.label());
        Box::new(error(StatusCode::UNAUTHORIZED, e.to_string()))
    })
}

/// Deliver to subscribers. A private message without broadcast-write on its
/// topic is skipped silently, as rt does.
fn deliver(server: &Server, cred: &Credential, topic: &str, private: bool, msg: &UserBroadcast) {
    if private && !authz::rights(&server.settings.policies, topic, cred).broadcast_write {
        return;
    }
    let topic = format!("{TOPIC_PREFIX}{topic}");
    match server.registry.get(&topic, private) {
        Some(channel) => {
            channel.broadcast(msg, None);
        }
        None => {
            // Nobody here; maybe on other nodes.
            if let Some(cluster) = server.registry.cluster() {
                let tag = crate::cluster::wire::tag(&topic, private);
                crate::channel::relay_broadcast(cluster, tag, msg);
            }
        }
    }
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

async fn batch(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let cred = match authorize(&server, &headers) {
        Ok(c) => c,
        Err(refusal) => return *refusal,
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
        ready.push((m.topic, m.private, msg));
    }
    for (topic, private, msg) in &ready {
        deliver(&server, &cred, topic, *private, msg);
    }
    StatusCode::ACCEPTED.into_response()
}

async fn single(
    State(server): State<Arc<Server>>,
    Path((topic, event)): Path<(String, String)>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let cred = match authorize(&server, &headers) {
        Ok(c) => c,
        Err(refusal) => return *refusal,
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
    deliver(&server, &cred, &topic, private, &msg);
    StatusCode::ACCEPTED.into_response()
}
