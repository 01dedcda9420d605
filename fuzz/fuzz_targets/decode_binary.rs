//! Binary frames (kind 3 from realtime-js): never a panic, and what decodes
//! re-encodes to the same message (kind 4 for raw bytes, JSON text otherwise).
#![no_main]

use libfuzzer_sys::fuzz_target;
use roster_protocol::{decode_binary, decode_user_broadcast, BroadcastBody, Encoded, Vsn};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(push) = decode_binary(data) else {
        return;
    };
    let msg = &push.broadcast;
    match &msg.body {
        BroadcastBody::Binary(_) => {
            assert!(msg.encode(Vsn::V1, &push.topic).is_none(), "vsn 1 gets no bytes");
            match msg.encode(Vsn::V2, &push.topic) {
                Some(Encoded::Binary(kind4)) => {
                    let back = decode_user_broadcast(&kind4).expect("kind 4 decodes");
                    assert_eq!(back.topic, push.topic);
                    assert_eq!(&back.broadcast, msg);
                }
                // Only metadata re-serialised past a one-byte length cannot go out.
                None => assert!(msg.meta.as_ref().is_some_and(|m| m.len() > 255)),
                Some(Encoded::Text(t)) => panic!("text for a binary body: {t}"),
            }
        }
        BroadcastBody::Json(body) => {
            let body: Value = serde_json::from_str(body).expect("a JSON body is JSON");
            for vsn in [Vsn::V1, Vsn::V2] {
                let Some(Encoded::Text(text)) = msg.encode(vsn, &push.topic) else {
                    panic!("a JSON body goes out as text to both vsn");
                };
                let frame: Value = serde_json::from_str(&text).expect("server text is JSON");
                let payload = match vsn {
                    Vsn::V1 => &frame["payload"],
                    Vsn::V2 => &frame[4],
                };
                assert_eq!(payload["event"], Value::String(msg.event.clone()));
                assert_eq!(payload["payload"], body);
            }
        }
    }
});
