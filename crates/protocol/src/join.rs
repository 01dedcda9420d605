//! The `phx_join` payload: tolerant parsing, as rt does.
//!
//! Clients send `broadcast`/`presence` as objects, `null`, or not at all;
//! booleans as `true` or `"true"`; and keys we do not know. Nothing here
//! fails: what does not parse takes its default.

use serde_json::Value;

/// What a join asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JoinConfig {
    pub broadcast_ack: bool,
    pub broadcast_self: bool,
    /// Send a `presence_state` after the join reply.
    pub presence_enabled: bool,
    /// `config.presence.count_only` (a Roster extension): instead of the
    /// member list, only `presence_count` pushes with the numbers.
    pub presence_count_only: bool,
    /// `config.presence.key` when non-empty (numbers are stringified).
    pub presence_key: Option<String>,
    pub private: bool,
    /// Passed through as the client sent it.
    pub postgres_changes: Vec<Value>,
    /// `access_token` (or legacy `user_token`); `None` when absent or null.
    pub access_token: Option<String>,
}

impl JoinConfig {
    pub fn parse(payload: &Value) -> Self {
        let config = payload.get("config");
        let section = |name: &str| config.and_then(|c| c.get(name));
        let flag = |sec: Option<&Value>, name: &str| {
            sec.and_then(|s| s.get(name))
                .and_then(flexible_bool)
                .unwrap_or(false)
        };
        let broadcast = section("broadcast");
        let presence = section("presence");
        let presence_key = match presence.and_then(|p| p.get("key")) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let token = |name: &str| payload.get(name).and_then(Value::as_str).map(str::to_owned);
        JoinConfig {
            broadcast_ack: flag(broadcast, "ack"),
            broadcast_self: flag(broadcast, "self"),
            presence_enabled: flag(presence, "enabled"),
            presence_count_only: flag(presence, "count_only"),
            presence_key,
            private: config
                .and_then(|c| c.get("private"))
                .and_then(flexible_bool)
                .unwrap_or(false),
            postgres_changes: section("postgres_changes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            access_token: token("access_token").or_else(|| token("user_token")),
        }
    }
}

/// `true`/`false`, or the strings in any letter case.
fn flexible_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn realtime_js_join() {
        let c = JoinConfig::parse(&json!({
            "config": {"broadcast": {"ack": false, "self": true},
                       "presence": {"key": "alice", "enabled": true},
                       "private": false, "postgres_changes": []},
            "access_token": "sb_publishable_x", "version": "realtime-js/2.119.1"
        }));
        assert!(c.broadcast_self && !c.broadcast_ack && c.presence_enabled && !c.private);
        assert_eq!(c.presence_key.as_deref(), Some("alice"));
        assert_eq!(c.access_token.as_deref(), Some("sb_publishable_x"));
    }

    #[test]
    fn tolerates_nulls_strings_and_garbage() {
        let c = JoinConfig::parse(&json!({
            "config": {"broadcast": null, "presence": {"key": "", "enabled": "TRUE"}},
            "user_token": "t"
        }));
        assert!(c.presence_enabled);
        assert_eq!(c.presence_key, None);
        assert_eq!(c.access_token.as_deref(), Some("t"));
        assert_eq!(JoinConfig::parse(&json!("garbage")), JoinConfig::default());
        assert_eq!(
            JoinConfig::parse(&json!({"config": 5})),
            JoinConfig::default()
        );
        let count = JoinConfig::parse(&json!({"config": {"presence": {"count_only": true}}}));
        assert!(count.presence_count_only);
        let numeric = JoinConfig::parse(&json!({"config": {"presence": {"key": 42}}}));
        assert_eq!(numeric.presence_key.as_deref(), Some("42"));
    }
}
