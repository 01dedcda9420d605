//! The Supabase Presence guide, step by step, in Rust.
//!
//! ```text
//! roster serve --dev &
//! cargo run -p roster-client --example presence -- [URL] [KEY]
//! ```
//!
//! URL defaults to `http://127.0.0.1:4000`, KEY to `sb_publishable_dev`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roster_client::{ChannelOptions, RealtimeClient};
use serde::{Deserialize, Serialize};

/// What each client tracks (the guide's `userStatus`).
#[derive(Debug, Serialize, Deserialize)]
struct UserStatus {
    user: String,
    online_at: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Presences as realtime-js logs them: `[{"presence_ref": …, "user": …}]`.
fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:4000".into());
    let key = args.next().unwrap_or_else(|| "sb_publishable_dev".into());
    let pause = || tokio::time::sleep(Duration::from_millis(300));

    // const supabase = createClient(URL, KEY)
    let supabase = RealtimeClient::new(&url, &key)?;
    supabase.connect().await?;
    println!("connected to {}", supabase.endpoint_url());

    // Sync, join and leave events.
    let room_one = supabase.channel("room_01");
    room_one
        .on_presence_sync({
            let room = room_one.clone();
            move || println!("sync {}", json(&room.presence_state()))
        })
        .on_presence_join(|key, _current, new| println!("join {key} {}", json(&new)))
        .on_presence_leave(|key, _current, left| println!("leave {key} {}", json(&left)));

    // Sending state: track once subscribed.
    let status = room_one.subscribe().await;
    if !status.is_subscribed() {
        return Err(format!("subscribe: {status:?}").into());
    }
    let user_status = UserStatus {
        user: "user-1".into(),
        online_at: iso_now(),
    };
    let track = room_one.track(&user_status).await;
    println!("track: {track:?}");
    pause().await;

    // Presence key: another client (another tab, device…) that names itself.
    let other = RealtimeClient::new(&url, &key)?;
    let channel_c = other.channel_with(
        "room_01",
        ChannelOptions::default().presence_key("userId-123"),
    );
    channel_c.subscribe().await.into_result()?;
    channel_c
        .track(&UserStatus {
            user: "user-2".into(),
            online_at: iso_now(),
        })
        .await?;
    pause().await;

    // The state, typed.
    for (key, users) in room_one.presence_state_as::<UserStatus>()? {
        println!("state {key} as UserStatus: {users:?}");
    }

    // Stop tracking.
    let untrack = channel_c.untrack().await;
    println!("untrack: {untrack:?}");
    pause().await;

    other.disconnect().await;
    room_one.untrack().await?;
    pause().await;
    supabase.disconnect().await;
    Ok(())
}

/// Now as `YYYY-MM-DDTHH:MM:SS.mmmZ`, like JavaScript's `toISOString()`.
fn iso_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}
