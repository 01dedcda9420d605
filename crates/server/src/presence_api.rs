//! Server-side presence API: who is in a channel, how many, and which keys
//! are online where, for backends. Only the secret key or a `service_role`
//! JWT may ask. The OpenAPI document is served at
//! `/api/presence/openapi.json` (also under `/realtime/v1`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use roster_protocol::TOPIC_PREFIX;
use serde::Deserialize;
use serde_json::json;

use crate::rest::{authorize, error};
use crate::server::Server;

const OPENAPI: &str = include_str!("../assets/openapi.json");
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
const MAX_QUERY_KEYS: usize = 1000;

pub fn router() -> Router<Arc<Server>> {
    let mut router = Router::new();
    for prefix in ["", "/realtime/v1"] {
        router = router
            .route(&format!("{prefix}/api/presence/openapi.json"), get(openapi))
            .route(&format!("{prefix}/api/presence/query"), post(query))
            .route(
                &format!("{prefix}/api/presence/{{topic}}/members"),
                get(members),
            )
            .route(
                &format!("{prefix}/api/presence/{{topic}}/count"),
                get(count),
            );
    }
    router
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The refusal, unless the caller holds the secret key or a service_role JWT.
fn service_only(server: &Server, headers: &HeaderMap) -> Option<Response> {
    match authorize(server, headers) {
        Err(refusal) => Some(*refusal),
        Ok(cred) if cred.role != "service_role" => Some(error(
            StatusCode::FORBIDDEN,
            "the presence API needs the secret key or a service_role JWT",
        )),
        Ok(_) => None,
    }
}

#[derive(Deserialize)]
struct PageParams {
    limit: Option<usize>,
    cursor: Option<String>,
    #[serde(default)]
    private: bool,
}

/// The credentials first, then the path and query: bad ones get the same
/// JSON error as everything else.
fn checked<P>(
    server: &Server,
    headers: &HeaderMap,
    topic: Result<Path<String>, PathRejection>,
    params: Result<Query<P>, QueryRejection>,
) -> Result<(String, P), Box<Response>> {
    if let Some(refusal) = service_only(server, headers) {
        return Err(Box::new(refusal));
    }
    let bad = |e: &dyn std::fmt::Display| Box::new(error(StatusCode::BAD_REQUEST, e.to_string()));
    match (topic, params) {
        (Ok(Path(t)), Ok(Query(p))) => Ok((t, p)),
        (Err(e), _) => Err(bad(&e)),
        (_, Err(e)) => Err(bad(&e)),
    }
}

async fn members(
    State(server): State<Arc<Server>>,
    topic: Result<Path<String>, PathRejection>,
    params: Result<Query<PageParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let (topic, params) = match checked(&server, &headers, topic, params) {
        Ok(checked) => checked,
        Err(refusal) => return *refusal,
    };
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1..={MAX_PAGE}"),
        );
    }
    let full = format!("{TOPIC_PREFIX}{topic}");
    let cursor = params.cursor.as_deref();
    let page = match (
        server.registry.get(&full, params.private),
        server.registry.cluster(),
    ) {
        (Some(channel), _) => channel.presence_page(cursor, limit),
        // No client here: ask Redis, which has every node's presences.
        (None, Some(cluster)) => match cluster.read_presence(&full, params.private).await {
            Ok(presence) => crate::channel::page_values(&presence, cursor, limit),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}")),
        },
        (None, None) => Vec::new(),
    };
    // A full page may have more after it; the last key is where to go on.
    let next_cursor = (page.len() == limit)
        .then(|| page.last().map(|(k, _)| k.clone()))
        .flatten();
    let members: Vec<_> = page
        .into_iter()
        .map(|(key, metas)| json!({"key": key, "metas": metas}))
        .collect();
    Json(json!({"topic": topic, "members": members, "next_cursor": next_cursor})).into_response()
}

#[derive(Deserialize)]
struct CountParams {
    #[serde(default)]
    private: bool,
}

