//! Authorization of private channels: policies from the config file.
//!
//! Supabase expresses these rights as RLS policies on `realtime.messages`;
//! Roster reads them from TOML:
//!
//! ```toml
//! [[policies]]
//! topic = "room:{sub}:*"        # `*` any text, `{claim}` that claim's value
//! role = "authenticated"        # optional: the credential's role
//! claims = { team = "blue" }    # optional: claims that must equal these
//! allow = ["presence-read", "presence-write", "broadcast-read", "broadcast-write"]
//! ```
//!
//! A private channel grants the union of the rights of every matching
//! policy; `service_role` has every right. Public channels need no policy.

use serde::Deserialize;
use serde_json::Value;

use crate::auth::Credential;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Right {
    PresenceRead,
    PresenceWrite,
    BroadcastRead,
    BroadcastWrite,
}

/// What a member may do in one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rights {
    pub presence_read: bool,
    pub presence_write: bool,
    pub broadcast_read: bool,
    pub broadcast_write: bool,
}

impl Rights {
    pub const ALL: Rights = Rights {
        presence_read: true,
        presence_write: true,
        broadcast_read: true,
        broadcast_write: true,
    };

    /// Joining needs some right to read.
    pub fn can_join(&self) -> bool {
        self.presence_read || self.broadcast_read
    }

    fn grant(&mut self, right: Right) {
        match right {
            Right::PresenceRead => self.presence_read = true,
            Right::PresenceWrite => self.presence_write = true,
            Right::BroadcastRead => self.broadcast_read = true,
            Right::BroadcastWrite => self.broadcast_write = true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Pattern over the topic name (without `realtime:`).
    pub topic: String,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub claims: serde_json::Map<String, Value>,
    pub allow: Vec<Right>,
}

impl Policy {
    fn applies(&self, topic: &str, cred: &Credential) -> bool {
        if self.role.as_ref().is_some_and(|r| *r != cred.role) {
            return false;
        }
        let claim = |name: &str| cred.claims.as_ref().and_then(|c| c.get(name));
        if !self.claims.iter().all(|(k, v)| claim(k) == Some(v)) {
            return false;
        }
        match tokens(&self.topic, &claim) {
            Some(tokens) => glob(&tokens, topic),
            None => false,
        }
    }
}

/// Rights of `cred` on the private channel `topic` (name without `realtime:`).
pub fn rights(policies: &[Policy], topic: &str, cred: &Credential) -> Rights {
    if cred.role == "service_role" {
        return Rights::ALL;
    }
    let mut rights = Rights::default();
    for policy in policies.iter().filter(|p| p.applies(topic, cred)) {
        for &right in &policy.allow {
            rights.grant(right);
        }
    }
    rights
}

#[derive(Debug, PartialEq)]
enum Token {
    Literal(String),
    Any,
}

/// Split a pattern into literals and wildcards, with `{claim}` replaced by the
/// claim's value as a literal (so a claim containing `*` matches only itself).
/// `None` when a placeholder's claim is missing or not a string or number.
fn tokens<'a>(pattern: &str, claim: &dyn Fn(&str) -> Option<&'a Value>) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        if c == '*' {
            if !literal.is_empty() {
                out.push(Token::Literal(std::mem::take(&mut literal)));
            }
            out.push(Token::Any);
            rest = &rest[1..];
        } else if c == '{' {
            let end = rest.find('}')?;
            let value = match claim(&rest[1..end])? {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            literal.push_str(&value);
            rest = &rest[end + 1..];
        } else {
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !literal.is_empty() {
        out.push(Token::Literal(literal));
    }
    Some(out)
}

/// Does `text` match the tokens? (`Any` matches any run of characters.)
fn glob(tokens: &[Token], text: &str) -> bool {
    match tokens.split_first() {
        None => text.is_empty(),
        Some((Token::Literal(l), rest)) => {
            text.strip_prefix(l.as_str()).is_some_and(|t| glob(rest, t))
        }
        Some((Token::Any, rest)) => text
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(text.len()))
            .any(|i| glob(rest, &text[i..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cred(role: &str, claims: Value) -> Credential {
        Credential {
            role: role.into(),
            claims: Some(claims),
        }
    }

    fn policies() -> Vec<Policy> {
        toml::from_str::<toml::Table>(
            r#"
            [[p]]
            topic = "room:{sub}:*"
            role = "authenticated"
            allow = ["presence-read", "presence-write"]
            [[p]]
            topic = "lobby"
            allow = ["broadcast-read"]
            [[p]]
            topic = "team-*"
            claims = { team = "blue" }
            allow = ["broadcast-write", "broadcast-read"]
            "#,
        )
        .unwrap()["p"]
            .clone()
            .try_into()
            .unwrap()
    }

    #[test]
    fn placeholders_roles_claims_and_wildcards() {
        let p = policies();
        let alice = cred("authenticated", json!({"sub": "alice", "team": "blue"}));
        let r = rights(&p, "room:alice:42", &alice);
        assert!(r.presence_read && r.presence_write && !r.broadcast_read);
        assert_eq!(rights(&p, "room:bob:42", &alice), Rights::default());
        assert!(rights(&p, "lobby", &alice).broadcast_read);
        assert!(rights(&p, "team-x", &alice).broadcast_write);
        let red = cred("authenticated", json!({"sub": "carol", "team": "red"}));
        assert!(!rights(&p, "team-x", &red).can_join());
        // An anon key has no claims: placeholders never match.
        let anon = Credential {
            role: "anon".into(),
            claims: None,
        };
        assert!(!rights(&p, "room:alice:1", &anon).can_join());
        assert_eq!(
            rights(&p, "anything", &cred("service_role", json!({}))),
            Rights::ALL
        );
    }

    #[test]
    fn a_claim_with_a_star_is_literal() {
        let p = policies();
        let sneaky = cred("authenticated", json!({"sub": "*"}));
        assert!(!rights(&p, "room:alice:1", &sneaky).can_join());
        assert!(rights(&p, "room:*:1", &sneaky).can_join());
    }

    #[test]
    fn glob_matches_like_a_shell() {
        let t = |p: &str| tokens(p, &|_| None).unwrap();
        assert!(glob(&t("a*c"), "abbbc"));
        assert!(glob(&t("a*"), "a"));
        assert!(!glob(&t("a*c"), "abcd"));
        assert!(glob(&t("*"), ""));
        assert!(glob(&t("é*ü"), "éxü"));
    }
}
