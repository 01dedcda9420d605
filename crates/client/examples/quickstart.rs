//! The README's quick start, kept compiling.

use roster_client::{ChannelOptions, RealtimeClient};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), roster_client::Error> {
    let client = RealtimeClient::new("http://127.0.0.1:4000", "sb_publishable_dev")?;
    let room = client.channel_with("room_01", ChannelOptions::default().presence_key("carol"));
    room.on_presence_join(|key, _current, new| println!("join {key}: {new:?}"))
        .on_presence_leave(|key, _current, left| println!("leave {key}: {left:?}"));
    room.subscribe().await.into_result()?;
    room.track(&json!({ "online_at": "now" })).await?;
    println!("{:?}", room.presence_state());
    tokio::signal::ctrl_c().await.ok();
    client.disconnect().await;
    Ok(())
}
