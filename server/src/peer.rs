//! The peer transport: Raft messages between members over gRPC (`keelpb.Raft/Send`), in
//! batches. One sender task per peer drains a bounded queue, batches what is waiting, and sends
//! it; on failure it drops the batch (Raft retransmits what matters) and reconnects with
//! backoff. The receiving side hands batches to the node task. The node starts and drops
//! senders as members are added and removed ([`runtime::node::Transport`]).
//!
//! A snapshot (MsgSnap, the whole state image) does not go in a batch: it is streamed in
//! chunks (`keelpb.Raft/SendSnapshot`) on its own connection, by its own task, one at a time
//! per peer, so heartbeats keep flowing meanwhile; its outcome is reported to the node, which
//! keeps the follower paused until then. The receiver checks the size and checksum before the
//! message reaches the node.
//!
//! The same service answers two membership questions: the members (`keelpb.Raft/Members`, for a
//! member joining with `--initial-cluster-state existing`) and a learner's promotion forwarded
//! to the leader (`keelpb.Raft/Promote`). A removed member's messages are refused with etcd's
//! words, and a member told so stops, as etcd's does on HTTP 410.

use crate::pb::keelpb::raft_client::RaftClient;
use crate::pb::keelpb::raft_server::Raft;
use crate::pb::keelpb::{
    MembersRequest, MembersResponse, MessageBatch, PromoteRequest, PromoteResponse, SendResponse,
    SnapshotChunk,
};
use bytes::{Bytes, BytesMut};
use keel_core::pb::etcdserverpb::Member;
use keel_core::raft::{Message, MessageType};
use prost::Message as _;
use runtime::node::{MemberChange, NodeHandle, SnapshotReports, REMOVED};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// Bound on messages queued for one peer.
pub const PEER_QUEUE_MAX: usize = 4096;
/// Bound on messages in one batch.
pub const BATCH_MESSAGES_MAX: usize = 512;
/// Bound on the bytes of messages in one batch (a batch always takes at least one message).
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// Bound on one gRPC message on the peer port: a batch, or one chunk of a snapshot. Raft bounds
/// each append's entries, and each entry is bounded by `--max-request-bytes`.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 << 20;
/// The data carried by one snapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Bound on a snapshot's data: the receiver refuses a stream that says or sends more.
pub const SNAPSHOT_BYTES_MAX: u64 = 16 << 30;
/// How long one snapshot stream may take before the sender gives up (and Raft sends again):
/// this much, plus a second per MiB of image.
const SNAPSHOT_STREAM_TIMEOUT: Duration = Duration::from_secs(600);
/// Snapshot streams a member receives at once (others are refused, and their senders retry).
const SNAPSHOTS_RECEIVING_MAX: usize = 1;
/// How long the receiver waits for the next chunk of a snapshot before dropping the stream.
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest a snapshot stream may arrive, on average, once its first [`SNAPSHOT_RATE_GRACE`]
/// is over: a sender that trickles holds the only receiving slot no longer than that.
const SNAPSHOT_RATE_MIN_BYTES_PER_SEC: u64 = 256 << 10;
const SNAPSHOT_RATE_GRACE: Duration = Duration::from_secs(30);

/// Who sends a batch, to whom, in which cluster: stamped on every batch and snapshot stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchIds {
    pub(crate) cluster_id: u64,
    pub(crate) from: u64,
    pub(crate) to: u64,
}

/// Why a peer's request is refused before anything of it reaches the node: it is from another
/// cluster, for another member, or from a member removed from this one. Whether the sender is a
/// member is Raft's to judge (`RawNode::step`): it knows the configuration each message must be
/// judged against, including the one exception a member that lags behind its leader needs.
fn check_sender(node: &NodeHandle, cluster_id: u64, from: u64, to: u64) -> Result<(), Status> {
    if cluster_id != node.cluster_id {
        return Err(Status::failed_precondition(format!(
            "keel: cluster ID mismatch (this member's {:x}, the request's {cluster_id:x})",
            node.cluster_id
        )));
    }
    if to != node.member_id {
        return Err(Status::invalid_argument(format!("keel: messages for member {to:x}, not this one")));
    }
    let members = node.members();
    let view = members.borrow();
    if view.removed.contains(&from) {
        return Err(Status::failed_precondition(REMOVED));
    }
    Ok(())
}

