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
    /// `config.presence.updates` (a Roster extension): how this member's
    /// state changes reach the others, `None` for the server's default.
    pub presence_updates: Option<PresenceUpdates>,
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
            presence_updates: presence
                .and_then(|p| p.get("updates"))
                .and_then(Value::as_str)
                .and_then(PresenceUpdates::parse),
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

impl JoinConfig {
    /// Whether the payload has the shape of a join, naming the first field
    /// that does not. Parsing itself is tolerant (what is missing or null
    /// takes its default); a field of the wrong type is a client bug that
    /// deserves an answer rather than a silent default.
    pub fn check(payload: &Value) -> Result<(), String> {
        let is_flag = |v: &Value| v.is_null() || flexible_bool(v).is_some();
        let obj_or_null = |v: &Value| v.is_null() || v.is_object();
        let payload = match payload {
            Value::Null => return Ok(()),
            Value::Object(p) => p,
            _ => return Err("the join payload must be an object".into()),
        };
        for name in ["access_token", "user_token"] {
            if payload
                .get(name)
                .is_some_and(|t| !t.is_null() && !t.is_string())
            {
                return Err(format!("{name} must be a string"));
            }
        }
        let Some(config) = payload.get("config").filter(|c| !c.is_null()) else {
            return Ok(());
        };
        if !config.is_object() {
            return Err("config must be an object".into());
        }
        for section in ["broadcast", "presence"] {
            if config.get(section).is_some_and(|s| !obj_or_null(s)) {
                return Err(format!("config.{section} must be an object"));
            }
        }
        let flags = [
            ("broadcast", "ack"),
            ("broadcast", "self"),
            ("presence", "enabled"),
            ("presence", "count_only"),
        ];
        for (section, name) in flags {
            if config
                .get(section)
                .and_then(|s| s.get(name))
                .is_some_and(|f| !is_flag(f))
            {
                return Err(format!("config.{section}.{name} must be a boolean"));
            }
        }
        if config.get("private").is_some_and(|f| !is_flag(f)) {
            return Err("config.private must be a boolean".into());
        }
        let updates = config.get("presence").and_then(|p| p.get("updates"));
        if updates.is_some_and(|u| {
            !(u.is_null()
                || u.as_str()
                    .is_some_and(|u| PresenceUpdates::parse(u).is_some()))
        }) {
            return Err(r#"config.presence.updates must be "classic" or "replace""#.into());
        }
        let key = config.get("presence").and_then(|p| p.get("key"));
        if key.is_some_and(|k| !(k.is_null() || k.is_string() || k.is_number())) {
            return Err("config.presence.key must be a string".into());
        }
        let changes = config.get("postgres_changes");
        if changes.is_some_and(|c| !(c.is_null() || c.is_array())) {
            return Err("config.postgres_changes must be an array".into());
        }
        Ok(())
    }
}

/// `config.presence.updates`: how a member's state change is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceUpdates {
    /// The new meta under a new ref plus a leave of the old (Supabase).
    Classic,
    /// The new meta under the old ref, no leave.
    Replace,
}

impl PresenceUpdates {
    /// `"classic"` or `"replace"`, exactly (the value is short, so an
    /// unknown one is refused without copying it).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "classic" => Some(Self::Classic),
            "replace" => Some(Self::Replace),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Replace => "replace",
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
        assert_eq!(count.presence_updates, None);
        let quiet = JoinConfig::parse(&json!({"config": {"presence": {"updates": "replace"}}}));
        assert_eq!(quiet.presence_updates, Some(PresenceUpdates::Replace));
        let classic = JoinConfig::parse(&json!({"config": {"presence": {"updates": "classic"}}}));
        assert_eq!(classic.presence_updates, Some(PresenceUpdates::Classic));
        let numeric = JoinConfig::parse(&json!({"config": {"presence": {"key": 42}}}));
        assert_eq!(numeric.presence_key.as_deref(), Some("42"));
    }

    #[test]
    fn check_names_the_field_of_the_wrong_type() {
        let ok = [
            json!(null),
            json!({}),
            json!({"config": null}),
            json!({"config": {"broadcast": null, "presence": {"key": "", "enabled": "TRUE"}}}),
            json!({"config": {"presence": {"key": 42}, "private": "false", "postgres_changes": []},
                   "access_token": null}),
            json!({"config": {"presence": {"updates": "replace"}}}),
            json!({"config": {"presence": {"updates": null}}}),
            // realtime-py's join, with its unknown `replay` key.
            json!({"config": {"broadcast": {"ack": false, "self": false, "replay": null},
                   "presence": {"key": "", "enabled": false}, "private": false},
                   "access_token": "sb_publishable_x"}),
        ];
        for p in ok {
            assert_eq!(JoinConfig::check(&p), Ok(()), "{p}");
        }
        let bad = [
            (json!("garbage"), "the join payload must be an object"),
            (json!({"config": "x"}), "config must be an object"),
            (json!({"config": []}), "config must be an object"),
            (
                json!({"config": {"presence": {"key": {"a": 1}}}}),
                "config.presence.key must be a string",
            ),
            (
                json!({"config": {"presence": 5}}),
                "config.presence must be an object",
            ),
            (
                json!({"config": {"broadcast": "yes"}}),
                "config.broadcast must be an object",
            ),
            (
                json!({"config": {"private": 7}}),
                "config.private must be a boolean",
            ),
            (
                json!({"config": {"broadcast": {"ack": [1]}}}),
                "config.broadcast.ack must be a boolean",
            ),
            (
                json!({"config": {"postgres_changes": {}}}),
                "config.postgres_changes must be an array",
            ),
            (json!({"access_token": 5}), "access_token must be a string"),
            (
                json!({"config": {"presence": {"updates": "REPLACE"}}}),
                r#"config.presence.updates must be "classic" or "replace""#,
            ),
            (
                json!({"config": {"presence": {"updates": true}}}),
                r#"config.presence.updates must be "classic" or "replace""#,
            ),
        ];
        for (p, why) in bad {
            assert_eq!(JoinConfig::check(&p), Err(why.to_owned()), "{p}");
        }
    }
}
