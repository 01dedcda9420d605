//! `roster serve`: parse settings, log, start, print how to connect, stop cleanly.

use std::time::Duration;

use clap::Parser;
use roster_server::settings::{Cli, Command, KeySource, LogFormat, Settings};
use tracing_subscriber::EnvFilter;

mod allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command } = Cli::parse();
    let Command::Serve(args) = command;
    let settings = args.resolve()?;
    init_logging(&settings)?;
    let running = roster_server::start(settings.clone()).await?;
    allocator::spawn_trim(running.server.clone());
    print_banner(&settings, running.addr);
    wait_for_signal().await;
    tracing::info!("shutting down: closing sockets");
    running.shutdown(Duration::from_secs(5)).await;
    tracing::info!("stopped");
    Ok(())
}

fn init_logging(settings: &Settings) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_new(&settings.log)
        .map_err(|e| anyhow::anyhow!("invalid log filter {:?}: {e}", settings.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let no_library_trace =
        tracing_subscriber::filter::filter_fn(|meta| may_log(meta.target(), *meta.level()));
    match settings.log_format {
        LogFormat::Text => builder.finish().with(no_library_trace).try_init()?,
        LogFormat::Json => builder.json().finish().with(no_library_trace).try_init()?,
    }
    Ok(())
}

/// May an event of this target and level be written, whatever `--log` says?
///
/// No credential is ever logged. Our own lines never hold one (an auth
/// failure logs its reason, not the key or token), but libraries' may: at
/// trace level tungstenite writes every frame whole, join payloads and
/// `access_token` pushes included, and axum its rejections. So libraries
/// log at most at debug, where none of them writes a frame, a URL or a
/// header; only our own crates (`roster…` targets) log at trace.
fn may_log(target: &str, level: tracing::Level) -> bool {
    level != tracing::Level::TRACE || target.starts_with("roster")
}

/// Stdout, for people and scripts: the first line says where we listen.
fn print_banner(settings: &Settings, addr: std::net::SocketAddr) {
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{addr}");
    println!("roster listening on {url}");
    println!("demo page: {url}/demo   metrics: {url}/metrics");
    // Only keys we chose are shown: never one the operator configured.
    let keys = &settings.keys;
    let chosen = settings.defaulted_keys;
    let show = |shown: bool, label: &str, value: &str| {
        if shown {
            println!("  {label} {value}");
        }
    };
    match settings.key_source {
        KeySource::Configured => println!("using the configured keys"),
        KeySource::Dev => println!("DEV MODE: fixed public keys, never expose this server."),
        KeySource::Generated => println!(
            "generated keys (set ROSTER_PUBLISHABLE_KEY, ROSTER_SECRET_KEY, ROSTER_JWT_SECRET to keep them):"
        ),
    }
    if settings.key_source != KeySource::Configured {
        show(chosen.publishable, "publishable key:", &keys.publishable);
        show(chosen.secret, "secret key:     ", &keys.secret);
        // Dev mode's JWT secret is in the source; a random one must be shown to be usable.
        let random_jwt = settings.key_source == KeySource::Generated;
        show(
            chosen.jwt_secret && random_jwt,
            "JWT secret:     ",
            &keys.jwt_secret,
        );
    }
    println!(
        "\nsupabase-js:\n  import {{ createClient }} from '@supabase/supabase-js'\n  const supabase = createClient('{url}', '{key}')\n  const room = supabase.channel('room_01')\n  room.on('presence', {{ event: 'sync' }}, () => console.log(room.presenceState()))\n      .subscribe(async (status) => {{ if (status === 'SUBSCRIBED') await room.track({{ online_at: new Date().toISOString() }}) }})\n",
        key = settings.keys.publishable
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::may_log;
    use tracing::Level;

    #[test]
    fn libraries_never_log_at_trace() {
        assert!(!may_log("tungstenite::protocol", Level::TRACE));
        assert!(!may_log("axum::rejection", Level::TRACE));
        assert!(may_log("tungstenite::protocol", Level::DEBUG));
        assert!(may_log("roster_server::session", Level::TRACE));
        assert!(may_log("roster", Level::TRACE));
    }
}