async fn count(
    State(server): State<Arc<Server>>,
    topic: Result<Path<String>, PathRejection>,
    params: Result<Query<CountParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let (topic, params) = match checked(&server, &headers, topic, params) {
        Ok(checked) => checked,
        Err(refusal) => return *refusal,
    };
    let full = format!("{TOPIC_PREFIX}{topic}");
    // `connections` counts sockets on the node that answers; keys and
    // presences are the channel's, on every node.
    let (connections, keys, presences) = match (
        server.registry.get(&full, params.private),
        server.registry.cluster(),
    ) {
        (Some(channel), _) => channel.counts(),
        (None, Some(cluster)) => match cluster.read_presence(&full, params.private).await {
            Ok(p) => (0, p.key_count(), p.meta_count()),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}")),
        },
        (None, None) => (0, 0, 0),
    };
    Json(json!({"topic": topic, "connections": connections, "keys": keys, "presences": presences}))
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyQuery {
    keys: Vec<String>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    private: bool,
}

async fn query(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refusal) = service_only(&server, &headers) {
        return refusal;
    }
    let q: KeyQuery = match serde_json::from_slice(&body) {
        Ok(q) => q,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("expected {{\"keys\": [..], \"topics\"?: [..], \"private\"?: bool}}: {e}"),
            )
        }
    };
    if q.keys.len() > MAX_QUERY_KEYS {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("at most {MAX_QUERY_KEYS} keys"),
        );
    }
    let wanted: Option<HashSet<String>> = q.topics.map(|t| {
        t.into_iter()
            .map(|t| format!("{TOPIC_PREFIX}{t}"))
            .collect()
    });
    let mut online: BTreeMap<&str, Vec<String>> =
        q.keys.iter().map(|k| (k.as_str(), Vec::new())).collect();
    for channel in server.registry.all() {
        if channel.is_private() != q.private
            || wanted
                .as_ref()
                .is_some_and(|w| !w.contains(channel.topic()))
        {
            continue;
        }
        let name = channel
            .topic()
            .strip_prefix(TOPIC_PREFIX)
            .unwrap_or(channel.topic());
        for key in channel.keys_present(&q.keys) {
            online.entry(key).or_default().push(name.to_owned());
        }
    }
    if let Some(cluster) = server.registry.cluster() {
        // Channels with no client on this node live only in Redis.
        let remote = match &wanted {
            Some(w) => Ok(w.iter().cloned().collect::<Vec<_>>()),
            None => cluster.channel_topics(q.private).await,
        };
        let remote = match remote {
            Ok(r) => r,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}")),
        };
        for topic in remote {
            if server.registry.get(&topic, q.private).is_some() {
                continue; // answered above
            }
            let presence = match cluster.read_presence(&topic, q.private).await {
                Ok(p) => p,
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}")),
            };
            let name = topic.strip_prefix(TOPIC_PREFIX).unwrap_or(&topic);
            for key in q.keys.iter().filter(|k| presence.has_key(k)) {
                online.entry(key).or_default().push(name.to_owned());
            }
        }
    }
    for topics in online.values_mut() {
        topics.sort();
        topics.dedup();
    }
    // Keys online nowhere asked: when their last meta left (the latest).
    let topics: Vec<String> = match &wanted {
        Some(w) => w.iter().cloned().collect(),
        None => server
            .registry
            .all()
            .iter()
            .filter(|c| c.is_private() == q.private)
            .map(|c| c.topic().to_owned())
            .collect(),
    };
    let mut last_seen_at: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, _) in online.iter().filter(|(_, t)| t.is_empty()) {
        let latest = topics
            .iter()
            .filter_map(|t| server.registry.last_seen(t, q.private, key))
            .max();
        if let Some(at) = latest {
            last_seen_at.insert(key, at);
        }
    }
    Json(json!({ "online": online, "last_seen_at": last_seen_at })).into_response()
}
