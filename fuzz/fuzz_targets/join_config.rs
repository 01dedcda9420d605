//! The `phx_join` payload parser, on any JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roster_protocol::JoinConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = JoinConfig::parse(&value);
    }
});