/// Logs a refused peer request with who sent it: the first few, then every thousandth (with
/// the count), so that a flood of them cannot flood the log.
fn refused(remote: Option<std::net::SocketAddr>, from: u64, e: Status) -> Status {
    static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if n <= 10 || n.is_multiple_of(1000) {
        let remote = remote.map_or_else(|| "unknown".to_string(), |a| a.to_string());
        tracing::warn!(%remote, from = %format!("{from:x}"), error = %e.message(), refused = n, "peer request refused");
    }
    e
}

#[derive(Clone)]
pub(crate) struct PeerService {
    pub(crate) node: NodeHandle,
    /// Permits for snapshot streams being received ([`SNAPSHOTS_RECEIVING_MAX`]).
    pub(crate) snapshots: Arc<tokio::sync::Semaphore>,
}

impl PeerService {
    pub(crate) fn new(node: NodeHandle) -> PeerService {
        PeerService { node, snapshots: Arc::new(tokio::sync::Semaphore::new(SNAPSHOTS_RECEIVING_MAX)) }
    }
}

#[tonic::async_trait]
impl Raft for PeerService {
    async fn send(&self, request: Request<MessageBatch>) -> Result<Response<SendResponse>, Status> {
        let remote = request.remote_addr();
        let batch = request.into_inner();
        let from = batch.from;
        check_sender(&self.node, batch.cluster_id, from, batch.to).map_err(|e| refused(remote, from, e))?;
        for m in &batch.messages {
            runtime::metrics::peer_received(m.from, m.encoded_len() as u64);
        }
        // Every message is the batch's sender's, to this member; a snapshot comes only on its own
        // stream, whose checks it must pass. What each message says is checked by Raft
        // (`RawNode::step` refuses what no honest member sends).
        if let Some(m) = batch.messages.iter().find(|m| m.from != from || m.to != batch.to) {
            let e = Status::invalid_argument(format!(
                "keel: a message from {:x} to {:x} in the batch",
                m.from, m.to
            ));
            return Err(refused(remote, from, e));
        }
        if batch.messages.iter().any(|m| m.msg_type == MessageType::MsgSnap as i32) {
            let e = Status::invalid_argument("keel: a snapshot comes on its own stream (SendSnapshot)");
            return Err(refused(remote, from, e));
        }
        self.node
            .step(batch.messages)
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        Ok(Response::new(SendResponse {}))
    }

    async fn send_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SendResponse>, Status> {
        // One image in memory at a time: another sender waits for its next try.
        let Ok(_permit) = self.snapshots.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted("keel: already receiving a snapshot"));
        };
        let remote = request.remote_addr();
        let mut stream = request.into_inner();
        let mut assembly = SnapshotAssembly::default();
        let mut checked = false;
        let started = tokio::time::Instant::now();
        let message = loop {
            let next = tokio::time::timeout(SNAPSHOT_CHUNK_TIMEOUT, stream.message())
                .await
                .map_err(|_| Status::deadline_exceeded("keel: no snapshot chunk for 30 s"))??;
            let Some(chunk) = next else {
                return Err(Status::invalid_argument("snapshot stream ended before its last chunk"));
            };
            let cluster_id = chunk.cluster_id;
            let done = assembly.push(chunk).map_err(Status::invalid_argument)?;
            // Who sends it, and to whom, is known from the first chunk: refuse before buffering.
            let (from, to) = assembly.sender_and_receiver().unwrap_or_default();
            if !checked {
                check_sender(&self.node, cluster_id, from, to).map_err(|e| refused(remote, from, e))?;
                checked = true;
            }
            if let Err(e) = snapshot_rate_ok(started.elapsed(), assembly.received) {
                return Err(refused(remote, from, Status::deadline_exceeded(e)));
            }
            if let Some(m) = done {
                break m;
            }
        };
        runtime::metrics::peer_received(message.from, message.encoded_len() as u64);
        let index = message.snapshot.as_ref().and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.index);
        tracing::info!(from = %format!("{:x}", message.from), index, bytes = assembly.received, "received a snapshot");
        self.node.step(vec![message]).await.map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        Ok(Response::new(SendResponse {}))
    }

    async fn members(&self, _r: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        let s = self.node.status().await.map_err(crate::errors::request_status)?;
        Ok(Response::new(MembersResponse { cluster_id: self.node.cluster_id, members: s.members }))
    }

    async fn promote(&self, r: Request<PromoteRequest>) -> Result<Response<PromoteResponse>, Status> {
        let id = r.into_inner().id;
        let changed = self
            .node
            .change_members(MemberChange::Promote { id })
            .await
            .map_err(crate::errors::request_status)?;
        Ok(Response::new(PromoteResponse { members: changed.members }))
    }
}

