//! The Keel server: etcd's gRPC API over Keel's runtime.
//!
//! `main` parses etcd's flags into a [`Config`] and calls [`run`]. The services translate
//! requests into proposals and reads on the node task and map failures to etcd's exact gRPC
//! codes and messages, which clients match on.

mod compactor;
pub mod config;
pub mod config_file;
pub mod errors;
#[cfg(not(madsim))]
mod gateway;
#[cfg(not(madsim))]
mod http;
#[cfg(not(madsim))]
mod limit;
#[cfg(not(madsim))]
mod memory;
pub mod pb;
mod peer;
mod recipes;
mod services;
pub mod snapshot;

pub use config::{Config, ConfigError};

use keel_core::pb::etcdserverpb::Member;
use runtime::backend::{FileBackend, FsDir};
use runtime::node::{self, ConnectFn, DriverConfig, NodeHandle, Transport, REMOVED};
use runtime::recover::{recover, Identity};
use runtime::wal::WalOptions;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;

/// The etcd release whose API and behaviour Keel follows; reported by Status.
pub const ETCD_VERSION: &str = "3.5.1";

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open data directory {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
    #[error(transparent)]
    Recover(#[from] runtime::recover::RecoverError),
    #[error(
        "data directory {dir} has format {found}; this keel reads format {}",
        runtime::wal::FORMAT_VERSION
    )]
    Format { dir: String, found: String },
    #[error("client listener on {addr}: {source}")]
    Listen { addr: SocketAddr, source: tonic::transport::Error },
    #[error("client listener on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("metrics listener on {addr}: {source}")]
    MetricsListen { addr: SocketAddr, source: std::io::Error },
    #[error("node stopped: {0}")]
    Node(String),
    #[error("cannot join the cluster (--initial-cluster-state existing): {0}")]
    Join(String),
}

