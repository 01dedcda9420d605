//! The server-side presence API: members (paged), counts, key queries, its
//! authorization, and its OpenAPI document.

use crate::common::*;
use roster_server::settings::{DEV_JWT_SECRET, DEV_SECRET_KEY};
use serde_json::{json, Value};

async fn get(addr: std::net::SocketAddr, path: &str, key: &str) -> (u16, Value) {
    let (status, body) = http_request(addr, "GET", path, &[("apikey", key)], b"").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn members_are_paged_in_key_order_and_counted() {
    let s = start().await;
    let mut clients = Vec::new();
    for key in ["k3", "k0", "k4", "k1", "k2"] {
        let mut c = Client::connect(s.addr, 2).await;
        let j = c.join("realtime:room", Some(key)).await;
        c.track(&j, "realtime:room", json!({"name": key})).await;
        clients.push(c);
    }
    // A second socket under k0: one key, two metas.
    let mut twin = Client::connect(s.addr, 1).await;
    let j = twin.join("realtime:room", Some("k0")).await;
    twin.track(&j, "realtime:room", json!({"name": "k0-phone"}))
        .await;

    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/presence/room/members?limit=2&cursor={c}"),
            None => "/api/presence/room/members?limit=2".to_string(),
        };
        let (status, page) = get(s.addr, &path, DEV_SECRET_KEY).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["topic"], "room");
        for m in page["members"].as_array().unwrap() {
            keys.push(m["key"].as_str().unwrap().to_owned());
            for meta in m["metas"].as_array().unwrap() {
                assert!(meta["phx_ref"].is_string() && meta["name"].is_string());
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4"]);

    let (status, counts) = get(
        s.addr,
        "/realtime/v1/api/presence/room/count",
        DEV_SECRET_KEY,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        counts,
        json!({"topic": "room", "connections": 6, "keys": 5, "presences": 6})
    );
    let (_, empty) = get(s.addr, "/api/presence/nobody/count", DEV_SECRET_KEY).await;
    assert_eq!(
        empty,
        json!({"topic": "nobody", "connections": 0, "keys": 0, "presences": 0})
    );
    assert_eq!(
        get(s.addr, "/api/presence/room/members?limit=0", DEV_SECRET_KEY)
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn query_says_which_keys_are_online_where() {
    let s = start().await;
    let mut held = Vec::new();
    for (room, key) in [("a", "alice"), ("b", "alice"), ("b", "carol")] {
        let mut c = Client::connect(s.addr, 2).await;
        let topic = format!("realtime:{room}");
        let j = c.join(&topic, Some(key)).await;
        c.track(&j, &topic, json!({})).await;
        held.push(c);
    }
    let bearer = format!("Bearer {DEV_SECRET_KEY}");
    let ask = |body: Value| {
        let bearer = bearer.clone();
        async move {
            let (status, text) = http_post(
                s.addr,
                "/api/presence/query",
                &[("Authorization", &bearer)],
                body.to_string().as_bytes(),
            )
            .await;
            (status, serde_json::from_str::<Value>(&text).unwrap())
        }
    };
    let (status, res) = ask(json!({"keys": ["alice", "bob", "carol"]})).await;
    assert_eq!(status, 200);
    assert_eq!(
        res,
        json!({"online": {"alice": ["a", "b"], "bob": [], "carol": ["b"]}, "last_seen_at": {}})
    );
    let (_, res) = ask(json!({"keys": ["alice"], "topics": ["b"]})).await;
    assert_eq!(res, json!({"online": {"alice": ["b"]}, "last_seen_at": {}}));
    // Untrack: gone from the answer.
    held[2]
        .push("1", "realtime:b", "presence", json!({"event": "untrack"}))
        .await;
    held[2].recv_event("presence_diff").await;
    let (_, res) = ask(json!({"keys": ["carol"]})).await;
    assert_eq!(res["online"], json!({"carol": []}));
    assert!(res["last_seen_at"]["carol"].as_u64().is_some(), "{res}");
    assert_eq!(ask(json!({"nope": 1})).await.0, 422);
}

#[tokio::test]
async fn only_the_service_role_may_ask() {
    let s = start().await;
    assert_eq!(get(s.addr, "/api/presence/room/count", KEY).await.0, 403);
    assert_eq!(
        get(s.addr, "/api/presence/room/count", "wrong").await.0,
        401
    );
    let service = jwt(
        json!({"role": "service_role", "exp": now() + 60}),
        DEV_JWT_SECRET,
    );
    assert_eq!(
        get(s.addr, "/api/presence/room/count", &service).await.0,
        200
    );
    let user = jwt(
        json!({"role": "authenticated", "exp": now() + 60}),
        DEV_JWT_SECRET,
    );
    assert_eq!(get(s.addr, "/api/presence/room/count", &user).await.0, 403);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let s = start().await;
    let (status, doc) = http_get(s.addr, "/api/presence/openapi.json").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<_> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        paths,
        [
            "/api/presence/query",
            "/api/presence/{topic}/count",
            "/api/presence/{topic}/members"
        ]
    );
    // The schemas' required fields are what the routes return.
    let required = |schema: &str| -> Vec<String> {
        doc["components"]["schemas"][schema]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let (_, counts) = get(s.addr, "/api/presence/x/count", DEV_SECRET_KEY).await;
    assert!(
        required("Counts").iter().all(|f| counts.get(f).is_some()),
        "{counts}"
    );
    let (_, page) = get(s.addr, "/api/presence/x/members", DEV_SECRET_KEY).await;
    assert!(
        required("MembersPage")
            .iter()
            .all(|f| page.get(f).is_some()),
        "{page}"
    );
}

async fn query(addr: std::net::SocketAddr, body: Value) -> Value {
    let (status, text) = http_request(
        addr,
        "POST",
        "/api/presence/query",
        &[
            ("apikey", DEV_SECRET_KEY),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_query_says_when_an_offline_key_was_last_seen() {
    let s = start().await;
    let mut stays = Client::connect(s.addr, 2).await;
    let js = stays.join("realtime:seen", Some("stays")).await;
    stays.track(&js, "realtime:seen", json!({})).await;
    let mut goes = Client::connect(s.addr, 2).await;
    let jg = goes.join("realtime:seen", Some("goes")).await;
    goes.track(&jg, "realtime:seen", json!({})).await;
    let before = now() * 1000;
    let r = goes
        .push(
            &jg,
            "realtime:seen",
            "presence",
            json!({"event": "untrack"}),
        )
        .await;
    goes.recv_reply(&r).await;

    let body = json!({"keys": ["stays", "goes", "never"], "topics": ["seen"]});
    let got = query(s.addr, body.clone()).await;
    assert_eq!(
        got["online"],
        json!({"stays": ["seen"], "goes": [], "never": []})
    );
    let at = got["last_seen_at"]["goes"].as_u64().expect("goes was seen");
    assert!(at >= before && at <= (now() + 1) * 1000, "{at}");
    assert_eq!(got["last_seen_at"].as_object().unwrap().len(), 1, "{got}");
    // `members` about given keys says the same, key by key, in the order asked.
    let (status, got) = get(
        s.addr,
        "/api/presence/seen/members?keys=goes&keys=stays&keys=never&keys=goes&limit=1",
        DEV_SECRET_KEY,
    )
    .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got["members"],
        json!([
            {"key": "goes", "online": false, "metas": [], "last_seen_at": at},
            {"key": "stays", "online": true, "metas": got["members"][1]["metas"]},
            {"key": "never", "online": false, "metas": []},
        ]),
        "limit pages listings only; a repeated key is answered once"
    );
    assert_eq!(got["members"][1]["metas"].as_array().unwrap().len(), 1);
    assert_eq!(got["next_cursor"], Value::Null);
    // An out-of-range limit is refused even where it would not apply (found by schemathesis).
    let (status, got) = get(
        s.addr,
        "/api/presence/seen/members?keys=goes&limit=5000",
        DEV_SECRET_KEY,
    )
    .await;
    assert_eq!(status, 400, "{got}");
    // A channel nobody has open: everyone offline, last seen still known.
    let (_, got) = get(
        s.addr,
        "/api/presence/elsewhere/members?keys=goes",
        DEV_SECRET_KEY,
    )
    .await;
    assert_eq!(
        got["members"],
        json!([{"key": "goes", "online": false, "metas": []}])
    );
    // Back online: online wins.
    goes.track(&jg, "realtime:seen", json!({})).await;
    let got = query(s.addr, body).await;
    assert_eq!(got["last_seen_at"], json!({}));
    let (_, got) = get(
        s.addr,
        "/api/presence/seen/members?keys=goes",
        DEV_SECRET_KEY,
    )
    .await;
    assert_eq!(got["members"][0]["online"], true, "{got}");
    assert!(got["members"][0].get("last_seen_at").is_none(), "{got}");
}

#[tokio::test]
async fn members_refuses_too_many_keys_before_decoding_them() {
    let s = start().await;
    let many = vec!["keys=k"; 1001].join("&");
    let (status, got) = get(
        s.addr,
        &format!("/api/presence/room/members?{many}"),
        DEV_SECRET_KEY,
    )
    .await;
    assert_eq!(status, 400, "{got}");
    assert_eq!(got["error"], "at most 1000 keys");
    let fits = vec!["keys=k"; 1000].join("&");
    let (status, got) = get(
        s.addr,
        &format!("/api/presence/room/members?{fits}"),
        DEV_SECRET_KEY,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        got["members"].as_array().unwrap().len(),
        1,
        "one distinct key"
    );
}