/// Whether a snapshot stream that has run `elapsed` and brought `received` bytes is fast enough
/// to go on: after a grace period, at least [`SNAPSHOT_RATE_MIN_BYTES_PER_SEC`] on average.
fn snapshot_rate_ok(elapsed: Duration, received: u64) -> Result<(), String> {
    let Some(rated) = elapsed.checked_sub(SNAPSHOT_RATE_GRACE) else { return Ok(()) };
    let owed = rated.as_secs().saturating_mul(SNAPSHOT_RATE_MIN_BYTES_PER_SEC);
    if received < owed {
        return Err(format!(
            "keel: snapshot stream too slow: {received} bytes in {} s (at least {} KiB/s after the first {} s)",
            elapsed.as_secs(),
            SNAPSHOT_RATE_MIN_BYTES_PER_SEC >> 10,
            SNAPSHOT_RATE_GRACE.as_secs()
        ));
    }
    Ok(())
}

async fn connect(url: &str) -> Result<RaftClient<Channel>, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5));
    let ch = endpoint.connect().await.map_err(|e| e.to_string())?;
    Ok(RaftClient::new(ch).max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
}

/// What a joining member learns from the running cluster: its id, the cluster's, and the
/// members, asked of the first member (by peer URL) that answers, as etcd asks at start.
pub(crate) async fn fetch_cluster(
    peer_urls: &[String],
    own_peer_urls: &[String],
) -> Result<(u64, u64, Vec<Member>), String> {
    let mut errors = Vec::new();
    for url in peer_urls.iter().filter(|u| !own_peer_urls.contains(u)) {
        let resp = match connect(url).await {
            Ok(mut c) => c.members(MembersRequest {}).await.map_err(|e| e.message().to_string()),
            Err(e) => Err(e),
        };
        let resp = match resp {
            Ok(r) => r.into_inner(),
            Err(e) => {
                errors.push(format!("{url}: {e}"));
                continue;
            }
        };
        let mut own = own_peer_urls.to_vec();
        own.sort();
        let me = resp.members.iter().find(|m| {
            let mut urls = m.peer_ur_ls.clone();
            urls.sort();
            urls == own
        });
        return match me {
            Some(m) => Ok((m.id, resp.cluster_id, resp.members.clone())),
            None => Err(format!(
                "the cluster (asked at {url}) has no member with peer URLs {own_peer_urls:?}; \
                 add it first (etcdctl member add)"
            )),
        };
    }
    Err(format!("cannot fetch the cluster's members from any peer URL in --initial-cluster: {errors:?}"))
}

/// Forwards a learner's promotion to the leader at `leader_url`; etcd's errors come back as
/// they are.
pub(crate) async fn forward_promote(leader_url: &str, id: u64) -> Result<Vec<Member>, Status> {
    let mut c = connect(leader_url).await.map_err(Status::unavailable)?;
    Ok(c.promote(PromoteRequest { id }).await?.into_inner().members)
}

/// The peer service, ready to serve (its type differs under the simulator, hence a macro).
macro_rules! peer_server {
    ($node:expr) => {
        $crate::pb::keelpb::raft_server::RaftServer::new($crate::peer::PeerService::new($node))
            .max_decoding_message_size($crate::peer::PEER_MESSAGE_BYTES_MAX)
    };
}
pub(crate) use peer_server;

/// A snapshot stream being received: the message from the first chunk, then the data.
#[derive(Default)]
struct SnapshotAssembly {
    message: Option<Message>,
    /// The message's sender and receiver, once the first chunk is in.
    from_to: Option<(u64, u64)>,
    total: u64,
    received: u64,
    data: BytesMut,
}

impl SnapshotAssembly {
    /// The snapshot's sender and receiver, once the first chunk has been taken.
    fn sender_and_receiver(&self) -> Option<(u64, u64)> {
        self.from_to
    }

