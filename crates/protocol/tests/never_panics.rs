//! The decoders face the open internet: whatever arrives, they return a
//! value or an error, never a panic. (The fuzz targets in `fuzz/` push the
//! same property further with coverage guidance.) Junk alone rarely gets
//! past the first check, so the generators also build well-formed input —
//! five-element vsn 2 frames, kind-3 bodies, join payloads with a config —
//! which must decode to exactly what was put in, and then corrupt it.

use proptest::prelude::*;
use roster_protocol::{
    decode, decode_binary, decode_user_broadcast, BroadcastBody, ClientEvent, Encoded, JoinConfig,
    Vsn,
};
use serde_json::{json, Value};

/// JSON-ish text: mostly valid shapes, with junk mixed in.
fn frame_text() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("null".to_string()),
        Just("\"phoenix\"".to_string()),
        Just("\"realtime:r\"".to_string()),
        Just("\"phx_join\"".to_string()),
        Just("\"presence\"".to_string()),
        Just("{\"event\":\"TRACK\",\"payload\":{}}".to_string()),
        Just("{\"config\":{\"presence\":{\"key\":[],\"enabled\":\"TRUE\"}}}".to_string()),
        "-?[0-9]{1,30}(\\.[0-9]{1,5})?(e[0-9]{1,4})?",
        "\"[^\"\\\\]{0,8}\"",
        "[\\[\\]{}:,\"a-z0-9]{0,12}",
    ];
    (proptest::collection::vec(atom, 0..7), any::<bool>()).prop_map(|(parts, array)| {
        if array || parts.is_empty() {
            format!("[{}]", parts.join(","))
        } else {
            format!(
                "{{\"topic\":{},\"event\":{},\"payload\":{}}}",
                parts[0],
                parts.get(1).cloned().unwrap_or_default(),
                parts.last().unwrap()
            )
        }
    })
}

/// Any JSON value, small.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        // A few floats that print and parse back exactly.
        prop_oneof![Just(0.5), Just(-1.25e10), Just(3.0e-7)].prop_map(|f| json!(f)),
        prop_oneof![
            Just("true".to_string()),
            Just("FALSE".to_string()),
            Just(String::new()),
            ".{0,8}"
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value where a flag is expected: mostly the forms clients send.
fn flag_value() -> impl Strategy<Value = Option<Value>> {
    proptest::option::of(prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        Just(json!("TRUE")),
        Just(json!("false")),
        Just(json!("yes")),
        json_value(),
    ])
}

/// An object with those fields that are `Some`.
fn object(fields: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect(),
    )
}

/// A `phx_join` payload with a config, each field present or not, of the
/// expected type or not.
fn join_payload() -> impl Strategy<Value = Value> {
    let key = proptest::option::of(prop_oneof![
        ".{0,6}".prop_map(Value::String),
        any::<i32>().prop_map(|n| json!(n)),
        json_value(),
    ]);
    let token = proptest::option::of(prop_oneof![".{0,12}".prop_map(Value::String), json_value()]);
    (
        (flag_value(), flag_value()),
        (key, flag_value(), flag_value()),
        (flag_value(), proptest::option::of(json_value())),
        (token.clone(), token),
    )
        .prop_map(
            |((ack, self_), (key, enabled, count_only), (private, pg), (at, ut))| {
                let config = object(vec![
                    (
                        "broadcast",
                        Some(object(vec![("ack", ack), ("self", self_)])),
                    ),
                    (
                        "presence",
                        Some(object(vec![
                            ("key", key),
                            ("enabled", enabled),
                            ("count_only", count_only),
                        ])),
                    ),
                    ("private", private),
                    ("postgres_changes", pg),
                ]);
                object(vec![
                    ("config", Some(config)),
                    ("access_token", at),
                    ("user_token", ut),
                ])
            },
        )
}

/// A payload for one of the client events, well-formed or nearly.
fn event_and_payload() -> impl Strategy<Value = (String, Value)> {
    let presence_event = prop_oneof![
        Just(json!("track")),
        Just(json!("untrack")),
        Just(json!("TRACK")),
        json_value()
    ];
    prop_oneof![
        join_payload().prop_map(|p| ("phx_join".to_owned(), p)),
        (presence_event, proptest::option::of(json_value())).prop_map(|(e, p)| {
            let payload = object(vec![
                ("type", Some(json!("presence"))),
                ("event", Some(e)),
                ("payload", p),
            ]);
            ("presence".to_owned(), payload)
        }),
        (json_value(), json_value()).prop_map(|(e, p)| {
            let payload = json!({"type": "broadcast", "event": e, "payload": p});
            ("broadcast".to_owned(), payload)
        }),
        json_value().prop_map(|t| ("access_token".to_owned(), json!({"access_token": t}))),
        (
            prop_oneof![
                Just("heartbeat"),
                Just("phx_leave"),
                Just("phx_join"),
                Just("other")
            ],
            json_value()
        )
            .prop_map(|(e, p)| (e.to_owned(), p)),
    ]
}

