//! Binary frames (kind 3 from realtime-js), and re-encoding what decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roster_protocol::{decode_binary, Vsn};

fuzz_target!(|data: &[u8]| {
    if let Ok(push) = decode_binary(data) {
        for vsn in [Vsn::V1, Vsn::V2] {
            let _ = push.broadcast.encode(vsn, &push.topic);
        }
    }
});
