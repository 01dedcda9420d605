//! What a client sends: typed pushes and their text frames.
//!
//! The Rust client, the server's tests and the bench all speak the client
//! side of the protocol; they build it here so the shapes (those of
//! realtime-js `RealtimeChannel`) live in one place, next to the decoder the
//! server reads them with.

use serde_json::{json, Value};

use crate::{events, Outgoing, PresenceUpdates, Vsn, PHOENIX_TOPIC};

/// The `phx_join` payload. `Default` is realtime-js's default channel
/// config with presence off and no token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JoinPayload {
    pub broadcast_ack: bool,
    pub broadcast_self: bool,
    /// `config.presence.key`; empty lets the server pick one.
    pub presence_key: String,
    pub presence_enabled: bool,
    /// Roster extension; sent only when set.
    pub presence_count_only: bool,
    /// Roster extension; sent only when set.
    pub presence_updates: Option<PresenceUpdates>,
    pub private: bool,
    /// Omitted when `None`, as realtime-js does without a token.
    pub access_token: Option<String>,
}

impl JoinPayload {
    /// Presence on, under `key`: what every client here joins with.
    pub fn presence(key: impl Into<String>) -> Self {
        JoinPayload {
            presence_key: key.into(),
            presence_enabled: true,
            ..Self::default()
        }
    }

    pub fn to_json(&self) -> Value {
        let mut presence = json!({"key": self.presence_key, "enabled": self.presence_enabled});
        if self.presence_count_only {
            presence["count_only"] = json!(true);
        }
        if let Some(updates) = self.presence_updates {
            presence["updates"] = json!(updates.as_str());
        }
        let mut payload = json!({
            "config": {
                "broadcast": {"ack": self.broadcast_ack, "self": self.broadcast_self},
                "presence": presence,
                "private": self.private,
                // realtime-js always sends the list; Roster has no Postgres changes.
                "postgres_changes": [],
            },
        });
        if let Some(token) = &self.access_token {
            payload["access_token"] = json!(token);
        }
        payload
    }
}

/// One client message, by meaning (the counterpart of [`crate::ClientEvent`]).
#[derive(Clone, Debug, PartialEq)]
pub enum ClientPush {
    Join(JoinPayload),
    Leave,
    /// Goes on [`PHOENIX_TOPIC`]; see [`heartbeat`].
    Heartbeat,
    /// `presence` track of this state (an object).
    Track(Value),
    Untrack,
    /// A JSON broadcast of `payload` under the user event `event`.
    Broadcast {
        event: String,
        payload: Value,
    },
    AccessToken(String),
}

impl ClientPush {
    pub fn event(&self) -> &'static str {
        match self {
            ClientPush::Join(_) => events::JOIN,
            ClientPush::Leave => events::LEAVE,
            ClientPush::Heartbeat => events::HEARTBEAT,
            ClientPush::Track(_) | ClientPush::Untrack => events::PRESENCE,
            ClientPush::Broadcast { .. } => events::BROADCAST,
            ClientPush::AccessToken(_) => events::ACCESS_TOKEN,
        }
    }

    pub fn payload(&self) -> Value {
        match self {
            ClientPush::Join(join) => join.to_json(),
            ClientPush::Leave | ClientPush::Heartbeat => json!({}),
            ClientPush::Track(state) => {
                json!({"type": "presence", "event": "track", "payload": state})
            }
            ClientPush::Untrack => json!({"type": "presence", "event": "untrack"}),
            ClientPush::Broadcast { event, payload } => {
                json!({"type": "broadcast", "event": event, "payload": payload})
            }
            ClientPush::AccessToken(token) => json!({"access_token": token}),
        }
    }

    /// The text frame on a connection speaking `vsn`.
    pub fn encode(
        &self,
        vsn: Vsn,
        join_ref: Option<&str>,
        ref_: Option<&str>,
        topic: &str,
    ) -> String {
        encode(vsn, join_ref, ref_, topic, self.event(), &self.payload())
    }
}

/// A heartbeat frame: topic `phoenix`, no join ref.
pub fn heartbeat(vsn: Vsn, ref_: &str) -> String {
    ClientPush::Heartbeat.encode(vsn, None, Some(ref_), PHOENIX_TOPIC)
}

