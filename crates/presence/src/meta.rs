//! A presence meta: the user's tracked object plus the refs Phoenix adds.

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::{Map, Value};

/// The user's tracked object, kept as canonical JSON text.
///
/// Canonical (keys sorted, no whitespace) so that "same payload as last time"
/// is a string comparison, and so that rendering a snapshot is concatenation
/// rather than re-serialising a tree for every recipient.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State(Arc<str>);

/// Why a tracked payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// Presence state must be a JSON object (or absent, meaning `{}`).
    NotAnObject,
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Presence track payload must be a map")
    }
}

impl std::error::Error for StateError {}

impl State {
    /// The empty object `{}`.
    pub fn empty() -> Self {
        State(Arc::from("{}"))
    }

    /// Build from what a client sent as `payload.payload` of a `track`.
    /// `None` and `null` mean `{}`. `phx_ref` / `phx_ref_prev` are ours and are
    /// dropped from the user's object rather than duplicated.
    pub fn from_value(value: Option<Value>) -> Result<Self, StateError> {
        match value {
            None | Some(Value::Null) => Ok(State::empty()),
            Some(Value::Object(mut map)) => {
                map.remove("phx_ref");
                map.remove("phx_ref_prev");
                Ok(Self::from_map(&map))
            }
            Some(_) => Err(StateError::NotAnObject),
        }
    }

    /// Canonical text of an object. serde_json's `Map` is a `BTreeMap` here
    /// (no `preserve_order`), so keys come out sorted.
    pub fn from_map(map: &Map<String, Value>) -> Self {
        State(Arc::from(
            serde_json::to_string(map).expect("a JSON map always serialises"),
        ))
    }

    /// The canonical JSON text, always an object.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// Parsed back into a JSON object (for tests and clients; the server never needs it).
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(&self.0).expect("State always holds an object")
    }
}

/// One tracked presence: what a single channel join contributes under its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Unique, opaque, stable while the meta is unchanged (or updated in
    /// place: see [`Self::is_replaced`]).
    pub phx_ref: Arc<str>,
    /// On a meta produced by an update: the ref of the meta it replaced;
    /// its own ref when it was updated in place.
    pub phx_ref_prev: Option<Arc<str>>,
    pub state: State,
}

impl Meta {
    /// Whether this meta's state was updated in place (a replace update),
    /// so a client may hold it under the same ref with an older state.
    pub fn is_replaced(&self) -> bool {
        self.phx_ref_prev.as_deref() == Some(&*self.phx_ref)
    }

    /// Append the wire form: the user's fields with `phx_ref` (and
    /// `phx_ref_prev`) merged in at top level.
    pub fn write_json(&self, out: &mut String) {
        let user = self.state.as_json();
        // `user` is `{...}`: reuse its body and close it with our fields.
        let body = &user[1..user.len() - 1];
        out.push('{');
        out.push_str(body);
        if !body.is_empty() {
            out.push(',');
        }
        // Refs are URL-safe base64 (or, from the outside, at least strings we
        // escape); writing them through serde keeps any input safe.
        let _ = write!(out, "\"phx_ref\":{}", json_string(&self.phx_ref));
        if let Some(prev) = &self.phx_ref_prev {
            let _ = write!(out, ",\"phx_ref_prev\":{}", json_string(prev));
        }
        out.push('}');
    }

    /// The wire form as a parsed JSON value.
    pub fn to_value(&self) -> Value {
        let mut s = String::new();
        self.write_json(&mut s);
        serde_json::from_str(&s).expect("meta renders valid JSON")
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_state_ignores_key_order_and_our_refs() {
        let a = State::from_value(Some(json!({"b": 1, "a": [1, 2]}))).unwrap();
        let b = State::from_value(Some(json!({"a": [1, 2], "phx_ref": "x", "b": 1}))).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_json(), r#"{"a":[1,2],"b":1}"#);
    }

    #[test]
    fn absent_or_null_is_empty_object_and_scalars_are_refused() {
        assert_eq!(State::from_value(None).unwrap().as_json(), "{}");
        assert_eq!(
            State::from_value(Some(Value::Null)).unwrap().as_json(),
            "{}"
        );
        assert_eq!(
            State::from_value(Some(json!("x"))),
            Err(StateError::NotAnObject)
        );
        assert_eq!(
            State::from_value(Some(json!([1]))),
            Err(StateError::NotAnObject)
        );
    }

    #[test]
    fn meta_renders_fields_and_refs() {
        let meta = Meta {
            phx_ref: "r2".into(),
            phx_ref_prev: Some("r1".into()),
            state: State::from_value(Some(json!({"user": "u\"1"}))).unwrap(),
        };
        assert_eq!(
            meta.to_value(),
            json!({"user": "u\"1", "phx_ref": "r2", "phx_ref_prev": "r1"})
        );
        let empty = Meta {
            phx_ref: "r".into(),
            phx_ref_prev: None,
            state: State::empty(),
        };
        assert_eq!(empty.to_value(), json!({"phx_ref": "r"}));
    }
}