    /// Takes the next chunk; returns the whole message (with its data) after the last one, or
    /// why the stream is refused.
    fn push(&mut self, chunk: SnapshotChunk) -> Result<Option<Message>, String> {
        match (self.message.is_some(), chunk.message) {
            (false, Some(m)) => {
                let is_snap = m.msg_type == MessageType::MsgSnap as i32;
                if !is_snap || m.snapshot.as_ref().and_then(|s| s.metadata.as_ref()).is_none() {
                    return Err("a snapshot stream must start with a snapshot message".into());
                }
                if chunk.total_bytes > SNAPSHOT_BYTES_MAX {
                    return Err(format!(
                        "snapshot of {} bytes is over the bound of {SNAPSHOT_BYTES_MAX}",
                        chunk.total_bytes
                    ));
                }
                self.total = chunk.total_bytes;
                self.from_to = Some((m.from, m.to));
                // Grows as the data comes: the size the sender claims is not trusted up front.
                self.data.reserve(chunk.total_bytes.min(SNAPSHOT_CHUNK_BYTES as u64) as usize);
                self.message = Some(m);
            }
            (false, None) => return Err("a snapshot stream must start with its message".into()),
            (true, Some(_)) => return Err("a snapshot stream carries one message".into()),
            (true, None) => {}
        }
        if chunk.data.len() > SNAPSHOT_CHUNK_BYTES {
            return Err(format!(
                "snapshot chunk of {} bytes is over {SNAPSHOT_CHUNK_BYTES}",
                chunk.data.len()
            ));
        }
        self.received += chunk.data.len() as u64;
        if self.received > self.total {
            return Err(format!("snapshot data runs past its size of {} bytes", self.total));
        }
        self.data.extend_from_slice(&chunk.data);
        if !chunk.last {
            return Ok(None);
        }
        if self.received != self.total {
            return Err(format!("snapshot data ended at {} of {} bytes", self.received, self.total));
        }
        let data = std::mem::take(&mut self.data).freeze();
        if crc32fast::hash(&data) != chunk.crc32 {
            return Err("snapshot data does not match its checksum".into());
        }
        let mut m = self.message.take().expect("checked above");
        m.snapshot.as_mut().expect("checked above").data = data;
        Ok(Some(m))
    }
}

/// Cuts a snapshot message into the chunks of its stream.
fn snapshot_chunks(mut m: Message, cluster_id: u64) -> Vec<SnapshotChunk> {
    let data: Bytes = std::mem::take(&mut m.snapshot.as_mut().expect("MsgSnap carries a snapshot").data);
    let crc32 = crc32fast::hash(&data);
    let total_bytes = data.len() as u64;
    let mut chunks = Vec::with_capacity(data.len() / SNAPSHOT_CHUNK_BYTES + 1);
    let mut at = 0;
    loop {
        let end = (at + SNAPSHOT_CHUNK_BYTES).min(data.len());
        let last = end == data.len();
        chunks.push(SnapshotChunk {
            message: chunks.is_empty().then(|| m.clone()),
            total_bytes: if chunks.is_empty() { total_bytes } else { 0 },
            data: data.slice(at..end),
            last,
            crc32: if last { crc32 } else { 0 },
            cluster_id: if chunks.is_empty() { cluster_id } else { 0 },
        });
        if last {
            return chunks;
        }
        at = end;
    }
}

/// Streams one snapshot to `url` on a connection of its own.
async fn stream_snapshot(url: &str, m: Message, cluster_id: u64) -> Result<(), Status> {
    let mib = m.snapshot.as_ref().map_or(0, |s| s.data.len() as u64) >> 20;
    let timeout = SNAPSHOT_STREAM_TIMEOUT + Duration::from_secs(mib);
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(timeout);
    let ch = endpoint.connect().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut client = RaftClient::new(ch).max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    client.send_snapshot(futures::stream::iter(snapshot_chunks(m, cluster_id))).await?;
    Ok(())
}

/// Starts a sender task for the peer `id` at `url`; returns the queue the node task writes to.
/// The task ends once the queue is dropped and drained. `on_removed` runs if the peer says
/// this member was removed from the cluster; `reports` hears how each snapshot ended.
pub(crate) fn start_sender(
    ids: BatchIds,
    url: &str,
    on_removed: Arc<dyn Fn() + Send + Sync>,
    reports: SnapshotReports,
) -> mpsc::Sender<Message> {
    let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
    tokio::spawn(sender(ids, url.to_string(), rx, on_removed, reports));
    tx
}

