//! Broadcast messages, in their three client forms and two server forms.
//!
//! In: a `broadcast` push as JSON (vsn 1 object or vsn 2 array), or, from
//! realtime-js ≥ 2.91, a binary kind-3 frame whose payload is JSON or raw
//! bytes. Out: JSON text for everyone when the payload is JSON; a binary
//! kind-4 frame for vsn-2 subscribers when it is raw bytes (vsn-1 clients
//! cannot receive those, as in rt).

use serde_json::Value;

use crate::{events, Frame, Outgoing, Vsn};

/// The user's payload.
#[derive(Clone, Debug, PartialEq)]
pub enum BroadcastBody {
    /// JSON text.
    Json(String),
    Binary(Vec<u8>),
}

impl BroadcastBody {
    /// Bytes of the payload as it will be sent on.
    pub fn len(&self) -> usize {
        match self {
            BroadcastBody::Json(text) => text.len(),
            BroadcastBody::Binary(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A user broadcast: `channel.send({type: 'broadcast', event, payload})`.
#[derive(Clone, Debug, PartialEq)]
pub struct UserBroadcast {
    pub event: String,
    pub body: BroadcastBody,
    /// Optional metadata object (JSON text), e.g. `{"id": …}` from REST.
    pub meta: Option<String>,
}

/// Why a binary frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BinaryError {
    #[error("empty binary frame")]
    Empty,
    #[error("binary frame of kind {0} is not accepted from clients (only kind 3)")]
    UnknownKind(u8),
    #[error("binary frame is shorter than its header says")]
    Truncated,
    #[error("binary frame field `{0}` is not UTF-8")]
    NotUtf8(&'static str),
    #[error("binary frame payload encoding {0} is unknown")]
    UnknownEncoding(u8),
    #[error("binary frame JSON payload or metadata does not parse")]
    BadJson,
    #[error("binary frame of kind {0} is not a server user broadcast (only kind 4)")]
    NotUserBroadcast(u8),
}

const KIND_USER_BROADCAST_PUSH: u8 = 3;
const KIND_USER_BROADCAST: u8 = 4;
const ENCODING_BINARY: u8 = 0;
const ENCODING_JSON: u8 = 1;

impl UserBroadcast {
    /// From a JSON `broadcast` push payload: `{"type":"broadcast","event":..,"payload":..}`.
    /// `None` when there is no string `event`.
    pub fn from_json_payload(payload: &Value) -> Option<Self> {
        let event = payload.get("event")?.as_str()?.to_owned();
        let body = payload
            .get("payload")
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default()));
        Some(UserBroadcast {
            event,
            body: BroadcastBody::Json(body.to_string()),
            meta: None,
        })
    }

    /// The payload of a JSON `broadcast` message; `None` for a binary body.
    pub fn json_payload(&self) -> Option<String> {
        let BroadcastBody::Json(body) = &self.body else {
            return None;
        };
        let event = serde_json::to_string(&self.event).expect("strings serialise");
        let meta = self
            .meta
            .as_deref()
            .map(|m| format!(",\"meta\":{m}"))
            .unwrap_or_default();
        Some(format!(
            "{{\"type\":\"broadcast\",\"event\":{event},\"payload\":{body}{meta}}}"
        ))
    }

    /// What a subscriber speaking `vsn` receives for this broadcast on `topic`,
    /// or `None` if it cannot receive it.
    pub fn encode(&self, vsn: Vsn, topic: &str) -> Option<Encoded> {
        match (&self.body, vsn) {
            (BroadcastBody::Json(_), _) => {
                let payload = self.json_payload()?;
                Some(Encoded::Text(
                    Outgoing::fanout(topic, events::BROADCAST, &payload).encode(vsn),
                ))
            }
            (BroadcastBody::Binary(bytes), Vsn::V2) => {
                let meta = self.meta.as_deref().unwrap_or("");
                let fields = [topic.as_bytes(), self.event.as_bytes(), meta.as_bytes()];
                if fields.iter().any(|f| f.len() > 255) {
                    return None;
                }
                let mut out = Vec::with_capacity(
                    5 + fields.iter().map(|f| f.len()).sum::<usize>() + bytes.len(),
                );
                out.push(KIND_USER_BROADCAST);
                out.extend(fields.iter().map(|f| f.len() as u8));
                out.push(ENCODING_BINARY);
                for f in fields {
                    out.extend_from_slice(f);
                }
                out.extend_from_slice(bytes);
                Some(Encoded::Binary(out))
            }
            (BroadcastBody::Binary(_), Vsn::V1) => None,
        }
    }
}

/// A server frame, text or binary.
#[derive(Clone, Debug, PartialEq)]
pub enum Encoded {
    Text(String),
    Binary(Vec<u8>),
}

/// A decoded kind-3 frame: the envelope of a `broadcast` push and its message.
#[derive(Clone, Debug, PartialEq)]
pub struct BinaryPush {
    pub join_ref: Option<String>,
    pub ref_: Option<String>,
    pub topic: String,
    pub broadcast: UserBroadcast,
}

impl BinaryPush {
    /// The envelope as a [`Frame`] (payload left null), for replies.
    pub fn envelope(&self) -> Frame {
        Frame {
            join_ref: self.join_ref.clone(),
            ref_: self.ref_.clone(),
            topic: self.topic.clone(),
            event: events::BROADCAST.into(),
            payload: Value::Null,
        }
    }
}

/// Decode a binary frame from a vsn-2 client. Only kind 3 is accepted.
pub fn decode_binary(bytes: &[u8]) -> Result<BinaryPush, BinaryError> {
    let (&kind, rest) = bytes.split_first().ok_or(BinaryError::Empty)?;
    if kind != KIND_USER_BROADCAST_PUSH {
        return Err(BinaryError::UnknownKind(kind));
    }
    let ([join_ref, ref_, topic, event, meta], encoding, payload) =
        split_fields(rest, ["join_ref", "ref", "topic", "event", "metadata"])?;
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(BinaryPush {
        join_ref: non_empty(join_ref),
        ref_: non_empty(ref_),
        topic,
        broadcast: UserBroadcast {
            event,
            body: decode_body(encoding, payload)?,
            meta: decode_meta(&meta)?,
        },
    })
}

/// A decoded kind-4 frame: a user broadcast a vsn-2 client received.
#[derive(Clone, Debug, PartialEq)]
pub struct BinaryBroadcast {
    pub topic: String,
    pub broadcast: UserBroadcast,
}

/// Decode a binary frame a vsn-2 *client* received from the server.
/// Only kind 4 exists in that direction (docs/protocol.md §2.3).
pub fn decode_user_broadcast(bytes: &[u8]) -> Result<BinaryBroadcast, BinaryError> {
    let (&kind, rest) = bytes.split_first().ok_or(BinaryError::Empty)?;
    if kind != KIND_USER_BROADCAST {
        return Err(BinaryError::NotUserBroadcast(kind));
    }
    let ([topic, event, meta], encoding, payload) =
        split_fields(rest, ["topic", "event", "metadata"])?;
    Ok(BinaryBroadcast {
        topic,
        broadcast: UserBroadcast {
            event,
            body: decode_body(encoding, payload)?,
            meta: decode_meta(&meta)?,
        },
    })
}

/// Both binary kinds, after the kind byte: N one-byte lengths, the payload
/// encoding byte, the N UTF-8 fields, then the payload to the end.
fn split_fields<'a, const N: usize>(
    rest: &'a [u8],
    names: [&'static str; N],
) -> Result<([String; N], u8, &'a [u8]), BinaryError> {
    let header = rest.get(..=N).ok_or(BinaryError::Truncated)?;
    let (lens, encoding) = (&header[..N], header[N]);
    let mut body = &rest[N + 1..];
    let mut fields: [String; N] = std::array::from_fn(|_| String::new());
    for ((field, &len), name) in fields.iter_mut().zip(lens).zip(names) {
        let len = usize::from(len);
        let bytes = body.get(..len).ok_or(BinaryError::Truncated)?;
        body = &body[len..];
        *field = String::from_utf8(bytes.to_vec()).map_err(|_| BinaryError::NotUtf8(name))?;
    }
    Ok((fields, encoding, body))
}

fn decode_body(encoding: u8, payload: &[u8]) -> Result<BroadcastBody, BinaryError> {
    match encoding {
        ENCODING_JSON => {
            let text = std::str::from_utf8(payload).map_err(|_| BinaryError::BadJson)?;
            Ok(BroadcastBody::Json(json_as_sent(text)?))
        }
        ENCODING_BINARY => Ok(BroadcastBody::Binary(payload.to_vec())),
        other => Err(BinaryError::UnknownEncoding(other)),
    }
}

fn decode_meta(meta: &str) -> Result<Option<String>, BinaryError> {
    if meta.is_empty() {
        return Ok(None);
    }
    json_as_sent(meta).map(Some)
}

/// Checks that `text` is one JSON value and keeps it as the client wrote it,
/// less surrounding whitespace. Re-serialising through `Value` would round
/// large numbers through f64 and change what the other members receive;
/// parsing through it still refuses what `Value` cannot hold (`1e400`),
/// as the JSON text path does.
fn json_as_sent(text: &str) -> Result<String, BinaryError> {
    serde_json::from_str::<Value>(text).map_err(|_| BinaryError::BadJson)?;
    let raw: &serde_json::value::RawValue =
        serde_json::from_str(text).map_err(|_| BinaryError::BadJson)?;
    Ok(raw.get().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame realtime-js 2.119.1 sends for
    /// `send({type:'broadcast', event:'cursor', payload:{x:10,y:20}})` (docs/protocol.md §5.1).
    fn js_kind3() -> Vec<u8> {
        let mut f = vec![3, 1, 2, 16, 6, 0, 1];
        f.extend_from_slice(b"4");
        f.extend_from_slice(b"13");
        f.extend_from_slice(b"realtime:room_01");
        f.extend_from_slice(b"cursor");
        f.extend_from_slice(br#"{"x":10,"y":20}"#);
        f
    }

    #[test]
    fn decodes_the_realtime_js_kind3_frame() {
        let push = decode_binary(&js_kind3()).unwrap();
        assert_eq!(push.join_ref.as_deref(), Some("4"));
        assert_eq!(push.ref_.as_deref(), Some("13"));
        assert_eq!(push.topic, "realtime:room_01");
        assert_eq!(push.broadcast.event, "cursor");
        assert_eq!(
            push.broadcast.body,
            BroadcastBody::Json(r#"{"x":10,"y":20}"#.into())
        );
        let v1 = push.broadcast.encode(Vsn::V1, "realtime:room_01").unwrap();
        let Encoded::Text(t) = v1 else { panic!() };
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"topic":"realtime:room_01","event":"broadcast",
                "payload":{"type":"broadcast","event":"cursor","payload":{"x":10,"y":20}},"ref":null})
        );
    }

    #[test]
    fn binary_payloads_become_kind4_for_v2_and_nothing_for_v1() {
        let b = UserBroadcast {
            event: "blob".into(),
            body: BroadcastBody::Binary(vec![1, 2, 3]),
            meta: None,
        };
        assert_eq!(b.encode(Vsn::V1, "realtime:r"), None);
        let Some(Encoded::Binary(f)) = b.encode(Vsn::V2, "realtime:r") else {
            panic!()
        };
        assert_eq!(
            f,
            [&[4u8, 10, 4, 0, 0][..], b"realtime:r", b"blob", &[1, 2, 3]].concat()
        );
    }

    /// Found by the decode_binary fuzz target: a 27-digit number in the
    /// metadata came out as a rounded float. Numbers are forwarded as sent.
    #[test]
    fn json_in_binary_frames_is_forwarded_as_sent() {
        let big = "222222228222220222222222222";
        let mut f = vec![3, 0, 0, 2, 1, big.len() as u8, ENCODING_JSON];
        f.extend_from_slice(b"22");
        f.extend_from_slice(b"2");
        f.extend_from_slice(big.as_bytes());
        f.extend_from_slice(b"[0.1000000000000000055511151231257827, 12345678901234567890123]");
        let push = decode_binary(&f).unwrap();
        assert_eq!(push.broadcast.meta.as_deref(), Some(big));
        assert_eq!(
            push.broadcast.body,
            BroadcastBody::Json(
                "[0.1000000000000000055511151231257827, 12345678901234567890123]".into()
            )
        );
        f[6] = ENCODING_BINARY;
        let Some(Encoded::Binary(kind4)) =
            decode_binary(&f).unwrap().broadcast.encode(Vsn::V2, "22")
        else {
            panic!("raw bytes go out as kind 4")
        };
        let back = decode_user_broadcast(&kind4).unwrap();
        assert_eq!(back.broadcast.meta.as_deref(), Some(big));
        let mut bad = f.clone();
        bad[7 + 3] = b'@';
        assert_eq!(decode_binary(&bad).err(), Some(BinaryError::BadJson));
        // Found by the fuzz target too: a number no JSON reader here can hold.
        let mut huge = vec![3, 0, 0, 2, 1, 0, ENCODING_JSON];
        huge.extend_from_slice(b"222[1e400]");
        assert_eq!(decode_binary(&huge).err(), Some(BinaryError::BadJson));
    }

    #[test]
    fn kind4_round_trips_through_the_client_decoder() {
        let b = UserBroadcast {
            event: "blob".into(),
            body: BroadcastBody::Binary(vec![1, 2, 3]),
            meta: Some(r#"{"id":"x"}"#.into()),
        };
        let Some(Encoded::Binary(f)) = b.encode(Vsn::V2, "realtime:r") else {
            panic!()
        };
        let got = decode_user_broadcast(&f).unwrap();
        assert_eq!(got.topic, "realtime:r");
        assert_eq!(got.broadcast, b);
        let mut json = vec![4, 1, 1, 0, 1, b't', b'e'];
        json.extend_from_slice(br#"{"a": 1}"#);
        assert_eq!(
            decode_user_broadcast(&json).unwrap().broadcast.body,
            BroadcastBody::Json(r#"{"a": 1}"#.into())
        );
        assert_eq!(decode_user_broadcast(&[]), Err(BinaryError::Empty));
        assert_eq!(
            decode_user_broadcast(&js_kind3()),
            Err(BinaryError::NotUserBroadcast(3))
        );
        assert_eq!(
            decode_user_broadcast(&[4, 9, 0, 0, 0, b'x']),
            Err(BinaryError::Truncated)
        );
        assert_eq!(
            decode_user_broadcast(&[4, 0, 0, 0, 7]),
            Err(BinaryError::UnknownEncoding(7))
        );
    }

    #[test]
    fn bad_binary_frames_are_errors() {
        assert_eq!(decode_binary(&[]), Err(BinaryError::Empty));
        assert_eq!(decode_binary(&[0, 1]), Err(BinaryError::UnknownKind(0)));
        assert_eq!(decode_binary(&[3, 1, 1]), Err(BinaryError::Truncated));
        assert_eq!(
            decode_binary(&[3, 9, 0, 0, 0, 0, 1, b'x']),
            Err(BinaryError::Truncated)
        );
        assert_eq!(
            decode_binary(&[3, 0, 0, 1, 1, 0, 7, b't', b'e']),
            Err(BinaryError::UnknownEncoding(7))
        );
        assert_eq!(
            decode_binary(&[3, 0, 0, 1, 1, 0, 1, b't', b'e', b'{']),
            Err(BinaryError::BadJson)
        );
        assert_eq!(
            decode_binary(&[3, 0, 0, 1, 1, 0, 0, 0xff, b'e']),
            Err(BinaryError::NotUtf8("topic"))
        );
    }
}
