//! The demo page: static assets embedded in the binary (no CDN, no network
//! at run time), plus a tiny generated `config.js` that tells the page where
//! the server is and which publishable key to use. The bundle
//! (`assets/demo/app.js`) is built from `demo/` by `demo/build.sh` and
//! committed, so `cargo build` needs no Node.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::server::Server;

const INDEX: &str = include_str!("../../assets/demo/index.html");
const APP_JS: &str = include_str!("../../assets/demo/app.js");
const STYLE: &str = include_str!("../../assets/demo/style.css");

pub fn router() -> Router<Arc<Server>> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/demo") }))
        .route(
            "/demo",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/demo/app.js",
            get(|| async { page("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/demo/style.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
        .route("/demo/config.js", get(config))
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The publishable key is meant for browsers; the page needs it to connect.
async fn config(State(server): State<Arc<Server>>) -> Response {
    let key = serde_json::to_string(&server.settings.keys.publishable).expect("strings serialise");
    let body = format!("window.ROSTER_CONFIG = {{ key: {key} }};\n");
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
