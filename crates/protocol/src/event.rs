//! What a client asked for, typed from a decoded [`Frame`].

use serde_json::Value;

use crate::{events, Frame, JoinConfig, UserBroadcast, PHOENIX_TOPIC};

/// A client message, by meaning.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// `heartbeat` on topic `phoenix`.
    Heartbeat,
    Join(JoinConfig),
    Leave,
    Presence(PresenceAction),
    /// `access_token` refresh; `None` for null or a missing value.
    AccessToken(Option<String>),
    /// `broadcast` as JSON; `None` when it has no string `event`.
    Broadcast(Option<UserBroadcast>),
    /// Anything else: counted and ignored inside a channel, as rt does.
    Other,
}

/// The `event` of a `presence` push (any letter case; `type` is not needed).
#[derive(Clone, Debug, PartialEq)]
pub enum PresenceAction {
    /// `payload.payload`, as sent (`None` when absent).
    Track(Option<Value>),
    Untrack,
    /// No `event` field: answered `ok`, nothing happens.
    Missing,
    /// An event we do not know, or a payload that is not an object.
    Unknown,
}

impl ClientEvent {
    pub fn from_frame(frame: &Frame) -> Self {
        let payload = &frame.payload;
        match frame.event.as_str() {
            events::HEARTBEAT if frame.topic == PHOENIX_TOPIC => ClientEvent::Heartbeat,
            events::JOIN => ClientEvent::Join(JoinConfig::parse(payload)),
            events::LEAVE => ClientEvent::Leave,
            events::PRESENCE => ClientEvent::Presence(PresenceAction::parse(payload)),
            events::ACCESS_TOKEN => ClientEvent::AccessToken(
                payload
                    .get("access_token")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            ),
            events::BROADCAST => ClientEvent::Broadcast(UserBroadcast::from_json_payload(payload)),
            _ => ClientEvent::Other,
        }
    }
}

impl PresenceAction {
    fn parse(payload: &Value) -> Self {
        let Value::Object(obj) = payload else {
            return PresenceAction::Unknown;
        };
        match obj.get("event") {
            None | Some(Value::Null) => PresenceAction::Missing,
            Some(Value::String(e)) if e.eq_ignore_ascii_case("track") => {
                PresenceAction::Track(obj.get("payload").cloned())
            }
            Some(Value::String(e)) if e.eq_ignore_ascii_case("untrack") => PresenceAction::Untrack,
            Some(_) => PresenceAction::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(name: &str, topic: &str, payload: Value) -> ClientEvent {
        ClientEvent::from_frame(&Frame {
            join_ref: None,
            ref_: None,
            topic: topic.into(),
            event: name.into(),
            payload,
        })
    }

    #[test]
    fn presence_is_dispatched_on_event_in_any_case_without_type() {
        let track = event(
            "presence",
            "realtime:a",
            json!({"event": "TRACK", "payload": {"x": 1}}),
        );
        assert_eq!(
            track,
            ClientEvent::Presence(PresenceAction::Track(Some(json!({"x": 1}))))
        );
        let untrack = event(
            "presence",
            "realtime:a",
            json!({"type": "presence", "event": "untrack"}),
        );
        assert_eq!(untrack, ClientEvent::Presence(PresenceAction::Untrack));
        assert_eq!(
            event("presence", "realtime:a", json!({})),
            ClientEvent::Presence(PresenceAction::Missing)
        );
        assert_eq!(
            event("presence", "realtime:a", json!({"event": "dance"})),
            ClientEvent::Presence(PresenceAction::Unknown)
        );
        assert_eq!(
            event("presence", "realtime:a", json!("track")),
            ClientEvent::Presence(PresenceAction::Unknown)
        );
    }

    #[test]
    fn heartbeat_only_on_phoenix_topic() {
        assert_eq!(
            event("heartbeat", "phoenix", json!({})),
            ClientEvent::Heartbeat
        );
        assert_eq!(
            event("heartbeat", "realtime:a", json!({})),
            ClientEvent::Other
        );
    }
}
