//! `keel`: parse etcd's flags and run a node until interrupted.

use clap::Parser;
use server::Config;
use tokio::sync::watch;

#[tokio::main]
async fn main() {
    let mut config = Config::parse();
    // As etcd: with a config file, the other flags are parsed but their values ignored.
    let mut ignored = Vec::new();
    if let Some(path) = config.config_file.clone() {
        match server::config_file::load(&path) {
            Ok(loaded) => (config, ignored) = (loaded.config, loaded.ignored),
            Err(e) => {
                eprintln!("keel: {e}");
                std::process::exit(1);
            }
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(server::config::tracing_level(&config.log_level))
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Some(path) = &config.config_file {
        tracing::info!(
            path = %path.display(),
            "loaded server configuration, other configuration command line flags will be ignored if provided"
        );
        if !ignored.is_empty() {
            tracing::warn!(path = %path.display(), keys = ?ignored, "config file keys keel does not take were ignored");
        }
    }
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
