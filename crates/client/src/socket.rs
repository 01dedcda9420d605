//! The background task: one WebSocket at a time, heartbeats, reconnection
//! with backoff. What the frames mean is the [`Router`]'s business.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::command::Command;
use crate::router::Router;
use crate::shared::SocketShared;
use crate::{ClientOptions, Error};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = Result<Ws, Error>> + Send>>;

async fn open(
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    within: Duration,
) -> Result<Ws, Error> {
    timeout(within, open_steps(url, tls))
        .await
        .unwrap_or(Err(Error::TimedOut))
}

/// Resolve, connect, TLS, upgrade: each step by hand, so that each failure
/// gets its own [`Error`] variant.
async fn open_steps(url: String, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Ws, Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::InvalidUrl(e.to_string()))?;
    let uri = request.uri();
    let secure = uri.scheme_str() == Some("wss");
    let host = uri
        .host()
        .ok_or_else(|| Error::InvalidUrl("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let dns = |message: String| Error::Dns {
        host: host.clone(),
        message,
    };
    let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| dns(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(dns("no address".into()));
    }
    let mut last = None;
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    let tcp = tcp.ok_or_else(|| Error::Connection(last.unwrap_or_default()))?;
    let _ = tcp.set_nodelay(true);
    let stream = if secure {
        let config = tls.ok_or_else(|| Error::InvalidUrl("wss:// without TLS settings".into()))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| Error::InvalidUrl(format!("{host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| crate::tls::handshake_error(&host, e))?;
        MaybeTlsStream::Rustls(stream)
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, None)
        .await
        .map_err(Error::from_ws)?;
    Ok(ws)
}

/// Write `frames`, bounded by `within`.
async fn write(ws: &mut Ws, frames: Vec<String>, within: Duration) -> Result<(), String> {
    let all = async {
        for text in frames {
            ws.feed(Message::Text(text.into())).await?;
        }
        ws.flush().await
    };
    match timeout(within, all).await {
        Err(_) => Err("write timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(())) => Ok(()),
    }
}

/// Close politely, without waiting long for a peer that may be gone.
async fn close(mut ws: Ws, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: reason.to_owned().into(),
    };
    let _ = timeout(Duration::from_millis(500), ws.close(Some(frame))).await;
}

struct Task {
    shared: Arc<SocketShared>,
    router: Router,
    ws: Option<Ws>,
    connecting: Option<Connecting>,
    retry_at: Option<Instant>,
    tries: usize,
    next_heartbeat: Instant,
    connect_waiters: Vec<oneshot::Sender<Result<(), Error>>>,
}

impl Task {
    fn options(&self) -> &ClientOptions {
        &self.shared.options
    }

    fn opened(&mut self, ws: Ws, now: Instant) {
        tracing::debug!(url = %self.shared.url, "connected");
        self.ws = Some(ws);
        self.tries = 0;
        self.retry_at = None;
        self.next_heartbeat = now + self.options().heartbeat_interval;
        self.shared.connected.store(true, Ordering::Relaxed);
        self.router.on_open(now);
        for w in self.connect_waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
    }

    fn schedule_retry(&mut self, now: Instant) {
        self.retry_at = Some(now + self.options().backoff(self.tries));
        self.tries += 1;
    }

    fn connect_failed(&mut self, error: Error, now: Instant) {
        tracing::debug!(%error, "connection attempt failed");
        self.router.on_connect_failed(&error);
        if !self.connect_waiters.is_empty() {
            // The caller of `connect()` has the error; only channels retry.
            self.router.want_connection = false;
        }
        for w in self.connect_waiters.drain(..) {
            let _ = w.send(Err(error.clone()));
        }
        self.schedule_retry(now);
    }

    /// The socket is gone (or given up on): channels wait to rejoin.
    async fn lost(&mut self, reason: &str, now: Instant) {
        tracing::debug!(reason, "connection lost");
        if let Some(ws) = self.ws.take() {
            close(ws, reason).await;
        }
        self.shared.connected.store(false, Ordering::Relaxed);
        self.router.on_close(reason);
        self.schedule_retry(now);
    }

    /// Heartbeat and write what the router queued.
    async fn flush(&mut self, now: Instant) {
        if self.ws.is_some() && now >= self.next_heartbeat {
            if self.router.heartbeat() {
                self.next_heartbeat = now + self.options().heartbeat_interval;
            } else {
                return self.lost("heartbeat timeout", now).await;
            }
        }
        let frames = self.router.drain();
        let within = self.options().timeout;
        if let Some(ws) = self.ws.as_mut() {
            if !frames.is_empty() {
                if let Err(e) = write(ws, frames, within).await {
                    self.lost(&e, now).await;
                }
            }
        }
    }

    fn maybe_connect(&mut self, now: Instant) {
        let due = self.retry_at.is_none_or(|t| t <= now);
        if self.ws.is_none() && self.connecting.is_none() && self.router.wants_connection() && due {
            let within = self.options().timeout;
            let tls = self.shared.tls.clone();
            self.connecting = Some(Box::pin(open(self.shared.url.clone(), tls, within)));
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let mut next = self.router.next_deadline();
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if self.ws.is_some() {
            consider(self.next_heartbeat);
        } else if self.connecting.is_none() && self.router.wants_connection() {
            if let Some(t) = self.retry_at {
                consider(t);
            }
        }
        next
    }

    async fn shutdown(&mut self) {
        if let Some(ws) = self.ws.take() {
            close(ws, "disconnect").await;
        }
        self.shared.connected.store(false, Ordering::Relaxed);
        self.router.shutdown();
        for w in self.connect_waiters.drain(..) {
            let _ = w.send(Err(Error::Disconnected));
        }
    }
}

/// What woke the loop.
enum Event {
    Command(Option<Command>),
    Connected(Result<Box<Ws>, Error>),
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Wake,
}

/// Run until [`Command::Disconnect`] or until every handle is dropped.
pub(crate) async fn run(shared: Arc<SocketShared>, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut task = Task {
        router: Router::new(shared.clone()),
        shared,
        ws: None,
        connecting: None,
        retry_at: None,
        tries: 0,
        next_heartbeat: Instant::now(),
        connect_waiters: Vec::new(),
    };
    loop {
        let now = Instant::now();
        task.router.tick(now);
        task.flush(now).await;
        task.maybe_connect(now);
        let wakeup = task.next_wakeup();
        let sleep = async move {
            match wakeup {
                Some(t) => sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let connecting = &mut task.connecting;
        let ws = &mut task.ws;
        let event = tokio::select! {
            cmd = rx.recv() => Event::Command(cmd),
            result = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                Event::Connected(result.map(Box::new))
            }
            msg = async { ws.as_mut().expect("guarded").next().await }, if ws.is_some() => {
                Event::Frame(msg)
            }
            _ = sleep => Event::Wake,
        };
        let now = Instant::now();
        match event {
            Event::Command(None) => {
                task.shutdown().await;
                return;
            }
            Event::Command(Some(Command::Disconnect(done))) => {
                task.shutdown().await;
                let _ = done.send(());
                return;
            }
            Event::Command(Some(Command::Connect(reply))) => {
                task.router.want_connection = true;
                if task.ws.is_some() {
                    let _ = reply.send(Ok(()));
                } else {
                    task.connect_waiters.push(reply);
                    task.retry_at = None;
                }
            }
            Event::Command(Some(cmd)) => task.router.command(cmd, now),
            Event::Connected(result) => {
                task.connecting = None;
                match result {
                    Ok(ws) => task.opened(*ws, now),
                    Err(e) => task.connect_failed(e, now),
                }
            }
            Event::Frame(Some(Ok(Message::Text(text)))) => task.router.on_text(&text, now),
            Event::Frame(Some(Ok(Message::Binary(bytes)))) => task.router.on_binary(&bytes),
            Event::Frame(Some(Ok(Message::Ping(_)))) => {
                // tungstenite queued the pong; send it now.
                if let Some(ws) = task.ws.as_mut() {
                    let _ = ws.flush().await;
                }
            }
            Event::Frame(Some(Ok(Message::Close(frame)))) => {
                let reason = frame.map_or_else(
                    || "closed by the server".to_owned(),
                    |f| format!("closed by the server ({}: {})", u16::from(f.code), f.reason),
                );
                task.lost(&reason, now).await;
            }
            Event::Frame(Some(Ok(_))) => {}
            Event::Frame(Some(Err(e))) => task.lost(&e.to_string(), now).await,
            Event::Frame(None) => task.lost("connection closed", now).await,
            Event::Wake => {}
        }
    }
}