/// A ref as clients send it (string, number or null) and how it decodes.
fn a_ref() -> impl Strategy<Value = (Value, Option<String>)> {
    prop_oneof![
        Just((Value::Null, None)),
        "[0-9]{1,4}".prop_map(|s| (json!(s), Some(s))),
        any::<u32>().prop_map(|n| (json!(n), Some(n.to_string()))),
    ]
}

/// A kind-3 frame as realtime-js builds it: fields, metadata (empty or a
/// JSON object), encoding (0 binary, 1 JSON) and payload.
#[derive(Clone, Debug)]
struct Kind3 {
    join_ref: String,
    ref_: String,
    topic: String,
    event: String,
    meta: Option<Value>,
    payload: Result<Vec<u8>, Value>,
}

impl Kind3 {
    fn bytes(&self) -> Vec<u8> {
        let meta = self.meta.as_ref().map(Value::to_string).unwrap_or_default();
        let (encoding, payload) = match &self.payload {
            Ok(bytes) => (0, bytes.clone()),
            Err(v) => (1, v.to_string().into_bytes()),
        };
        let fields = [&self.join_ref, &self.ref_, &self.topic, &self.event, &meta];
        let mut out = vec![3];
        out.extend(fields.iter().map(|f| f.len() as u8));
        out.push(encoding);
        for f in fields {
            out.extend_from_slice(f.as_bytes());
        }
        out.extend(payload);
        out
    }
}

fn kind3() -> impl Strategy<Value = Kind3> {
    (
        ("[0-9]{0,3}", "[0-9]{0,3}", "realtime:.{0,12}", ".{0,10}"),
        proptest::option::of(proptest::collection::btree_map(
            "[a-z]{1,4}",
            json_value(),
            0..3,
        )),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24).prop_map(Ok),
            json_value().prop_map(Err),
        ],
    )
        .prop_map(|((join_ref, ref_, topic, event), meta, payload)| Kind3 {
            join_ref,
            ref_,
            topic,
            event,
            meta: meta.map(|m| Value::Object(m.into_iter().collect())),
            payload,
        })
        // Each field's length is one byte.
        .prop_filter("fields fit in 255 bytes", |f| {
            let meta = f.meta.as_ref().map_or(0, |m| m.to_string().len());
            meta <= 255 && f.topic.len() <= 255 && f.event.len() <= 255
        })
}

fn text(e: Encoded) -> String {
    match e {
        Encoded::Text(t) => t,
        Encoded::Binary(b) => panic!("binary where text was due: {b:?}"),
    }
}

