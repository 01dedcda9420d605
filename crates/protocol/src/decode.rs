//! Text frames → envelopes.

use serde_json::Value;

use crate::Vsn;

/// The five fields every message has. `payload` is whatever JSON was sent;
/// its meaning is typed later by [`crate::ClientEvent`].
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub join_ref: Option<String>,
    pub ref_: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// Why a frame could not be read. The socket stays open; the frame is dropped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("vsn {expected} frames are JSON {shape}")]
    Shape {
        expected: &'static str,
        shape: &'static str,
    },
    #[error("vsn 2.0.0 frames are arrays of at least 5 elements, got {0}")]
    TooShort(usize),
    #[error("field `{0}` must be a string")]
    NotAString(&'static str),
    #[error("field `{0}` must be a string, a number or null")]
    BadRef(&'static str),
}

/// Decode one text frame of a connection speaking `vsn`.
pub fn decode(vsn: Vsn, text: &str) -> Result<Frame, DecodeError> {
    let value: Value = serde_json::from_str(text)?;
    match (vsn, value) {
        (Vsn::V1, Value::Object(mut obj)) => Ok(Frame {
            join_ref: opt_ref(obj.remove("join_ref"), "join_ref")?,
            ref_: opt_ref(obj.remove("ref"), "ref")?,
            topic: string(obj.remove("topic"), "topic")?,
            event: string(obj.remove("event"), "event")?,
            payload: obj.remove("payload").unwrap_or(Value::Null),
        }),
        (Vsn::V1, _) => Err(DecodeError::Shape {
            expected: "1.0.0",
            shape: "objects",
        }),
        (Vsn::V2, Value::Array(items)) => {
            // Trailing extra elements are tolerated, as rt does.
            if items.len() < 5 {
                return Err(DecodeError::TooShort(items.len()));
            }
            let mut it = items.into_iter();
            let mut next = || it.next().expect("length checked");
            Ok(Frame {
                join_ref: opt_ref(Some(next()), "join_ref")?,
                ref_: opt_ref(Some(next()), "ref")?,
                topic: string(Some(next()), "topic")?,
                event: string(Some(next()), "event")?,
                payload: next(),
            })
        }
        (Vsn::V2, _) => Err(DecodeError::Shape {
            expected: "2.0.0",
            shape: "arrays",
        }),
    }
}

/// Where to answer a frame that [`decode`] refused: its refs and topic (in
/// a `Frame` with an empty event and a null payload), when the text is JSON
/// of the vsn's shape and those three can be read. `None` means the frame
/// cannot be answered at all.
pub fn reply_address(vsn: Vsn, text: &str) -> Option<Frame> {
    let value: Value = serde_json::from_str(text).ok()?;
    let (join_ref, ref_, topic) = match (vsn, value) {
        (Vsn::V1, Value::Object(mut obj)) => (
            obj.remove("join_ref"),
            obj.remove("ref"),
            obj.remove("topic"),
        ),
        (Vsn::V2, Value::Array(items)) => {
            let mut it = items.into_iter();
            (it.next(), it.next(), it.next())
        }
        _ => return None,
    };
    Some(Frame {
        join_ref: opt_ref(join_ref, "join_ref").ok()?,
        ref_: Some(opt_ref(ref_, "ref").ok()??),
        topic: string(topic, "topic").ok()?,
        event: String::new(),
        payload: Value::Null,
    })
}

fn string(v: Option<Value>, field: &'static str) -> Result<String, DecodeError> {
    match v {
        Some(Value::String(s)) => Ok(s),
        _ => Err(DecodeError::NotAString(field)),
    }
}

/// Refs are strings in practice; numbers are tolerated and echoed as text.
fn opt_ref(v: Option<Value>, field: &'static str) -> Result<Option<String>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(DecodeError::BadRef(field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn v1_realtime_py_heartbeat_with_null_ref() {
        let f = decode(
            Vsn::V1,
            r#"{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}"#,
        )
        .unwrap();
        assert_eq!(f.topic, "phoenix");
        assert_eq!(f.event, "heartbeat");
        assert_eq!(f.ref_, None);
        assert_eq!(f.payload, json!({}));
    }

    #[test]
    fn v2_array_with_extra_elements() {
        let f = decode(
            Vsn::V2,
            r#"["1","2","realtime:a","phx_join",{"x":1},"extra"]"#,
        )
        .unwrap();
        assert_eq!(f.join_ref.as_deref(), Some("1"));
        assert_eq!(f.ref_.as_deref(), Some("2"));
        assert_eq!(f.payload, json!({"x": 1}));
    }

    #[test]
    fn refused_frames_are_answered_where_their_address_reads() {
        let f = reply_address(Vsn::V2, r#"["1","2","realtime:a"]"#).unwrap();
        assert_eq!(
            (f.join_ref.as_deref(), f.ref_.as_deref()),
            (Some("1"), Some("2"))
        );
        assert_eq!(f.topic, "realtime:a");
        let f = reply_address(Vsn::V1, r#"{"topic":"t","ref":7,"event":5}"#).unwrap();
        assert_eq!(f.ref_.as_deref(), Some("7"));
        // No JSON, the other vsn's shape, no ref or no topic: nowhere to answer.
        for text in [
            "nope",
            r#"{"topic":"t","ref":"1"}"#,
            r#"[null,null,"t"]"#,
            r#"[null,"1",5]"#,
        ] {
            assert!(reply_address(Vsn::V2, text).is_none(), "{text}");
        }
    }

    #[test]
    fn errors_are_specific() {
        assert!(matches!(decode(Vsn::V2, "nope"), Err(DecodeError::Json(_))));
        assert!(matches!(
            decode(Vsn::V2, r#"{"topic":"x"}"#),
            Err(DecodeError::Shape { .. })
        ));
        assert!(matches!(
            decode(Vsn::V1, r#"["1","2","t","e",{}]"#),
            Err(DecodeError::Shape { .. })
        ));
        assert!(matches!(
            decode(Vsn::V2, r#"[null,null,"t"]"#),
            Err(DecodeError::TooShort(3))
        ));
        assert!(matches!(
            decode(Vsn::V2, r#"[null,null,5,"e",{}]"#),
            Err(DecodeError::NotAString("topic"))
        ));
        assert!(matches!(
            decode(Vsn::V1, r#"{"topic":"t","event":"e","ref":[1]}"#),
            Err(DecodeError::BadRef("ref"))
        ));
        assert_eq!(
            decode(Vsn::V2, r#"[null,null,5,"e",{}]"#)
                .unwrap_err()
                .to_string(),
            "field `topic` must be a string"
        );
    }
}
