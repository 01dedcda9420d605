//! The decoders face the open internet: whatever arrives, they return a
//! value or an error, never a panic. (The fuzz targets in `fuzz/` push the
//! same property further with coverage guidance.)

use proptest::prelude::*;
use roster_protocol::{decode, decode_binary, ClientEvent, JoinConfig, Vsn};
use serde_json::Value;

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
    proptest::collection::vec(atom, 0..7).prop_map(|parts| {
        if parts.len() % 2 == 0 {
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
    fn join_config_parses_anything(text in frame_text()) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            let _ = JoinConfig::parse(&v);
            if let Some(first) = v.as_array().and_then(|a| a.first()) {
                let _ = JoinConfig::parse(first);
            }
        }
    }
}