/// Hands a snapshot to its own task, unless one to this peer is still in flight (then it is
/// reported failed at once and Raft sends a newer one later).
fn send_snapshot(
    ids: BatchIds,
    url: &str,
    m: Message,
    in_flight: &mut Option<tokio::task::JoinHandle<()>>,
    reports: &SnapshotReports,
    on_removed: &Arc<dyn Fn() + Send + Sync>,
) {
    let peer = ids.to;
    if in_flight.as_ref().is_some_and(|t| !t.is_finished()) {
        let reports = reports.clone();
        tokio::spawn(async move { reports.report(peer, true).await });
        return;
    }
    let (url, reports, on_removed) = (url.to_string(), reports.clone(), on_removed.clone());
    let bytes = m.encoded_len() as u64;
    *in_flight = Some(tokio::spawn(async move {
        let result = stream_snapshot(&url, m, ids.cluster_id).await;
        if let Err(e) = &result {
            runtime::metrics::peer_send_failed(peer, 1);
            tracing::warn!(peer = %format!("{peer:x}"), error = %e, "snapshot stream failed");
            if e.code() == tonic::Code::FailedPrecondition && e.message() == REMOVED {
                on_removed();
            }
        } else {
            runtime::metrics::peer_sent(peer, bytes);
        }
        reports.report(peer, result.is_err()).await;
    }));
}

/// A sender that stops reports every snapshot still queued as failed: the node handed them
/// over and waits for their outcome (the follower stays paused until then).
async fn fail_queued_snapshots(peer: u64, mut rx: mpsc::Receiver<Message>, reports: &SnapshotReports) {
    rx.close();
    while let Ok(m) = rx.try_recv() {
        if m.msg_type == MessageType::MsgSnap as i32 {
            reports.report(peer, true).await;
        }
    }
}

