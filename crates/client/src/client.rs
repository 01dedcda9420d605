//! The client handle: connection, channels, auth.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::command::Command;
use crate::endpoint::websocket_url;
use crate::link::ClientShared;
use crate::shared::lock;
use crate::shared::ChannelShared;
use crate::shared::SocketShared;
use crate::{ChannelOptions, ClientOptions, Error, RealtimeChannel};

/// A connection to a Realtime server (Roster or Supabase Realtime), like
/// supabase-js's `supabase.realtime`. Cheap to clone; clones share the
/// connection. A background task (started on first use, inside a Tokio
/// runtime) sends heartbeats, reconnects with backoff and rejoins channels;
/// it ends on [`disconnect`](Self::disconnect), or when every handle is
/// dropped (a callback that captured a channel handle counts as one, so
/// call `disconnect` when done).
///
/// ```no_run
/// # async fn demo() -> Result<(), roster_client::Error> {
/// use roster_client::RealtimeClient;
///
/// let client = RealtimeClient::new("http://127.0.0.1:4000", "sb_publishable_dev")?;
/// let room = client.channel("room_01");
/// room.subscribe().await.into_result()?;
/// room.track(&serde_json::json!({"user": "user-1"})).await?;
/// client.disconnect().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RealtimeClient {
    shared: Arc<ClientShared>,
}

