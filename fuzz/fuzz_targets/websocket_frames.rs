//! The WebSocket reader: any bytes, fed in any split, give the same
//! messages or the same refusal, never a panic, and never a message over
//! the byte budget (compressed or not).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use roster_protocol::websocket::{Decoder, Inbound, Peer, ReadError};

const MAX: usize = 64 * 1024;

fn read_all(data: &[u8], chunk: usize) -> (Vec<Inbound>, Option<ReadError>) {
    let mut decoder = Decoder::new(Peer::Client, MAX, true);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(m)) => {
                    assert!(m.len() <= MAX, "a message over the budget");
                    out.push(m);
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|input: (u8, &[u8])| {
    let (split, data) = input;
    let whole = read_all(data, data.len());
    let pieces = read_all(data, split as usize % 17 + 1);
    assert_eq!(whole, pieces);
});