async fn sender(
    ids: BatchIds,
    url: String,
    mut rx: mpsc::Receiver<Message>,
    on_removed: Arc<dyn Fn() + Send + Sync>,
    reports: SnapshotReports,
) {
    let peer = ids.to;
    let mut client: Option<RaftClient<Channel>> = None;
    let mut backoff = Duration::from_millis(50);
    let mut snapshot: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(first) = rx.recv().await {
        let mut messages = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            if m.msg_type == MessageType::MsgSnap as i32 {
                send_snapshot(ids, &url, m, &mut snapshot, &reports, &on_removed);
            } else {
                bytes += m.encoded_len();
                messages.push(m);
            }
            if messages.len() < BATCH_MESSAGES_MAX && bytes < BATCH_BYTES_MAX {
                next = rx.try_recv().ok();
            }
        }
        if messages.is_empty() {
            continue;
        }
        if client.is_none() {
            let endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
                Ok(e) => e.connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(5)),
                Err(e) => {
                    tracing::error!(peer = %format!("{peer:x}"), %url, error = %e, "bad peer URL");
                    return fail_queued_snapshots(peer, rx, &reports).await;
                }
            };
            match endpoint.connect().await {
                Ok(ch) => {
                    client = Some(RaftClient::new(ch).max_encoding_message_size(PEER_MESSAGE_BYTES_MAX));
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    runtime::metrics::peer_send_failed(peer, messages.len() as u64);
                    tracing::debug!(peer = %format!("{peer:x}"), error = %e, "peer unreachable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue; // These messages are dropped; Raft sends again.
                }
            }
        }
        let c = client.as_mut().expect("connected");
        let (count, bytes) = (messages.len() as u64, messages.iter().map(|m| m.encoded_len() as u64).sum());
        let batch = MessageBatch { messages, cluster_id: ids.cluster_id, from: ids.from, to: ids.to };
        if let Err(e) = c.send(batch).await {
            runtime::metrics::peer_send_failed(peer, count);
            if e.code() == tonic::Code::FailedPrecondition && e.message() == REMOVED {
                tracing::warn!(peer = %format!("{peer:x}"), "{REMOVED}");
                on_removed();
                return fail_queued_snapshots(peer, rx, &reports).await;
            }
            tracing::debug!(peer = %format!("{peer:x}"), error = %e, "peer send failed");
            client = None;
        } else {
            runtime::metrics::peer_sent(peer, bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::pb::keelpb::{Snapshot, SnapshotMetadata};

    fn snap(data_len: usize) -> Message {
        let data: Vec<u8> = (0..data_len).map(|i| (i * 31 % 251) as u8).collect();
        Message {
            msg_type: MessageType::MsgSnap as i32,
            from: 1,
            to: 2,
            term: 3,
            snapshot: Some(Snapshot {
                data: data.into(),
                metadata: Some(SnapshotMetadata { index: 40, term: 3, ..Default::default() }),
            }),
            ..Default::default()
        }
    }

    fn assemble(chunks: Vec<SnapshotChunk>) -> Result<Option<Message>, String> {
        let mut a = SnapshotAssembly::default();
        let mut out = None;
        for c in chunks {
            assert!(out.is_none(), "a chunk after the message was complete");
            out = a.push(c)?;
        }
        Ok(out)
    }

    #[test]
    fn a_snapshot_crosses_in_chunks_unchanged() {
        for len in [0, 1, SNAPSHOT_CHUNK_BYTES - 1, SNAPSHOT_CHUNK_BYTES, 3 * SNAPSHOT_CHUNK_BYTES + 7] {
            let m = snap(len);
            let chunks = snapshot_chunks(m.clone(), 7);
            assert_eq!(chunks.len(), len.div_ceil(SNAPSHOT_CHUNK_BYTES).max(1), "len {len}");
            assert!(chunks.iter().all(|c| c.encoded_len() <= PEER_MESSAGE_BYTES_MAX));
            assert_eq!(assemble(chunks).unwrap(), Some(m), "len {len}");
        }
    }

    #[test]
    fn a_trickling_stream_is_dropped() {
        assert!(snapshot_rate_ok(Duration::from_secs(29), 0).is_ok(), "grace period");
        assert!(snapshot_rate_ok(Duration::from_secs(31), 0).is_err());
        assert!(snapshot_rate_ok(Duration::from_secs(40), 10 * SNAPSHOT_RATE_MIN_BYTES_PER_SEC).is_ok());
        let slow = snapshot_rate_ok(Duration::from_secs(40), 10 * SNAPSHOT_RATE_MIN_BYTES_PER_SEC - 1);
        assert!(slow.unwrap_err().contains("too slow"));
    }

    #[test]
    fn a_damaged_or_oversized_stream_is_refused() {
        let chunks = || snapshot_chunks(snap(2 * SNAPSHOT_CHUNK_BYTES + 5), 7);
        let refused = |mut c: Vec<SnapshotChunk>, edit: &dyn Fn(&mut Vec<SnapshotChunk>)| {
            edit(&mut c);
            assemble(c).expect_err("refused")
        };
        let flipped = refused(chunks(), &|c| {
            let mut d = c[1].data.to_vec();
            d[9] ^= 1;
            c[1].data = d.into();
        });
        assert!(flipped.contains("checksum"), "{flipped}");
        let short = refused(chunks(), &|c| {
            c.remove(1);
        });
        assert!(short.contains("ended at"), "{short}");
        let long = refused(chunks(), &|c| c[0].total_bytes = 10);
        assert!(long.contains("runs past"), "{long}");
        let huge = refused(chunks(), &|c| c[0].total_bytes = SNAPSHOT_BYTES_MAX + 1);
        assert!(huge.contains("over the bound"), "{huge}");
        let headless = refused(chunks(), &|c| c[0].message = None);
        assert!(headless.contains("start with"), "{headless}");
        let two = refused(chunks(), &|c| c[1].message = c[0].message.clone());
        assert!(two.contains("one message"), "{two}");
        let not_snap =
            refused(chunks(), &|c| c[0].message.as_mut().unwrap().msg_type = MessageType::MsgApp as i32);
        assert!(not_snap.contains("snapshot message"), "{not_snap}");
        let big_chunk = refused(chunks(), &|c| c[2].data = vec![0; SNAPSHOT_CHUNK_BYTES + 1].into());
        assert!(big_chunk.contains("chunk of"), "{big_chunk}");
        // A stream that never says it is done delivers nothing.
        let mut open = chunks();
        open.pop();
        assert_eq!(assemble(open).unwrap(), None);
    }
}
