//! `keel`: parse etcd's flags and run a node until interrupted.

use clap::Parser;
use server::Config;
use tokio::sync::watch;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    if let Err(e) = server::run(config, stop_rx).await {
        eprintln!("keel: {e}");
        std::process::exit(1);
    }
}

/// Ctrl-C or SIGTERM. (Under the madsim simulator the binary is not used; nodes are stopped by
/// the simulation instead.)
#[cfg(not(madsim))]
async fn wait_for_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(madsim)]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
