//! Server-side presence API: who is in a channel, how many, and which keys
//! are online where, for backends. Only the secret key or a `service_role`
//! JWT may ask. The OpenAPI document is served at
//! `/api/presence/openapi.json` (also under `/realtime/v1`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use roster_presence::ChannelPresence;
use roster_protocol::TOPIC_PREFIX;
use serde::Deserialize;
use serde_json::json;

use crate::api::broadcast::{authorize, error};
use crate::server::Server;
use crate::store::StoreError;

const OPENAPI: &str = include_str!("../../assets/openapi.json");
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Most keys one `query` or `members?keys=` call may ask about.
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

/// The `keys` parameters of a `members` call (`?keys=a&keys=b`), `None`
/// when there are none; counted before anything is decoded.
fn asked_keys(uri: &Uri) -> Result<Option<Vec<String>>, Box<Response>> {
    let raw = uri.query().unwrap_or("");
    let asked = raw.split('&').filter(|p| p.starts_with("keys=")).count();
    if asked == 0 {
        return Ok(None);
    }
    if asked > MAX_QUERY_KEYS {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_QUERY_KEYS} keys"),
        )));
    }
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e.to_string())))?;
    let mut seen = HashSet::new();
    Ok(Some(
        pairs
            .into_iter()
            .filter(|(name, _)| name == "keys")
            .map(|(_, key)| key)
            .filter(|key| seen.insert(key.clone()))
            .collect(),
    ))
}

/// When each of `keys` (offline ones) last left any of `topics` (full
/// names): from the store (this node's memory, or Redis in a cluster, so
/// that every node answers the same).
async fn last_seen_of(
    server: &Server,
    topics: &[String],
    private: bool,
    keys: &[&str],
) -> Result<HashMap<String, u64>, Response> {
    server
        .registry
        .backend()
        .last_seen(topics, private, keys)
        .await
        .map_err(unavailable)
}

/// The store could not answer (Redis unreachable).
fn unavailable(e: StoreError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// The presence of a channel with no client on this node, from the store
/// (Redis has every node's presences; alone, nobody is there).
async fn presence_elsewhere(
    server: &Server,
    topic: &str,
    private: bool,
) -> Result<ChannelPresence, Response> {
    server
        .registry
        .backend()
        .read_presence(topic, private)
        .await
        .map_err(unavailable)
}

async fn members(
    State(server): State<Arc<Server>>,
    topic: Result<Path<String>, PathRejection>,
    params: Result<Query<PageParams>, QueryRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (topic, params) = match checked(&server, &headers, topic, params) {
        Ok(checked) => checked,
        Err(refusal) => return *refusal,
    };
    // Checked even where it does not apply (`keys=`): an invalid request is refused.
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1..={MAX_PAGE}"),
        );
    }
    match asked_keys(&uri) {
        Ok(Some(keys)) => return members_of_keys(&server, topic, params.private, keys).await,
        Ok(None) => {}
        Err(refusal) => return *refusal,
    }
    let full = format!("{TOPIC_PREFIX}{topic}");
    let cursor = params.cursor.as_deref();
    let page = match server.registry.get(&full, params.private) {
        Some(channel) => channel.presence_page(cursor, limit),
        None => match presence_elsewhere(&server, &full, params.private).await {
            Ok(presence) => crate::channel::page_values(&presence, cursor, limit),
            Err(refusal) => return refusal,
        },
    };
    // A full page may have more after it; the last key is where to go on.
    let next_cursor = (page.len() == limit)
        .then(|| page.last().map(|(k, _)| k.clone()))
        .flatten();
    let members: Vec<_> = page
        .into_iter()
        .map(|(key, metas)| json!({"key": key, "online": true, "metas": metas}))
        .collect();
    Json(json!({"topic": topic, "members": members, "next_cursor": next_cursor})).into_response()
}

/// `members?keys=..`: each asked key, in the order asked, `online` with its
/// metas, or offline with `last_seen_at` when its last leave is remembered.
async fn members_of_keys(
    server: &Server,
    topic: String,
    private: bool,
    keys: Vec<String>,
) -> Response {
    let full = format!("{TOPIC_PREFIX}{topic}");
    let entries = match server.registry.get(&full, private) {
        Some(channel) => channel.presence_of_keys(&keys),
        None => match presence_elsewhere(server, &full, private).await {
            Ok(presence) => crate::channel::key_values(&presence, &keys),
            Err(refusal) => return refusal,
        },
    };
    let offline: Vec<&str> = entries
        .iter()
        .filter(|(_, metas)| metas.is_empty())
        .map(|(key, _)| key.as_str())
        .collect();
    let seen = match last_seen_of(server, std::slice::from_ref(&full), private, &offline).await {
        Ok(seen) => seen,
        Err(refusal) => return refusal,
    };
    let members: Vec<_> = entries
        .iter()
        .map(|(key, metas)| {
            let mut member = json!({"key": key, "online": !metas.is_empty(), "metas": metas});
            if let Some(at) = seen.get(key.as_str()).filter(|_| metas.is_empty()) {
                member["last_seen_at"] = json!(at);
            }
            member
        })
        .collect();
    Json(json!({"topic": topic, "members": members, "next_cursor": null})).into_response()
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
    let (connections, keys, presences) = match server.registry.get(&full, params.private) {
        Some(channel) => channel.counts(),
        None => match presence_elsewhere(&server, &full, params.private).await {
            Ok(p) => (0, p.key_count(), p.meta_count()),
            Err(refusal) => return refusal,
        },
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
    // Channels with no client on this node: the store's (in a cluster,
    // Redis has those of the other nodes; alone, nobody is there).
    let remote = match &wanted {
        Some(w) => Ok(w.iter().cloned().collect::<Vec<_>>()),
        None => server.registry.backend().channel_topics(q.private).await,
    };
    let remote = match remote {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    let mut remote_topics = Vec::new();
    for topic in remote {
        if server.registry.get(&topic, q.private).is_some() {
            continue; // answered above
        }
        let presence = match presence_elsewhere(&server, &topic, q.private).await {
            Ok(p) => p,
            Err(refusal) => return refusal,
        };
        let name = topic.strip_prefix(TOPIC_PREFIX).unwrap_or(&topic);
        for key in q.keys.iter().filter(|k| presence.has_key(k)) {
            online.entry(key).or_default().push(name.to_owned());
        }
        remote_topics.push(topic);
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
            .chain(remote_topics)
            .collect(),
    };
    let offline: Vec<&str> = online
        .iter()
        .filter(|(_, t)| t.is_empty())
        .map(|(key, _)| *key)
        .collect();
    let last_seen_at: BTreeMap<String, u64> =
        match last_seen_of(&server, &topics, q.private, &offline).await {
            Ok(seen) => seen.into_iter().collect(),
            Err(refusal) => return refusal,
        };
    Json(json!({ "online": online, "last_seen_at": last_seen_at })).into_response()
}
