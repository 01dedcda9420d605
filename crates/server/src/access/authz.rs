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

use serde_json::Value;

use crate::access::auth::Credential;
pub use crate::settings::{Policy, Right};

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

impl Policy {
    fn applies(&self, topic: &str, cred: &Credential) -> bool {
        if self.role.as_ref().is_some_and(|r| *r != cred.role) {
            return false;
        }
        let claim = |name: &str| cred.claims.as_ref().and_then(|c| c.get(name));
        if !self.claims.iter().all(|(k, v)| claim(k) == Some(v)) {
            return false;
        }
        match segments(&self.topic, &claim) {
            Some(segments) => glob(&segments, topic),
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

/// Split a pattern at its `*`s into the literals between them (n stars,
/// n + 1 literals, some maybe empty), with `{claim}` replaced by the claim's
/// value as literal text (so a claim containing `*` matches only itself).
/// `None` when a placeholder's claim is missing or not a string or number.
fn segments<'a>(pattern: &str, claim: &dyn Fn(&str) -> Option<&'a Value>) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        if c == '*' {
            out.push(std::mem::take(&mut literal));
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
    out.push(literal);
    Some(out)
}

/// Does `text` match the pattern split into `segments` (a `*` between each two)?
///
/// Linear in the text: with only `*` wildcards, the literals between stars
/// can be found greedily left to right (the leftmost match of each leaves
/// the most room for the rest), so no backtracking is needed. The first
/// literal is anchored at the start and the last at the end. Backtracking
/// instead made a long topic of repeated literals cost seconds per join.
fn glob(segments: &[String], text: &str) -> bool {
    let Some((first, rest_segments)) = segments.split_first() else {
        return text.is_empty();
    };
    let Some(rest) = text.strip_prefix(first.as_str()) else {
        return false;
    };
    let Some((last, middle)) = rest_segments.split_last() else {
        // No star: the literal is the whole text.
        return rest.is_empty();
    };
    // The last literal must fit after the first, not overlap it.
    let Some(mut rest) = rest.strip_suffix(last.as_str()) else {
        return false;
    };
    for literal in middle {
        match rest.find(literal.as_str()) {
            Some(at) => rest = &rest[at + literal.len()..],
            None => return false,
        }
    }
    true
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
        let t = |p: &str| segments(p, &|_| None).unwrap();
        assert!(glob(&t("a*c"), "abbbc"));
        assert!(glob(&t("a*"), "a"));
        assert!(!glob(&t("a*c"), "abcd"));
        assert!(glob(&t("*"), ""));
        assert!(glob(&t("é*ü"), "éxü"));
    }

    /// Finding #14.4: backtracking over every `*` froze the node for seconds
    /// on a long topic of repeated literals. Matching must stay linear.
    #[test]
    fn glob_is_fast_on_crafted_topics() {
        let t = |p: &str| segments(p, &|_| None).unwrap();
        let pattern = t("org:*:team:*:chat");
        let body = ":team:".repeat(200_000 / 6);
        let cases = [
            (format!("org:{body}"), false),
            (format!("org:{body}:chat"), true),
            (format!("org:{body}:cha"), false),
            (format!("org:x{body}x:chat"), true),
        ];
        for (topic, expected) in cases {
            let started = std::time::Instant::now();
            assert_eq!(
                glob(&pattern, &topic),
                expected,
                "{}",
                &topic[topic.len() - 12..]
            );
            let took = started.elapsed();
            assert!(took < std::time::Duration::from_millis(500), "{took:?}");
        }
        // Many stars and a near-miss: still fast, still right.
        let stars = t("*a*a*a*a*a*a*a*a*b");
        let text = "a".repeat(200_000);
        let started = std::time::Instant::now();
        assert!(!glob(&stars, &text));
        assert!(glob(&stars, &format!("{text}b")));
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
    }

    /// The backtracking matcher this replaced: slow, but obviously right.
    fn reference(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|i| reference(rest, &text[i..])),
            Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    proptest::proptest! {
        #[test]
        fn glob_agrees_with_backtracking(pattern in "[ab:*é]{0,8}", text in "[ab:é]{0,12}") {
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            let segments = segments(&pattern, &|_| None).unwrap();
            proptest::prop_assert_eq!(glob(&segments, &text), reference(&p, &t));
        }
    }
}
