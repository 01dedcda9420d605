//! WebSocket messages in and out of bytes (RFC 6455), with `permessage-deflate`
//! (RFC 7692); no I/O, so the server's socket reader and the bench's clients
//! share it and a fuzzer can drive it.
//!
//! Compression is negotiated without context takeover in both directions.
//! Each message is then compressed on its own, so a frame compressed once is
//! valid for every recipient (fan-out compresses a shared frame once, not
//! once per socket), and a socket keeps no compression state between
//! messages: the (de)compressors are per thread, reset for each message.
//!
//! [`Decoder`] turns received bytes into [`Inbound`] messages: it joins
//! fragments, lets control frames pass between them, unmasks, inflates and
//! checks UTF-8, and refuses a message over its byte budget from the length
//! in a frame's header, before the payload is buffered.

use std::cell::RefCell;
use std::io::Cursor;

use bytes::{Buf, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The extension, as named in `Sec-WebSocket-Extensions`.
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// What a server answers to a `permessage-deflate` offer it accepts.
pub const DEFLATE_RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// What a client offers when it wants compression.
pub const DEFLATE_OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The tail a sync flush ends a compressed message with, which the sender
/// strips and the receiver puts back (RFC 7692 §7.2.1).
const SYNC_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// Whether one of the offers in `Sec-WebSocket-Extensions` values is a
/// `permessage-deflate` this side can honour: any parameters but a server
/// window under 2^15 (compressing for one window per recipient would undo
/// compress-once). Malformed or duplicate parameters decline that offer.
pub fn accepts_deflate_offer<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .any(|offer| deflate_offer_ok(offer.trim()))
}

fn deflate_offer_ok(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
    {
        return false;
    }
    let mut seen = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return false;
        }
        seen.push(name);
        let ok = match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(v)) => window_bits(v).is_some(),
            ("server_max_window_bits", Some(v)) => window_bits(v) == Some(15),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn window_bits(v: &str) -> Option<u8> {
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// Whether a server's `Sec-WebSocket-Extensions` answer accepted compression
/// as [`DEFLATE_OFFER`] asked for it.
pub fn deflate_accepted<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    values.into_iter().flat_map(|v| v.split(',')).any(|answer| {
        let mut parts = answer.split(';').map(str::trim);
        parts
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
            && parts.all(|p| p == "server_no_context_takeover" || p == "client_no_context_takeover")
    })
}

thread_local! {
    static DEFLATER: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `payload` compressed as one message without context takeover (the bytes
/// to send with RSV1 set), or `None` when that would not make it smaller.
pub fn deflate(payload: &[u8], level: u32) -> Option<Vec<u8>> {
    DEFLATER.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(l, _)| *l != level) {
            *cell = Some((level, Compress::new(Compression::new(level), false)));
        }
        let (_, compress) = cell.as_mut().expect("set above");
        compress.reset();
        // Room for the payload and the flush's tail: anything longer is no gain.
        let mut out = Vec::with_capacity(payload.len() + SYNC_TAIL.len());
        let status = compress
            .compress_vec(payload, &mut out, FlushCompress::Sync)
            .ok()?;
        let done = compress.total_in() == payload.len() as u64 && status == Status::Ok;
        if !done || out.len() == out.capacity() || !out.ends_with(&SYNC_TAIL) {
            return None;
        }
        out.truncate(out.len() - SYNC_TAIL.len());
        (out.len() < payload.len()).then_some(out)
    })
}

/// A compressed message inflated, refused once it passes `max` bytes.
fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, ReadError> {
    INFLATER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let inflater = cell.get_or_insert_with(|| Decompress::new(false));
        inflater.reset(false);
        let mut out = Vec::with_capacity((data.len() * 4).clamp(256, max.max(256)));
        for chunk in [data, &SYNC_TAIL[..]] {
            let mut input = chunk;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > max {
                        return Err(ReadError::TooBig("message over the size limit"));
                    }
                    // Grow by doubling, up to one byte past the limit (to see it passed).
                    let room = out.len().min(max + 1 - out.len()).max(1);
                    out.reserve_exact(room);
                }
                let (before, produced) = (inflater.total_in(), out.len());
                let status = inflater
                    .decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .map_err(|_| ReadError::BadData("invalid compressed data"))?;
                let used = (inflater.total_in() - before) as usize;
                input = &input[used..];
                if status == Status::StreamEnd || (used == 0 && out.len() == produced) {
                    break;
                }
                // All input taken and room left over: nothing more will come of it.
                if input.is_empty() && out.len() < out.capacity() {
                    break;
                }
            }
        }
        if out.len() > max {
            return Err(ReadError::TooBig("message over the size limit"));
        }
        Ok(out)
    })
}

