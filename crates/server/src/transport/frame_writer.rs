//! Writes queued frames to a socket: for each one a header of a few bytes
//! and the frame's shared payload, gathered into vectored writes.
//!
//! A WebSocket library's writer copies every frame into a buffer of its
//! socket, and that buffer keeps the capacity of the largest frame it ever
//! held: one snapshot sent to 3,000 members became 3,000 copies that stayed.
//! Here a socket at rest holds nothing but its stream, and a frame being
//! written is the same allocation for every recipient.

use std::io::{self, IoSlice};

use roster_protocol::websocket::frame_header;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::Frame as WireFrame;
use tungstenite::protocol::CloseFrame;

use crate::channel::outbound::Frame;
use crate::settings::Compression;

/// An unmasked (server) header: two bytes and at most eight of length.
const MAX_HEADER: usize = 10;

/// Slices per `writev` (Linux allows 1,024).
const MAX_SLICES: usize = 512;

pub struct FrameWriter<W> {
    io: W,
    /// Set when the socket negotiated `permessage-deflate`.
    compression: Option<Compression>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W, compression: Option<Compression>) -> Self {
        FrameWriter { io, compression }
    }

    /// Write `frames` in order, then flush. Returns the bytes put on the
    /// wire (headers included, compressed where compressed).
    pub async fn write(&mut self, frames: &[Frame]) -> io::Result<usize> {
        let parts: Vec<([u8; MAX_HEADER], usize, &[u8])> = frames
            .iter()
            .map(|frame| framed(frame, self.compression))
            .collect();
        let mut slices = Vec::with_capacity(frames.len() * 2);
        let mut total = 0;
        for (header, len, body) in &parts {
            if *len > 0 {
                slices.push(IoSlice::new(&header[..*len]));
            }
            slices.push(IoSlice::new(body));
            total += len + body.len();
        }
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let end = rest.len().min(MAX_SLICES);
            let written = self.io.write_vectored(&rest[..end]).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, written);
        }
        self.io.flush().await?;
        Ok(total)
    }
}

/// A Close frame with a code and reason, or an empty one.
pub fn close_frame(close: Option<(u16, &str)>) -> Frame {
    let close = WireFrame::close(close.map(|(code, reason)| CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }));
    let mut bytes = Vec::with_capacity(close.len());
    close
        .format(&mut bytes)
        .expect("writing to a Vec cannot fail");
    Frame::Framed(bytes.into())
}

/// The answer to a ping: a pong with the same bytes.
pub fn pong_frame(data: &[u8]) -> Frame {
    let (header, n) = frame_header(OpCode::Control(Control::Pong), false, data.len(), None);
    Frame::Framed([&header[..n], data].concat().into())
}

/// The header to write before `frame`'s body, and that body: compressed
/// when the socket negotiated it and the frame is large enough to gain.
fn framed(frame: &Frame, compression: Option<Compression>) -> ([u8; MAX_HEADER], usize, &[u8]) {
    let (opcode, payload) = match frame {
        Frame::Text(p) => (OpCode::Data(Data::Text), p),
        Frame::Binary(p) => (OpCode::Data(Data::Binary), p),
        Frame::Framed(bytes) => return ([0; MAX_HEADER], 0, bytes),
    };
    let deflated = compression
        .filter(|c| payload.bytes().len() >= c.min_bytes)
        .and_then(|c| payload.deflated(c.level));
    let body = deflated.unwrap_or(payload.bytes());
    let (header, n) = frame_header(opcode, deflated.is_some(), body.len(), None);
    let mut short = [0; MAX_HEADER];
    short[..n].copy_from_slice(&header[..n]);
    (short, n, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use roster_protocol::websocket::{Decoder, Inbound, Peer};
    use std::io::Cursor;
    use tungstenite::protocol::frame::FrameHeader;

    /// Reads back what the writer wrote, with the library's own parser.
    fn parse_all(mut bytes: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let mut cursor = Cursor::new(bytes);
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && header.mask.is_none());
            let start = cursor.position() as usize;
            let end = start + len as usize;
            out.push((header.opcode, bytes[start..end].to_vec()));
            bytes = &bytes[end..];
        }
        out
    }

    #[tokio::test]
    async fn frames_of_every_length_class_come_out_whole_and_in_order() {
        let small = Frame::text("hi");
        let medium = Frame::binary(vec![7; 300]);
        let large = Frame::text("x".repeat(70_000));
        let frames = [small, medium, large, close_frame(Some((1000, "bye")))];
        // A pipe smaller than the frames forces partial vectored writes.
        let (client, server) = tokio::io::duplex(1024);
        let reading = tokio::spawn(async move {
            let mut client = client;
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut all)
                .await
                .unwrap();
            all
        });
        let mut writer = FrameWriter::new(server, None);
        writer.write(&frames).await.unwrap();
        drop(writer);
        let got = parse_all(&reading.await.unwrap());
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], (OpCode::Data(Data::Text), b"hi".to_vec()));
        assert_eq!(got[1], (OpCode::Data(Data::Binary), vec![7; 300]));
        assert_eq!(got[2].1.len(), 70_000);
        assert_eq!(
            got[3].1,
            [&1000u16.to_be_bytes()[..], b"bye"].concat(),
            "close code then reason"
        );
    }

    async fn written(frames: &[Frame], compression: Option<Compression>) -> (usize, Vec<u8>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut writer = FrameWriter::new(server, compression);
        let n = writer.write(frames).await.unwrap();
        drop(writer);
        let mut all = Vec::new();
        let mut client = client;
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut all)
            .await
            .unwrap();
        (n, all)
    }

    #[tokio::test]
    async fn a_shared_frame_is_compressed_once_and_small_ones_go_as_they_are() {
        let big = Frame::text(r#"{"k":{"metas":[{"phx_ref":"F","s":"online"}]}},"#.repeat(100));
        let small = Frame::text("x".repeat(100));
        let compression = Some(Compression {
            min_bytes: 512,
            level: 1,
        });
        let frames = [big.clone(), small.clone()];
        let (n, wire) = written(&frames, compression).await;
        assert_eq!(n, wire.len(), "the count is what went out");
        // The first byte of each frame: FIN, RSV1 (compressed), opcode.
        assert_eq!(wire[0], 0x80 | 0x40 | 0x1, "big one compressed");
        let (plain, plain_wire) = written(&frames, None).await;
        assert!(n * 5 < plain, "{n} vs {plain} bytes");
        assert_eq!(plain_wire[0], 0x81);
        // The same Payload, written again by another socket, reuses the bytes.
        let Frame::Text(payload) = &big else { panic!() };
        let first = payload.deflated(1).unwrap().as_ptr();
        assert_eq!(payload.deflated(1).unwrap().as_ptr(), first);

        let mut decoder = Decoder::new(Peer::Server, 1 << 20, true);
        let mut buf = bytes::BytesMut::from(&wire[..]);
        let got: Vec<Inbound> = std::iter::from_fn(|| decoder.decode(&mut buf).unwrap()).collect();
        let text = |f: &Frame| Inbound::Text(String::from_utf8(f.payload().to_vec()).unwrap());
        assert_eq!(got, [text(&big), text(&small)]);
        let small_at = wire.len() - 102;
        assert_eq!(wire[small_at], 0x81, "small one not compressed");
    }
}
