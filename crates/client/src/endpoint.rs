//! The WebSocket URL, derived like supabase-js and realtime-js do.
//!
//! * project URL `http(s)://host[:port][/base]` →
//!   `ws(s)://host[:port][/base]/realtime/v1/websocket?apikey=KEY&vsn=V`;
//! * `ws(s)://…/websocket` → used as is, plus the query;
//! * any other `ws(s)://…/path` → `/websocket` appended (phx-js does).
//!
//! Query parameters already in the URL are kept, except `vsn`, which always
//! follows the options so the serializer matches. `apikey` is added unless
//! present.

use roster_protocol::Vsn;

use crate::Error;

/// The URL to open for `url` (project or WebSocket URL), `key` and `vsn`.
pub(crate) fn websocket_url(url: &str, key: &str, vsn: Vsn) -> Result<String, Error> {
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::InvalidUrl(format!("{url:?} has no scheme (http://, ws://)")))?;
    let (scheme, project) = match scheme.to_ascii_lowercase().as_str() {
        "http" => ("ws", true),
        "https" => ("wss", true),
        "ws" => ("ws", false),
        "wss" => ("wss", false),
        other => {
            return Err(Error::InvalidUrl(format!(
                "unsupported scheme {other:?} (use http, https, ws or wss)"
            )))
        }
    };
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, path) = before_query
        .find('/')
        .map_or((before_query, ""), |i| before_query.split_at(i));
    if host.is_empty() {
        return Err(Error::InvalidUrl(format!("{url:?} has no host")));
    }
    let path = path.trim_end_matches('/');
    let path = if project {
        format!("{path}/realtime/v1/websocket")
    } else if path.ends_with("/websocket") {
        path.to_owned()
    } else {
        format!("{path}/websocket")
    };
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| param_name(p) != "vsn")
        .map(str::to_owned)
        .collect();
    if !params.iter().any(|p| param_name(p) == "apikey") {
        params.insert(0, format!("apikey={}", encode(key)));
    }
    params.push(format!("vsn={}", vsn.as_str()));
    Ok(format!("{scheme}://{host}{path}?{}", params.join("&")))
}

fn param_name(param: &str) -> &str {
    param.split_once('=').map_or(param, |(name, _)| name)
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_urls_become_the_supabase_js_endpoint() {
        assert_eq!(
            websocket_url("http://127.0.0.1:4000", "sb_publishable_dev", Vsn::V2).unwrap(),
            "ws://127.0.0.1:4000/realtime/v1/websocket?apikey=sb_publishable_dev&vsn=2.0.0"
        );
        assert_eq!(
            websocket_url("https://abc.supabase.co/", "k", Vsn::V1).unwrap(),
            "wss://abc.supabase.co/realtime/v1/websocket?apikey=k&vsn=1.0.0"
        );
        assert_eq!(
            websocket_url("http://h/base/", "a b", Vsn::V2).unwrap(),
            "ws://h/base/realtime/v1/websocket?apikey=a%20b&vsn=2.0.0"
        );
    }

    #[test]
    fn websocket_urls_are_kept_with_their_params() {
        assert_eq!(
            websocket_url("ws://h:1/socket/websocket", "k", Vsn::V2).unwrap(),
            "ws://h:1/socket/websocket?apikey=k&vsn=2.0.0"
        );
        assert_eq!(
            websocket_url("ws://h/realtime/v1", "k", Vsn::V2).unwrap(),
            "ws://h/realtime/v1/websocket?apikey=k&vsn=2.0.0"
        );
        assert_eq!(
            websocket_url(
                "ws://h/realtime/v1/websocket?apikey=mine&vsn=1.0.0&log_level=info",
                "k",
                Vsn::V2
            )
            .unwrap(),
            "ws://h/realtime/v1/websocket?apikey=mine&log_level=info&vsn=2.0.0"
        );
    }

    #[test]
    fn bad_urls_are_errors() {
        for bad in ["127.0.0.1:4000", "ftp://h", "http://", "http:///x"] {
            assert!(
                matches!(websocket_url(bad, "k", Vsn::V2), Err(Error::InvalidUrl(_))),
                "{bad}"
            );
        }
    }
}