/// Whose frames a [`Decoder`] reads: a server reads a client's (masked),
/// a client reads a server's (unmasked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Client,
    Server,
}

/// One message received, fragments joined and inflated.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Text(String),
    Binary(Vec<u8>),
    /// Answer with a pong carrying the same bytes.
    Ping(Vec<u8>),
    Pong,
    /// The peer's close code, if it sent one (echo it back, then end).
    Close(Option<u16>),
}

impl Inbound {
    /// Its payload's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Inbound::Text(t) => t.len(),
            Inbound::Binary(b) | Inbound::Ping(b) => b.len(),
            Inbound::Pong | Inbound::Close(_) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why the peer's bytes are refused; the connection then closes with
/// [`ReadError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Broke RFC 6455 (1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A message over the size limit (1009).
    #[error("{0}")]
    TooBig(&'static str),
    /// Text that is not UTF-8, or compressed data that does not inflate (1007).
    #[error("{0}")]
    BadData(&'static str),
}

impl ReadError {
    pub fn close_code(&self) -> u16 {
        match self {
            ReadError::Protocol(_) => 1002,
            ReadError::TooBig(_) => 1009,
            ReadError::BadData(_) => 1007,
        }
    }
}

/// A data message whose last fragment has not come yet.
struct Partial {
    text: bool,
    compressed: bool,
    data: Vec<u8>,
}

pub struct Decoder {
    from: Peer,
    max_message: usize,
    deflate: bool,
    partial: Option<Partial>,
}

impl Decoder {
    /// Reads `from`'s frames; messages over `max_message` bytes (compressed
    /// or inflated) are refused; RSV1 means "compressed" only if `deflate`
    /// was negotiated.
    pub fn new(from: Peer, max_message: usize, deflate: bool) -> Decoder {
        Decoder {
            from,
            max_message,
            deflate,
            partial: None,
        }
    }

    /// The next whole message in `buf`, consuming its frames; `Ok(None)`
    /// when more bytes are needed (then `buf` has room reserved for the
    /// frame under way). After an error the connection must end.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, ReadError> {
        loop {
            let mut cursor = Cursor::new(&buf[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(None),
                Err(_) => return Err(ReadError::Protocol("unknown opcode")),
            };
            let start = cursor.position() as usize;
            self.check(&header, len)?;
            // Checked against the budget above, so this fits in memory.
            let len = len as usize;
            if buf.len() < start + len {
                buf.reserve(start + len - buf.len());
                return Ok(None);
            }
            buf.advance(start);
            let mut payload = buf.split_to(len);
            if let Some(mask) = header.mask {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= mask[i & 3];
                }
            }
            if let Some(message) = self.on_frame(&header, &payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// What a frame's header alone tells: refused before its payload is read.
    fn check(&self, header: &FrameHeader, len: u64) -> Result<(), ReadError> {
        match (self.from, header.mask.is_some()) {
            (Peer::Client, false) => return Err(ReadError::Protocol("unmasked client frame")),
            (Peer::Server, true) => return Err(ReadError::Protocol("masked server frame")),
            _ => {}
        }
        if header.rsv2 || header.rsv3 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        match header.opcode {
            OpCode::Control(_) => {
                if !header.is_final {
                    return Err(ReadError::Protocol("fragmented control frame"));
                }
                if len > 125 {
                    return Err(ReadError::Protocol("control frame over 125 bytes"));
                }
                if header.rsv1 {
                    return Err(ReadError::Protocol("compressed control frame"));
                }
            }
            OpCode::Data(Data::Continue) => {
                let Some(partial) = &self.partial else {
                    return Err(ReadError::Protocol("continuation without a message"));
                };
                if header.rsv1 {
                    return Err(ReadError::Protocol("RSV1 on a continuation frame"));
                }
                if len > (self.max_message - partial.data.len()) as u64 {
                    return Err(ReadError::TooBig("message over the size limit"));
                }
            }
            OpCode::Data(_) => {
                if self.partial.is_some() {
                    return Err(ReadError::Protocol("new message inside a fragmented one"));
                }
                if header.rsv1 && !self.deflate {
                    return Err(ReadError::Protocol("RSV1 without compression negotiated"));
                }
                if len > self.max_message as u64 {
                    return Err(ReadError::TooBig("message over the size limit"));
                }
            }
        }
        Ok(())
    }

    fn on_frame(
        &mut self,
        header: &FrameHeader,
        payload: &[u8],
    ) -> Result<Option<Inbound>, ReadError> {
        match header.opcode {
            OpCode::Control(Control::Ping) => return Ok(Some(Inbound::Ping(payload.to_vec()))),
            OpCode::Control(Control::Pong) => return Ok(Some(Inbound::Pong)),
            OpCode::Control(Control::Close) => return close_code(payload).map(Some),
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Err(ReadError::Protocol("unknown opcode"))
            }
            OpCode::Data(Data::Continue) => {
                let partial = self.partial.as_mut().expect("checked in check()");
                partial.data.extend_from_slice(payload);
            }
            OpCode::Data(kind) => {
                self.partial = Some(Partial {
                    text: kind == Data::Text,
                    compressed: header.rsv1,
                    data: payload.to_vec(),
                })
            }
        }
        if !header.is_final {
            return Ok(None);
        }
        let Partial {
            text,
            compressed,
            data,
        } = self.partial.take().expect("inserted above");
        let data = if compressed {
            inflate(&data, self.max_message)?
        } else {
            data
        };
        if text {
            String::from_utf8(data)
                .map(|t| Some(Inbound::Text(t)))
                .map_err(|_| ReadError::BadData("text that is not UTF-8"))
        } else {
            Ok(Some(Inbound::Binary(data)))
        }
    }
}

/// A Close frame's code (RFC 6455 §5.5.1, §7.4).
fn close_code(payload: &[u8]) -> Result<Inbound, ReadError> {
    match payload {
        [] => Ok(Inbound::Close(None)),
        [_] => Err(ReadError::Protocol("close frame of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(ReadError::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason)
                .map_err(|_| ReadError::BadData("close reason not UTF-8"))?;
            Ok(Inbound::Close(Some(code)))
        }
    }
}

/// A frame's header bytes (at most 14: two, eight of length, four of mask).
pub fn frame_header(
    opcode: OpCode,
    compressed: bool,
    len: usize,
    mask: Option<[u8; 4]>,
) -> ([u8; 14], usize) {
    let mut buf = [0; 14];
    let header = FrameHeader {
        is_final: true,
        rsv1: compressed,
        opcode,
        mask,
        ..FrameHeader::default()
    };
    let mut cursor = Cursor::new(&mut buf[..]);
    header
        .format(len as u64, &mut cursor)
        .expect("a header fits in fourteen bytes");
    let n = cursor.position() as usize;
    (buf, n)
}

/// A whole client frame (masked with `mask`): for clients and tests.
pub fn client_frame(opcode: OpCode, compressed: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let (header, n) = frame_header(opcode, compressed, payload.len(), Some(mask));
    let mut out = header[..n].to_vec();
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [1, 2, 3, 4];
    const TEXT: OpCode = OpCode::Data(Data::Text);

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Inbound>, ReadError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = decoder.decode(&mut buf)? {
            out.push(m);
        }
        assert!(buf.is_empty(), "bytes left over");
        Ok(out)
    }

    fn server() -> Decoder {
        Decoder::new(Peer::Client, 1 << 20, true)
    }

    #[test]
    fn a_compressed_message_round_trips_and_shrinks() {
        let text = r#"{"u1":{"metas":[{"phx_ref":"F1","name":"alice"}]}}"#.repeat(200);
        let packed = deflate(text.as_bytes(), 1).expect("repetitive JSON compresses");
        assert!(
            packed.len() * 10 < text.len(),
            "{} → {}",
            text.len(),
            packed.len()
        );
        let frame = client_frame(TEXT, true, &packed, MASK);
        assert_eq!(
            decode_all(&mut server(), &frame).unwrap(),
            [Inbound::Text(text)]
        );
    }

    #[test]
    fn messages_compressed_one_by_one_decode_with_a_fresh_context_each() {
        // What a client under client_no_context_takeover sends: each message
        // stands alone, so the same compressed bytes may come twice.
        let packed = deflate(b"hello hello hello hello", 6).unwrap();
        let mut bytes = client_frame(TEXT, true, &packed, MASK);
        bytes.extend(client_frame(TEXT, true, &packed, MASK));
        let got = decode_all(&mut server(), &bytes).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], got[1]);
    }

    #[test]
    fn incompressible_payloads_are_sent_as_they_are() {
        assert_eq!(deflate(b"ab", 1), None);
    }

    #[test]
    fn fragments_join_around_a_ping_and_rsv1_only_counts_on_the_first() {
        let mut bytes = Vec::new();
        let (h, n) = frame_header(TEXT, false, 3, Some(MASK));
        let mut first = h[..n].to_vec();
        first[0] &= 0x7f; // not final
        first.extend(b"abc".iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
        bytes.extend(first);
        bytes.extend(client_frame(
            OpCode::Control(Control::Ping),
            false,
            b"p",
            MASK,
        ));
        let mut last = client_frame(OpCode::Data(Data::Continue), false, b"def", MASK);
        last[0] |= 0x80;
        bytes.extend(last);
        let got = decode_all(&mut server(), &bytes).unwrap();
        assert_eq!(
            got,
            [Inbound::Ping(b"p".to_vec()), Inbound::Text("abcdef".into())]
        );
    }

    #[test]
    fn refusals_carry_the_close_code_rfc_6455_gives_them() {
        let unmasked = {
            let (h, n) = frame_header(TEXT, false, 2, None);
            [&h[..n], b"hi"].concat()
        };
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, 1002),
            (client_frame(TEXT, false, &[0xff, 0xfe], MASK), 1007),
            (
                client_frame(OpCode::Data(Data::Continue), false, b"x", MASK),
                1002,
            ),
            (
                client_frame(OpCode::Control(Control::Ping), true, b"x", MASK),
                1002,
            ),
            (
                client_frame(TEXT, true, b"not deflate at all \xff\xff", MASK),
                1007,
            ),
            (
                client_frame(
                    OpCode::Control(Control::Close),
                    false,
                    &[0x03, 0xe8 + 4],
                    MASK,
                ),
                1002,
            ),
        ];
        for (bytes, code) in cases {
            let err = decode_all(&mut server(), &bytes).unwrap_err();
            assert_eq!(err.close_code(), code, "{err}");
        }
        // RSV1 when compression was not negotiated.
        let packed = deflate(&[b'a'; 100], 1).unwrap();
        let plain = &mut Decoder::new(Peer::Client, 1 << 20, false);
        let err = decode_all(plain, &client_frame(TEXT, true, &packed, MASK)).unwrap_err();
        assert_eq!(err.close_code(), 1002);
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        let (h, n) = frame_header(TEXT, false, 10 << 20, Some(MASK));
        let mut buf = BytesMut::from(&h[..n]);
        let err = server().decode(&mut buf).unwrap_err();
        assert_eq!(err.close_code(), 1009);
        assert!(buf.capacity() < 1 << 20, "nothing reserved for it");
    }