/// `true`, `false`, or the strings in any letter case (as `JoinConfig` documents).
fn flag(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn text_frames_decode_or_fail_cleanly(text in frame_text(), raw in ".{0,64}") {
        for vsn in [Vsn::V1, Vsn::V2] {
            for t in [&text, &raw] {
                if let Ok(frame) = decode(vsn, t) {
                    let _ = ClientEvent::from_frame(&frame);
                }
            }
        }
    }

    #[test]
    fn well_formed_frames_decode_to_their_fields(
        (join_ref, join_ref_text) in a_ref(),
        (ref_, ref_text) in a_ref(),
        topic in prop_oneof![Just("phoenix".to_owned()), "realtime:.{0,12}"],
        (event, payload) in event_and_payload(),
        cut in any::<prop::sample::Index>(),
    ) {
        let v2 = json!([join_ref, ref_, topic, event, payload]).to_string();
        let v1 = json!({"join_ref": join_ref, "ref": ref_, "topic": topic,
            "event": event, "payload": payload}).to_string();
        for (vsn, text) in [(Vsn::V2, &v2), (Vsn::V1, &v1)] {
            let frame = decode(vsn, text).unwrap_or_else(|e| panic!("{text}: {e}"));
            prop_assert_eq!(&frame.join_ref, &join_ref_text);
            prop_assert_eq!(&frame.ref_, &ref_text);
            prop_assert_eq!(&frame.topic, &topic);
            prop_assert_eq!(&frame.event, &event);
            prop_assert_eq!(&frame.payload, &payload);
            let _ = ClientEvent::from_frame(&frame);
            // Cut short anywhere: an error or a frame, never a panic.
            let at = cut.index(text.len());
            if let Some(short) = text.get(..at) {
                if let Ok(frame) = decode(vsn, short) {
                    let _ = ClientEvent::from_frame(&frame);
                }
            }
        }
    }

    #[test]
    fn binary_frames_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64), kind3 in proptest::collection::vec(any::<u8>(), 0..48)) {
        let _ = decode_binary(&bytes);
        let mut framed = vec![3u8];
        framed.extend(kind3);
        if let Ok(push) = decode_binary(&framed) {
            for vsn in [Vsn::V1, Vsn::V2] {
                let _ = push.broadcast.encode(vsn, &push.topic);
            }
        }
    }

    #[test]
    fn well_formed_kind3_decodes_and_reencodes_losslessly(
        frame in kind3(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        let bytes = frame.bytes();
        let push = decode_binary(&bytes).unwrap_or_else(|e| panic!("{frame:?}: {e}"));
        prop_assert_eq!(push.join_ref.as_deref().unwrap_or(""), frame.join_ref.as_str());
        prop_assert_eq!(push.ref_.as_deref().unwrap_or(""), frame.ref_.as_str());
        prop_assert_eq!(&push.topic, &frame.topic);
        prop_assert_eq!(&push.broadcast.event, &frame.event);
        let meta = push.broadcast.meta.as_deref().map(|m| serde_json::from_str::<Value>(m).unwrap());
        prop_assert_eq!(&meta, &frame.meta);
        match &frame.payload {
            Ok(raw) => {
                prop_assert_eq!(&push.broadcast.body, &BroadcastBody::Binary(raw.clone()));
                // vsn 2 gets kind 4, which decodes back to the same message.
                match push.broadcast.encode(Vsn::V2, &push.topic) {
                    Some(Encoded::Binary(kind4)) => {
                        let back = decode_user_broadcast(&kind4).unwrap();
                        prop_assert_eq!(&back.topic, &push.topic);
                        prop_assert_eq!(&back.broadcast, &push.broadcast);
                    }
                    other => panic!("kind 4 expected, got {other:?}"),
                }
                prop_assert!(push.broadcast.encode(Vsn::V1, &push.topic).is_none());
            }
            Err(json_payload) => {
                // JSON text for both vsn, carrying the same event and payload.
                let v2: Value = serde_json::from_str(&text(push.broadcast.encode(Vsn::V2, &push.topic).unwrap())).unwrap();
                let v1: Value = serde_json::from_str(&text(push.broadcast.encode(Vsn::V1, &push.topic).unwrap())).unwrap();
                for (topic, body) in [(&v2[2], &v2[4]), (&v1["topic"], &v1["payload"])] {
                    prop_assert_eq!(topic, &json!(frame.topic));
                    prop_assert_eq!(&body["event"], &json!(frame.event));
                    prop_assert_eq!(&body["payload"], json_payload);
                    prop_assert_eq!(body.get("meta"), frame.meta.as_ref());
                }
            }
        }
        // One byte changed: an error or a frame, never a panic.
        let mut bad = bytes.clone();
        let at = flip.0.index(bad.len());
        bad[at] = flip.1;
        if let Ok(push) = decode_binary(&bad) {
            for vsn in [Vsn::V1, Vsn::V2] {
                let _ = push.broadcast.encode(vsn, &push.topic);
            }
        }
    }

    #[test]
    fn join_config_parses_anything(text in frame_text()) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            let _ = JoinConfig::parse(&v);
            if let Some(first) = v.as_array().and_then(|a| a.first()) {
                let _ = JoinConfig::parse(first);
            }
        }
    }

    #[test]
    fn join_config_reads_every_field_of_a_config(payload in join_payload()) {
        let c = JoinConfig::parse(&payload);
        let config = &payload["config"];
        prop_assert_eq!(c.broadcast_ack, flag(config["broadcast"].get("ack")));
        prop_assert_eq!(c.broadcast_self, flag(config["broadcast"].get("self")));
        prop_assert_eq!(c.presence_enabled, flag(config["presence"].get("enabled")));
        prop_assert_eq!(c.presence_count_only, flag(config["presence"].get("count_only")));
        prop_assert_eq!(c.private, flag(config.get("private")));
        let key = match config["presence"].get("key") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        prop_assert_eq!(c.presence_key, key);
        let pg = config.get("postgres_changes").and_then(Value::as_array).cloned().unwrap_or_default();
        prop_assert_eq!(c.postgres_changes, pg);
        let token = |name: &str| payload.get(name).and_then(Value::as_str).map(str::to_owned);
        prop_assert_eq!(c.access_token, token("access_token").or_else(|| token("user_token")));
    }
}
