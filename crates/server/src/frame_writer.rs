//! Writes queued frames to a socket: for each one a header of a few bytes
//! and the frame's shared payload, gathered into vectored writes.
//!
//! A WebSocket library's writer copies every frame into a buffer of its
//! socket, and that buffer keeps the capacity of the largest frame it ever
//! held: one snapshot sent to 3,000 members became 3,000 copies that stayed.
//! Here a socket at rest holds nothing but its stream, and a frame being
//! written is the same allocation for every recipient.

use std::io::{self, Cursor, IoSlice};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame as WireFrame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::outbound::Frame;

/// An unmasked (server) header: two bytes and at most eight of length.
const MAX_HEADER: usize = 10;

/// Slices per `writev` (Linux allows 1,024).
const MAX_SLICES: usize = 512;

pub struct FrameWriter<W> {
    io: W,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W) -> Self {
        FrameWriter { io }
    }

    /// Write `frames` in order, then flush.
    pub async fn write(&mut self, frames: &[Frame]) -> io::Result<()> {
        let headers: Vec<([u8; MAX_HEADER], usize)> = frames.iter().map(header_of).collect();
        let mut slices = Vec::with_capacity(frames.len() * 2);
        for (frame, (header, len)) in frames.iter().zip(&headers) {
            if *len > 0 {
                slices.push(IoSlice::new(&header[..*len]));
            }
            slices.push(IoSlice::new(frame.payload()));
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
        self.io.flush().await
    }

    /// Send a Close frame with `code` and `reason` (at most 123 bytes).
    pub async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        self.write(&[close_frame(code, reason)]).await
    }
}

/// A Close frame, framed by the WebSocket library.
pub fn close_frame(code: u16, reason: &str) -> Frame {
    let close = WireFrame::close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }));
    let mut bytes = Vec::with_capacity(close.len());
    close
        .format(&mut bytes)
        .expect("writing to a Vec cannot fail");
    Frame::Framed(bytes.into())
}

/// The header to write before `frame`'s payload (none for a framed one).
fn header_of(frame: &Frame) -> ([u8; MAX_HEADER], usize) {
    let mut buf = [0; MAX_HEADER];
    let opcode = match frame {
        Frame::Text(_) => OpCode::Data(Data::Text),
        Frame::Binary(_) => OpCode::Data(Data::Binary),
        Frame::Framed(_) => return (buf, 0),
    };
    let header = FrameHeader {
        is_final: true,
        opcode,
        mask: None,
        ..FrameHeader::default()
    };
    let mut cursor = Cursor::new(&mut buf[..]);
    header
        .format(frame.len() as u64, &mut cursor)
        .expect("an unmasked header fits in ten bytes");
    let len = cursor.position() as usize;
    (buf, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

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
        let medium = Frame::Binary(vec![7; 300].into());
        let large = Frame::text("x".repeat(70_000));
        let frames = [small, medium, large, close_frame(1000, "bye")];
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
        let mut writer = FrameWriter::new(server);
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
}