    #[test]
    fn a_compression_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 4 << 20];
        let packed = deflate(&zeros, 9).unwrap();
        assert!(packed.len() < 64 * 1024);
        let err = decode_all(&mut server(), &client_frame(TEXT, true, &packed, MASK)).unwrap_err();
        assert_eq!(err, ReadError::TooBig("message over the size limit"));
    }

    #[test]
    fn a_continuation_claiming_u64_max_bytes_is_refused() {
        // Found by the websocket_frames fuzz target: the length check added
        // the fragments so far to the header's length, which wrapped.
        let (h, n) = frame_header(TEXT, false, 1, Some(MASK));
        let mut first = h[..n].to_vec();
        first[0] &= 0x7f;
        first.push(b'a' ^ MASK[0]);
        let (h, n) = frame_header(OpCode::Data(Data::Continue), false, usize::MAX, Some(MASK));
        first.extend(&h[..n]);
        let err = decode_all(&mut server(), &first).unwrap_err();
        assert_eq!(err.close_code(), 1009);
    }

    #[test]
    fn a_message_fed_byte_by_byte_decodes_once() {
        let frame = client_frame(TEXT, false, "héllo".as_bytes(), MASK);
        let mut decoder = server();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in frame {
            buf.extend_from_slice(&[byte]);
            if let Some(m) = decoder.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, [Inbound::Text("héllo".into())]);
    }

    #[test]
    fn offers_are_accepted_only_when_every_recipient_can_share_a_frame() {
        let yes = [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=12",
            "permessage-deflate; server_max_window_bits=15; server_no_context_takeover",
        ];
        for offer in yes {
            assert!(accepts_deflate_offer([offer]), "{offer}");
        }
        let no = [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "x-webkit-deflate-frame",
        ];
        for offer in no {
            assert!(!accepts_deflate_offer([offer]), "{offer}");
        }
        assert!(deflate_accepted([DEFLATE_RESPONSE]));
        assert!(!deflate_accepted([
            "permessage-deflate; server_max_window_bits=10"
        ]));
    }
}