impl std::fmt::Debug for RealtimeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeClient")
            .field("vsn", &self.shared.socket.options.vsn)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl RealtimeClient {
    /// A client for `url` with API key `key` and default options (vsn 2.0.0).
    ///
    /// `url` is a project URL (`http://host:port`, which becomes
    /// `ws://host:port/realtime/v1/websocket?apikey=KEY&vsn=2.0.0`, as in
    /// supabase-js) or a WebSocket URL (`ws://…/websocket`). Nothing is
    /// opened until [`connect`](Self::connect) or a channel's `subscribe`.
    ///
    /// ```
    /// let client = roster_client::RealtimeClient::new("http://127.0.0.1:4000", "sb_publishable_dev").unwrap();
    /// assert_eq!(
    ///     client.endpoint_url(),
    ///     "ws://127.0.0.1:4000/realtime/v1/websocket?apikey=sb_publishable_dev&vsn=2.0.0"
    /// );
    /// ```
    pub fn new(url: &str, key: &str) -> Result<Self, Error> {
        Self::with_options(url, key, ClientOptions::default())
    }

    /// A client with explicit [`ClientOptions`].
    ///
    /// ```
    /// use roster_client::{ClientOptions, RealtimeClient, Vsn};
    /// let client = RealtimeClient::with_options(
    ///     "http://127.0.0.1:4000",
    ///     "sb_publishable_dev",
    ///     ClientOptions::default().vsn(Vsn::V1),
    /// )
    /// .unwrap();
    /// assert!(client.endpoint_url().ends_with("vsn=1.0.0"));
    /// ```
    pub fn with_options(url: &str, key: &str, options: ClientOptions) -> Result<Self, Error> {
        let url = websocket_url(url, key, options.vsn)?;
        // Trust settings are read now, so a bad CA file fails here.
        let tls = if url.starts_with("wss://") {
            Some(crate::tls::client_config(&options.tls_roots)?)
        } else {
            None
        };
        let mut socket = SocketShared::new(url, key.to_owned(), options);
        socket.tls = tls;
        Ok(RealtimeClient {
            shared: Arc::new(ClientShared {
                socket: Arc::new(socket),
                cmd: Mutex::new(None),
                channels: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The WebSocket URL this client opens.
    ///
    /// ```
    /// let client = roster_client::RealtimeClient::new("ws://127.0.0.1:4000/socket/websocket", "k").unwrap();
    /// assert_eq!(client.endpoint_url(), "ws://127.0.0.1:4000/socket/websocket?apikey=k&vsn=2.0.0");
    /// ```
    pub fn endpoint_url(&self) -> &str {
        &self.shared.socket.url
    }

    /// Open the socket now and report how the first attempt went, e.g.
    /// `Err(Error::Refused { status: 401, message })` for a bad key. On
    /// success the socket is kept open (and reopened when it drops).
    /// Subscribing connects by itself; this is for early error reporting.
    ///
    /// ```no_run
    /// # async fn demo(client: roster_client::RealtimeClient) {
    /// match client.connect().await {
    ///     Ok(()) => println!("connected"),
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # }
    /// ```
    pub async fn connect(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.shared.send(Command::Connect(tx));
        let grace = self.shared.options().timeout + std::time::Duration::from_secs(1);
        match tokio::time::timeout(grace, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => Err(Error::TimedOut),
        }
    }

    /// Whether the socket is open right now.
    ///
    /// ```
    /// let client = roster_client::RealtimeClient::new("http://127.0.0.1:4000", "k").unwrap();
    /// assert!(!client.is_connected());
    /// ```
    pub fn is_connected(&self) -> bool {
        self.shared.socket.connected.load(Ordering::Relaxed)
    }

    /// The channel `realtime:<name>` with default [`ChannelOptions`]. If this
    /// client already has a channel with that topic, that one is returned
    /// (as realtime-js does).
    ///
    /// ```
    /// let client = roster_client::RealtimeClient::new("http://127.0.0.1:4000", "k").unwrap();
    /// let room = client.channel("room_01");
    /// assert_eq!(room.topic(), "realtime:room_01");
    /// ```
    pub fn channel(&self, name: &str) -> RealtimeChannel {
        self.channel_with(name, ChannelOptions::default())
    }

    /// The channel `realtime:<name>` with `options` (ignored if the channel
    /// already exists on this client; remove it first to change them).
    ///
    /// ```
    /// use roster_client::{ChannelOptions, RealtimeClient};
    /// let client = RealtimeClient::new("http://127.0.0.1:4000", "k").unwrap();
    /// let room = client.channel_with("room_01", ChannelOptions::default().presence_key("alice"));
    /// ```
    pub fn channel_with(&self, name: &str, options: ChannelOptions) -> RealtimeChannel {
        let topic = format!("{}{name}", roster_protocol::TOPIC_PREFIX);
        let inner = lock(&self.shared.channels)
            .entry(topic.clone())
            .or_insert_with(|| Arc::new(ChannelShared::new(topic, options)))
            .clone();
        RealtimeChannel {
            inner,
            client: self.shared.clone(),
        }
    }

    /// Every channel of this client.
    ///
    /// ```
    /// let client = roster_client::RealtimeClient::new("http://127.0.0.1:4000", "k").unwrap();
    /// client.channel("a");
    /// assert_eq!(client.channels().len(), 1);
    /// ```
    pub fn channels(&self) -> Vec<RealtimeChannel> {
        lock(&self.shared.channels)
            .values()
            .map(|inner| RealtimeChannel {
                inner: inner.clone(),
                client: self.shared.clone(),
            })
            .collect()
    }

    /// Leave `channel` and forget it; its handles then report `Closed`.
    ///
    /// ```no_run
    /// # async fn demo(client: roster_client::RealtimeClient) {
    /// let room = client.channel("room_01");
    /// let _ = client.remove_channel(&room).await;
    /// # }
    /// ```
    pub async fn remove_channel(&self, channel: &RealtimeChannel) -> Result<(), Error> {
        let topic = channel.topic().to_owned();
        {
            let mut channels = lock(&self.shared.channels);
            if channels
                .get(&topic)
                .is_some_and(|c| Arc::ptr_eq(c, &channel.inner))
            {
                channels.remove(&topic);
            }
        }
        self.shared.leave(&topic, true).await
    }

    /// Use `token` (a user's JWT) as the channels' access token: sent as
    /// `access_token` to every joined channel now, and in every later join.
    /// Until called, the API key is used, as supabase-js does without a session.
    ///
    /// ```no_run
    /// # fn demo(client: roster_client::RealtimeClient, jwt: String) {
    /// client.set_auth(jwt);
    /// # }
    /// ```
    pub fn set_auth(&self, token: impl Into<String>) {
        let token = token.into();
        *lock(&self.shared.socket.access_token) = token.clone();
        let _ = self.shared.send_running(Command::AccessToken(token));
    }

    /// Close the socket (no reconnection) and end the background task.
    /// Channels become `Closed`; pending pushes fail with `Disconnected`.
    /// A later `connect` or `subscribe` starts afresh.
    ///
    /// ```no_run
    /// # async fn demo(client: roster_client::RealtimeClient) {
    /// client.disconnect().await;
    /// # }
    /// ```
    pub async fn disconnect(&self) {
        let tx = lock(&self.shared.cmd).take();
        let Some(tx) = tx else { return };
        let (done_tx, done) = oneshot::channel();
        if tx.send(Command::Disconnect(done_tx)).is_ok() {
            let grace = self.shared.options().timeout + std::time::Duration::from_secs(1);
            let _ = tokio::time::timeout(grace, done).await;
        }
    }
}
