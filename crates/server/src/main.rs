//! `roster serve`: parse settings, log, start, print how to connect, stop cleanly.

use std::time::Duration;

use clap::Parser;
use roster_server::config::{Cli, Command, KeySource, LogFormat, Settings};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command } = Cli::parse();
    let Command::Serve(args) = command;
    let settings = args.resolve()?;
    init_logging(&settings)?;
    let running = roster_server::start(settings.clone()).await?;
    print_banner(&settings, running.addr);
    wait_for_signal().await;
    tracing::info!("shutting down: closing sockets");
    running.shutdown(Duration::from_secs(5)).await;
    tracing::info!("stopped");
    Ok(())
}

fn init_logging(settings: &Settings) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&settings.log)
        .map_err(|e| anyhow::anyhow!("invalid log filter {:?}: {e}", settings.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match settings.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Stdout, for people and scripts: the first line says where we listen.
fn print_banner(settings: &Settings, addr: std::net::SocketAddr) {
    let url = format!("http://{addr}");
    println!("roster listening on {url}");
    println!("demo page: {url}/demo   metrics: {url}/metrics");
    match settings.key_source {
        KeySource::Configured => println!("using the configured keys"),
        KeySource::Dev => println!(
            "DEV MODE: fixed public keys, never expose this server.\n  publishable key: {}\n  secret key:      {}",
            settings.keys.publishable, settings.keys.secret
        ),
        KeySource::Generated => println!(
            "generated keys (set ROSTER_PUBLISHABLE_KEY, ROSTER_SECRET_KEY, ROSTER_JWT_SECRET to keep them):\n  publishable key: {}\n  secret key:      {}\n  JWT secret:      {}",
            settings.keys.publishable, settings.keys.secret, settings.keys.jwt_secret
        ),
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
