//! One generator client's WebSocket: the handshake and masked writes here,
//! reading by `roster_protocol`'s decoder, so that with `--compression` a
//! client takes `permessage-deflate` as browsers do and the bytes that
//! crossed the wire can be counted apart from the messages they carried.
//! `wss://` goes through rustls (`--ca-file` to trust a test CA), to
//! measure what TLS costs the server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use roster_protocol::websocket::{
    client_frame, deflate_accepted, Decoder, Inbound, Peer, DEFLATE_OFFER,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::Message;

/// Read-ahead per client: the generator holds many connections.
const READ_CHUNK: usize = 8 * 1024;

/// A plain or a TLS stream.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Conn for T {}

/// What `wss://` URLs are verified against.
pub fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)? {
                roots.add(cert?)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

pub struct Ws {
    read: ReadHalf<Box<dyn Conn>>,
    write: WriteHalf<Box<dyn Conn>>,
    buf: BytesMut,
    decoder: Decoder,
    mask: u32,
    /// Every byte read off the socket, by every client.
    wire_bytes: Arc<AtomicU64>,
}

impl Ws {
    /// Upgrade `stream` to a WebSocket at `url` (`ws://host/path?query`),
    /// offering compression when `compress`.
    pub async fn connect(
        tcp: TcpStream,
        url: &str,
        tls: Option<&tokio_rustls::TlsConnector>,
        compress: bool,
        wire_bytes: Arc<AtomicU64>,
    ) -> anyhow::Result<Ws> {
        let (rest, secure) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => anyhow::bail!("only ws:// and wss:// URLs are supported"),
        };
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut stream: Box<dyn Conn> = match (secure, tls) {
            (false, _) => Box::new(tcp),
            (true, Some(tls)) => {
                let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
                let name = rustls::pki_types::ServerName::try_from(name.to_owned())?;
                Box::new(tls.connect(name, tcp).await?)
            }
            (true, None) => anyhow::bail!("a wss:// URL needs a TLS connector"),
        };
        let key = generate_key();
        let offer = if compress {
            format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
        } else {
            String::new()
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{offer}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let end = loop {
            if stream.read_buf(&mut buf).await? == 0 {
                anyhow::bail!("closed during the handshake");
            }
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > 16 * 1024 {
                anyhow::bail!("handshake response too long");
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let _ = buf.split_to(end);
        let status = head.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            anyhow::bail!("upgrade refused: {status}");
        }
        let header = |name: &'static str| {
            head.lines().filter_map(move |l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
        };
        let accept = derive_accept_key(key.as_bytes());
        if !header("sec-websocket-accept").any(|v| v == accept) {
            anyhow::bail!("wrong Sec-WebSocket-Accept");
        }
        let deflate = compress && deflate_accepted(header("sec-websocket-extensions"));
        let (read, write) = tokio::io::split(stream);
        Ok(Ws {
            read,
            write,
            buf,
            decoder: Decoder::new(Peer::Server, 256 << 20, deflate),
            mask: key
                .bytes()
                .fold(0x9e37_79b9, |h, b| h.rotate_left(5) ^ b as u32),
            wire_bytes,
        })
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masks need not be secret between a generator and its target.
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        self.mask.to_be_bytes()
    }

    async fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) -> anyhow::Result<()> {
        let mask = self.next_mask();
        let frame = client_frame(opcode, false, payload, mask);
        self.write.write_all(&frame).await?;
        self.write.flush().await?;
        Ok(())
    }

    /// Send a text or binary message (others are ignored).
    pub async fn send(&mut self, message: Message) -> anyhow::Result<()> {
        match message {
            Message::Text(text) => {
                self.send_frame(OpCode::Data(Data::Text), text.as_bytes())
                    .await
            }
            Message::Binary(bytes) => self.send_frame(OpCode::Data(Data::Binary), &bytes).await,
            _ => Ok(()),
        }
    }

    /// The next text or binary message; pings are answered on the way.
    /// `None` once the server closed or the connection broke.
    pub async fn next(&mut self) -> Option<anyhow::Result<Message>> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Inbound::Text(t))) => return Some(Ok(Message::Text(t.into()))),
                Ok(Some(Inbound::Binary(b))) => return Some(Ok(Message::Binary(b.into()))),
                Ok(Some(Inbound::Ping(data))) => {
                    if let Err(e) = self.send_frame(OpCode::Control(Control::Pong), &data).await {
                        return Some(Err(e));
                    }
                    continue;
                }
                Ok(Some(Inbound::Pong)) => continue,
                Ok(Some(Inbound::Close(_))) => return None,
                Ok(None) => {}
                Err(e) => return Some(Err(e.into())),
            }
            if self.buf.capacity() == self.buf.len() {
                self.buf.reserve(READ_CHUNK);
            }
            match self.read.read_buf(&mut self.buf).await {
                Ok(0) => return None,
                Ok(n) => {
                    self.wire_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Say goodbye with a Close frame (best effort).
    pub async fn close(&mut self) {
        let _ = self
            .send_frame(OpCode::Control(Control::Close), &1000u16.to_be_bytes())
            .await;
    }
}