/// Runs a node until `shutdown` turns true or something fails.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
    let resolved = config.resolve()?;
    let wal_dir = resolved.data_dir.join("member").join("wal");
    let data_err = |source| RunError::DataDir { dir: resolved.data_dir.display().to_string(), source };
    if wal_dir.join("keel.wal").exists() {
        // The walking skeleton's single-file log (format 1): refuse rather than start empty.
        return Err(RunError::Format {
            dir: resolved.data_dir.display().to_string(),
            found: "1 (member/wal/keel.wal)".to_string(),
        });
    }
    let wal_fs = FsDir::open(&wal_dir).map_err(data_err)?;
    // The state machine's image lives where etcd keeps its backend database.
    let snap_dir = resolved.data_dir.join("member").join("snap");
    std::fs::create_dir_all(&snap_dir).map_err(data_err)?;
    let image_file = FileBackend::open(&snap_dir.join("db")).map_err(data_err)?;
    FsDir::open(&snap_dir).and_then(|mut d| runtime::backend::Dir::sync(&mut d)).map_err(data_err)?;
    // A joining member's id is the one the cluster gave it at MemberAdd: ask the members named
    // in --initial-cluster for it by this member's peer URLs (as etcd does at start). Its log
    // starts empty; the leader sends it the cluster's.
    let (member_id, cluster_id, initial_members, initial_peers) = if resolved.join {
        let urls: Vec<String> =
            resolved.initial_members.iter().flat_map(|m| m.peer_ur_ls.iter().cloned()).collect();
        let (id, cluster_id, members) =
            peer::fetch_cluster(&urls, &resolved.advertise_peer_urls).await.map_err(RunError::Join)?;
        (id, cluster_id, Vec::new(), members)
    } else {
        let members = resolved.initial_members.clone();
        (resolved.member_id, resolved.cluster_id, members.clone(), members)
    };
    let identity = Identity { name: config.name.clone(), member_id, cluster_id, initial_members };
    let heartbeat_ms = config.heartbeat_interval.max(1);
    let mut raft = keel_core::raft::Config::new(member_id, seed_from_clock());
    raft.election_ticks = (config.election_timeout / heartbeat_ms).max(2) as u32;
    raft.proposal_check = Some(keel_core::state_machine::entry_decodes);
    raft.snapshot_check = Some(keel_core::state_machine::snapshot_matches);
    let election_ticks = raft.election_ticks as u64;
    let lease_config = keel_core::lease::LessorConfig {
        min_ttl_secs: keel_core::lease::min_ttl_secs(election_ticks, heartbeat_ms),
        ..Default::default()
    };
    let recovering = std::time::Instant::now();
    let recovered = recover(wal_fs, WalOptions::default(), image_file, &identity, raft, lease_config)?;
    tracing::info!(
        elapsed_ms = recovering.elapsed().as_millis() as u64,
        applied_index = recovered.sm.applied_index(),
        keys_revision = recovered.sm.store.revision(),
        "recovered the state image and the WAL"
    );
    tracing::info!(
        name = %config.name,
        member_id = %format!("{:x}", member_id),
        cluster_id = %format!("{:x}", cluster_id),
        data_dir = %resolved.data_dir.display(),
        fresh = recovered.fresh,
        "starting keel"
    );
    // The node opens a sender per other member as the membership it applies says; a peer
    // telling this member it was removed stops it.
    let (removed_tx, mut removed_rx) = watch::channel(false);
    let on_removed: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        removed_tx.send_replace(true);
    });
    let connect: Arc<ConnectFn> = Arc::new(move |id, url, reports| {
        let ids = peer::BatchIds { cluster_id, from: member_id, to: id };
        peer::start_sender(ids, url, on_removed.clone(), reports)
    });
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let driver = DriverConfig {
        transport: Some(Transport { connect, initial_peers }),
        id_base: (start_ms & ((1 << 40) - 1)) << 8,
        name: config.name.clone(),
        client_urls: resolved.advertise_client_urls.clone(),
        tick: Duration::from_millis(heartbeat_ms),
        election_timeout: Duration::from_millis(config.election_timeout),
        watch_progress_interval: config.watch_progress_notify_interval,
        member_id,
        cluster_id,
        snapshot_count: config.snapshot_count,
    };
    // The client ports are bound before the node starts (as etcd binds its listeners first): a
    // port that cannot be had stops the start with nothing running.
    #[cfg(not(madsim))]
    let mut client_listeners = Vec::new();
    #[cfg(not(madsim))]
    for &addr in &resolved.client_addrs {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| RunError::Bind { addr, source })?;
        client_listeners.push(listener);
    }
    #[cfg(not(madsim))]
    let mut client_listeners = client_listeners.into_iter();
    let (handle, node_task) = node::spawn(recovered, driver, shutdown.clone());
    let quota_bytes = backend_quota(config.quota_backend_bytes);
    let self_member = Member {
        id: member_id,
        name: config.name.clone(),
        peer_ur_ls: resolved.advertise_peer_urls.clone(),
        client_ur_ls: resolved.advertise_client_urls.clone(),
        is_learner: false,
    };
    // One lease id generator for every client listener, so their ids never collide.
    let lease_ids =
        std::sync::Arc::new(std::sync::Mutex::new(keel_core::lease::LeaseIdGen::new(member_id, start_ms)));
    let mut servers = Vec::new();
    for addr in resolved.peer_addrs.clone() {
        let node = handle.clone();
        let signal = stopped(shutdown.clone());
        let join = resolved.join;
        servers.push(tokio::spawn(async move {
            // A member alone in its cluster binds its peer port only once it gains a peer (etcd
            // binds it at once): until then another process may use the port (the differential
            // tests run etcd and Keel with one peer URL, so that their ids are equal).
            let mut members = node.members();
            while !join && members.borrow_and_update().members.len() < 2 {
                if members.changed().await.is_err() {
                    return Ok(());
                }
            }
            tracing::info!(%addr, "serving peers");
            tonic::transport::Server::builder()
                .add_service(peer::peer_server!(node))
                .serve_with_shutdown(addr, signal)
                .await
                .map_err(|source| RunError::Listen { addr, source })
        }));
    }
    for addr in resolved.client_addrs.clone() {
        let svc = services::Services::new(
            handle.clone(),
            self_member.clone(),
            config.max_request_bytes,
            config.max_txn_ops,
            lease_ids.clone(),
            quota_bytes,
        );
        let signal = stopped(shutdown.clone());
        let mut members = handle.members();
        let me = self_member.clone();
        // The port is bound already (connections wait in its backlog until this member serves).
        #[cfg(not(madsim))]
        let listener = client_listeners.next().expect("one listener per client address");
        servers.push(tokio::spawn(async move {
            // As etcd does, serve clients only once this member's name and client URLs are in
            // the applied membership (published through Raft at start, or already there from
            // before a restart), so every member lists every member's client URLs.
            while !members
                .borrow_and_update()
                .members
                .iter()
                .any(|m| m.id == me.id && m.name == me.name && m.client_ur_ls == me.client_ur_ls)
            {
                if members.changed().await.is_err() {
                    return Ok(());
                }
            }
            tracing::info!(%addr, "serving client requests");
            #[cfg(not(madsim))]
            let served = svc
                .router()
                // TCP_NODELAY as tonic sets it when it binds the port itself: without it, small
                // answers wait for Nagle and delayed ACKs (40 ms; linearizable gets fell to 0.2x).
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    signal,
                );
            #[cfg(madsim)]
            let served = svc.router().serve_with_shutdown(addr, signal);
            served.await.map_err(|source| RunError::Listen { addr, source })
        }));
    }
    #[cfg(not(madsim))]
    for addr in resolved.metrics_addrs.clone() {
        let app = http::metrics_routes(handle.clone());
        let signal = stopped(shutdown.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::MetricsListen { addr, source })?;
        tracing::info!(%addr, "serving metrics and health");
        servers.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
                .map_err(|source| RunError::MetricsListen { addr, source })
        }));
    }
    if let Some(compaction) = resolved.auto_compaction {
        let node = handle.clone();
        servers.push(tokio::spawn(async move {
            compactor::run(node, compaction).await;
            Ok(())
        }));
    }
    let removed = async move {
        while !*removed_rx.borrow_and_update() {
            if removed_rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let node_result = tokio::select! {
        r = wait_node(node_task, handle) => r,
        () = removed => {
            tracing::warn!("{REMOVED}");
            Ok(())
        }
    };
    for s in servers {
        s.abort();
    }
    node_result
}

/// `--quota-backend-bytes` as etcd 3.5.1 takes it (and logs it): 0 is the default of 2 GiB, a
/// negative value turns the quota off, a value above 8 GiB is taken with a warning. Sets the
/// `etcd_server_quota_backend_bytes` gauge to what the flag resolved to (etcd's shows the flag
/// itself when the quota is off).
fn backend_quota(flag: i64) -> Option<u64> {
    use keel_core::quota::{quota_bytes, MAX_QUOTA_BYTES};
    let quota = quota_bytes(flag);
    match quota {
        None => tracing::info!(quota_size_bytes = flag, "disabled backend quota"),
        Some(q) if flag == 0 => {
            tracing::info!(quota_size_bytes = q, "enabled backend quota with default value")
        }
        Some(q) => {
            if q > MAX_QUOTA_BYTES {
                tracing::warn!(
                    quota_size_bytes = q,
                    quota_maximum_size_bytes = MAX_QUOTA_BYTES,
                    "quota exceeds the maximum value"
                );
            }
            tracing::info!(quota_size_bytes = q, "enabled backend quota");
        }
    }
    let gauge = quota.map_or(flag, |q| i64::try_from(q).unwrap_or(i64::MAX));
    runtime::metrics::QUOTA_BACKEND_BYTES.store(gauge, std::sync::atomic::Ordering::Relaxed);
    quota
}

/// Resolves once `shutdown` turns true (or its sender is gone): the servers' stop signal.
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
}

async fn wait_node(
    task: tokio::task::JoinHandle<Result<(), String>>,
    _handle: NodeHandle,
) -> Result<(), RunError> {
    match task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e == REMOVED => {
            // As etcd, a removed member exits cleanly; its last replies get a moment to leave.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(())
        }
        Ok(Err(e)) => Err(RunError::Node(e)),
        Err(e) => Err(RunError::Node(format!("node task panicked: {e}"))),
    }
}

/// Raft's election jitter only needs to differ between nodes and runs; the simulator passes
/// its own seed instead.
fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}
