//! Text frames, both vsn, then typing the event: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roster_protocol::{decode, ClientEvent, Vsn};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for vsn in [Vsn::V1, Vsn::V2] {
        if let Ok(frame) = decode(vsn, text) {
            let _ = ClientEvent::from_frame(&frame);
        }
    }
});
