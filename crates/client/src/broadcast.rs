//! Broadcast messages as callbacks receive them.

use roster_protocol::{BroadcastBody, UserBroadcast};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A broadcast received on a channel.
///
/// JSON broadcasts (text frames, or kind-4 frames with a JSON payload) fill
/// `payload`; raw binary ones (vsn 2 only, e.g. from realtime-js or REST with
/// `application/octet-stream`) fill `binary` and leave `payload` null.
///
/// ```
/// use roster_client::BroadcastMessage;
///
/// let m = BroadcastMessage {
///     event: "cursor".into(),
///     payload: serde_json::json!({"x": 1}),
///     binary: None,
///     meta: None,
/// };
/// assert_eq!(m.payload["x"], 1);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct BroadcastMessage {
    /// The user event name (`send_broadcast`'s `event`).
    pub event: String,
    /// The JSON payload; `Value::Null` for a binary broadcast.
    pub payload: Value,
    /// The bytes of a binary broadcast.
    pub binary: Option<Vec<u8>>,
    /// Metadata the server attached (e.g. `{"id": …}` from REST), if any.
    pub meta: Option<Value>,
}

impl BroadcastMessage {
    /// The payload as a typed value.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct Cursor { x: i32 }
    ///
    /// let m = roster_client::BroadcastMessage {
    ///     event: "cursor".into(),
    ///     payload: serde_json::json!({"x": 3}),
    ///     binary: None,
    ///     meta: None,
    /// };
    /// assert_eq!(m.decode::<Cursor>().unwrap().x, 3);
    /// ```
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }

    /// From the payload of a JSON `broadcast` message:
    /// `{"type":"broadcast","event":…,"payload":…,"meta"?:…}`.
    pub(crate) fn from_json(payload: &Value) -> Option<Self> {
        Some(BroadcastMessage {
            event: payload.get("event")?.as_str()?.to_owned(),
            payload: payload.get("payload").cloned().unwrap_or(Value::Null),
            binary: None,
            meta: payload.get("meta").cloned(),
        })
    }

    /// From a decoded kind-4 frame.
    pub(crate) fn from_binary(b: UserBroadcast) -> Self {
        let (payload, binary) = match b.body {
            BroadcastBody::Json(text) => (serde_json::from_str(&text).unwrap_or(Value::Null), None),
            BroadcastBody::Binary(bytes) => (Value::Null, Some(bytes)),
        };
        BroadcastMessage {
            event: b.event,
            payload,
            binary,
            meta: b.meta.and_then(|m| serde_json::from_str(&m).ok()),
        }
    }
}