/// Any client frame, for events without a builder.
pub fn encode(
    vsn: Vsn,
    join_ref: Option<&str>,
    ref_: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Value,
) -> String {
    let payload = payload.to_string();
    Outgoing {
        join_ref,
        ref_,
        topic,
        event,
        payload: &payload,
    }
    .encode_client(vsn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, BroadcastBody, ClientEvent, JoinConfig, PresenceAction, UserBroadcast};
    use proptest::prelude::*;

    const TOPIC: &str = "realtime:room";

    /// Encode, decode with the server's decoder, check the envelope, type it.
    fn round_trip(push: &ClientPush, vsn: Vsn, topic: &str) -> ClientEvent {
        let text = push.encode(vsn, Some("1"), Some("2"), topic);
        let frame = decode(vsn, &text).unwrap();
        assert_eq!(frame.join_ref.as_deref(), Some("1"), "{text}");
        assert_eq!(frame.ref_.as_deref(), Some("2"), "{text}");
        assert_eq!(frame.topic, topic);
        assert_eq!(frame.event, push.event());
        assert_eq!(frame.payload, push.payload());
        ClientEvent::from_frame(&frame)
    }

    /// What the server should read from a join built as `j`.
    fn config_of(j: &JoinPayload) -> JoinConfig {
        JoinConfig {
            broadcast_ack: j.broadcast_ack,
            broadcast_self: j.broadcast_self,
            presence_enabled: j.presence_enabled,
            presence_count_only: j.presence_count_only,
            presence_updates: j.presence_updates,
            presence_key: Some(j.presence_key.clone()).filter(|k| !k.is_empty()),
            private: j.private,
            postgres_changes: Vec::new(),
            access_token: j.access_token.clone(),
        }
    }

    const VSNS: [Vsn; 2] = [Vsn::V1, Vsn::V2];

    #[test]
    fn join_reads_back_as_built() {
        let joins = [
            JoinPayload::default(),
            JoinPayload::presence("alice"),
            JoinPayload {
                broadcast_ack: true,
                broadcast_self: true,
                presence_key: "k \"quoted\" ✓".into(),
                presence_enabled: true,
                presence_count_only: true,
                presence_updates: Some(PresenceUpdates::Replace),
                private: true,
                access_token: Some("sb_publishable_x".into()),
            },
            JoinPayload {
                presence_updates: Some(PresenceUpdates::Classic),
                ..JoinPayload::presence("42")
            },
        ];
        for j in joins {
            for vsn in VSNS {
                let push = ClientPush::Join(j.clone());
                assert_eq!(JoinConfig::check(&push.payload()), Ok(()));
                assert_eq!(
                    round_trip(&push, vsn, TOPIC),
                    ClientEvent::Join(config_of(&j))
                );
            }
        }
    }

    #[test]
    fn join_is_realtime_js_shaped() {
        let j = JoinPayload {
            access_token: Some("t".into()),
            ..JoinPayload::presence("me")
        };
        assert_eq!(
            j.to_json(),
            json!({"config": {"broadcast": {"ack": false, "self": false},
                "presence": {"key": "me", "enabled": true}, "private": false,
                "postgres_changes": []}, "access_token": "t"})
        );
        assert!(JoinPayload::default()
            .to_json()
            .get("access_token")
            .is_none());
    }

    #[test]
    fn pushes_read_back_as_built() {
        let state = json!({"user": "u1", "n": 1});
        for vsn in VSNS {
            assert_eq!(
                round_trip(&ClientPush::Track(state.clone()), vsn, TOPIC),
                ClientEvent::Presence(PresenceAction::Track(Some(state.clone())))
            );
            assert_eq!(
                round_trip(&ClientPush::Untrack, vsn, TOPIC),
                ClientEvent::Presence(PresenceAction::Untrack)
            );
            assert_eq!(
                round_trip(&ClientPush::Leave, vsn, TOPIC),
                ClientEvent::Leave
            );
            assert_eq!(
                round_trip(&ClientPush::AccessToken("tok".into()), vsn, TOPIC),
                ClientEvent::AccessToken(Some("tok".into()))
            );
            assert_eq!(
                round_trip(&ClientPush::Heartbeat, vsn, PHOENIX_TOPIC),
                ClientEvent::Heartbeat
            );
            let b = ClientPush::Broadcast {
                event: "cursor".into(),
                payload: json!({"x": 1}),
            };
            assert_eq!(
                round_trip(&b, vsn, TOPIC),
                ClientEvent::Broadcast(Some(UserBroadcast {
                    event: "cursor".into(),
                    body: BroadcastBody::Json(r#"{"x":1}"#.into()),
                    meta: None,
                }))
            );
        }
    }

    #[test]
    fn heartbeat_has_no_join_ref() {
        for vsn in VSNS {
            let f = decode(vsn, &heartbeat(vsn, "9")).unwrap();
            assert_eq!(
                (f.join_ref.as_deref(), f.ref_.as_deref()),
                (None, Some("9"))
            );
            assert_eq!(ClientEvent::from_frame(&f), ClientEvent::Heartbeat);
        }
        assert_eq!(
            heartbeat(Vsn::V2, "9"),
            r#"[null,"9","phoenix","heartbeat",{}]"#
        );
    }

    fn any_join() -> impl Strategy<Value = JoinPayload> {
        let updates = prop_oneof![
            Just(None),
            Just(Some(PresenceUpdates::Classic)),
            Just(Some(PresenceUpdates::Replace)),
        ];
        (
            any::<[bool; 5]>(),
            ".{0,12}",
            updates,
            proptest::option::of(".{0,12}"),
        )
            .prop_map(|(f, key, presence_updates, access_token)| JoinPayload {
                broadcast_ack: f[0],
                broadcast_self: f[1],
                presence_key: key,
                presence_enabled: f[2],
                presence_count_only: f[3],
                presence_updates,
                private: f[4],
                access_token,
            })
    }

    proptest! {
        #[test]
        fn any_join_reads_back_as_built(j in any_join(), v2 in any::<bool>()) {
            let vsn = if v2 { Vsn::V2 } else { Vsn::V1 };
            let push = ClientPush::Join(j.clone());
            prop_assert_eq!(JoinConfig::check(&push.payload()), Ok(()));
            prop_assert_eq!(round_trip(&push, vsn, TOPIC), ClientEvent::Join(config_of(&j)));
        }
    }
}
