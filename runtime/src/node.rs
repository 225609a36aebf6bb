//! The tokio driver: one task owns the Raft node, the WAL and the state machine. It ticks the
//! node, takes proposals and reads from a bounded channel in batches (so one WAL sync serves
//! many clients), handles each `Ready` with [`handle_ready`], and answers clients once their
//! entry is applied (writes) or the applied index reaches their read point (reads).

use crate::backend::Dir;
use crate::btree::PageFile;
use crate::ready::handle_ready;
use crate::ready::{maybe_checkpoint, Storage};
use crate::recover::Recovered;
use crate::watch::{WatchHub, WatchSpec, WatchUpdate};
use keel_core::lease::{
    LeaseError, TimeToLive, CHECKPOINT_LIMIT, DEFAULT_CHECKPOINT_INTERVAL_MS, EXPIRED_LIMIT,
    EXPIRY_POLL_INTERVAL_MS,
};
use keel_core::mvcc::MvccError;
use keel_core::pb::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use keel_core::pb::etcdserverpb::{Member, RangeRequest, RangeResponse, ResponseHeader};
use keel_core::pb::keelpb::{request::Op, MessageType, Request};
use keel_core::raft::{MemStorage, Message, ProposeError, RawNode, StateRole};
use keel_core::state_machine::{Applied, ApplyError, StateMachine, WriteResponse};
use prost::Message as _;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

/// Bound on commands queued for the node task; senders wait beyond it (backpressure).
pub const COMMAND_QUEUE_MAX: usize = 4096;
/// Bound on commands taken in one batch (one Ready, one WAL sync).
pub const BATCH_COMMANDS_MAX: usize = 1024;
/// Bound on proposals waiting for their entry to apply.
pub const PENDING_WRITES_MAX: usize = 16 * 1024;
/// Bound on reads waiting for their read point.
pub const PENDING_READS_MAX: usize = 16 * 1024;
/// Ticks after which an unanswered ReadIndex is asked again (5 heartbeats, 500 ms by default).
pub const READ_RETRY_TICKS: u64 = 5;
/// How long a client waits for its write to apply or its read to be served (etcd: 5 s plus
/// two election timeouts with defaults).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// Failures a client sees; the server maps them to etcd's gRPC codes and messages.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Mvcc(#[from] MvccError),
}

/// A point-in-time view of the node, for Status and MemberList.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub header: ResponseHeader,
    pub leader: u64,
    pub raft_index: u64,
    pub raft_term: u64,
    pub raft_applied_index: u64,
    pub wal_bytes: u64,
    /// Bytes of the state machine's image file (etcd's backend database size).
    pub db_bytes: u64,
    pub members: Vec<Member>,
}

enum Command {
    /// Raft messages from peers.
    Step(Vec<Message>),
    TransferLeader {
        target: u64,
    },
    WatchOpen {
        reply: oneshot::Sender<(u64, mpsc::Receiver<WatchUpdate>)>,
    },
    WatchCreate {
        stream: u64,
        watch_id: i64,
        spec: WatchSpec,
    },
    WatchCancel {
        stream: u64,
        watch_id: i64,
    },
    WatchProgress {
        stream: u64,
    },
    WatchClose {
        stream: u64,
    },
    Propose {
        op: Op,
        reply: oneshot::Sender<Result<WriteResponse, RequestError>>,
    },
    Range {
        req: RangeRequest,
        reply: oneshot::Sender<Result<RangeResponse, RequestError>>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    HashKv {
        revision: i64,
        reply: oneshot::Sender<Result<HashKv, RequestError>>,
    },
    LeaseKeepAlive {
        id: i64,
        reply: oneshot::Sender<(ResponseHeader, Result<i64, LeaseError>)>,
    },
    LeaseTimeToLive {
        id: i64,
        reply: oneshot::Sender<(ResponseHeader, Option<TimeToLive>)>,
    },
    LeaseLeases {
        reply: oneshot::Sender<(ResponseHeader, Vec<i64>)>,
    },
}

/// The store's hash at a revision (etcd's HashKV).
#[derive(Debug, Clone)]
pub struct HashKv {
    pub header: ResponseHeader,
    pub hash: u32,
    pub hash_revision: i64,
    pub compact_revision: i64,
}

/// The clients' side of the node task. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
    pub member_id: u64,
    pub cluster_id: u64,
}

impl NodeHandle {
    /// Proposes a write and waits for it to apply, at most [`REQUEST_TIMEOUT`]; a timeout means
    /// the outcome is unknown (it may still apply), as etcd's "request timed out" does.
    pub async fn propose(&self, op: Op) -> Result<WriteResponse, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Propose { op, reply }).await.map_err(|_| RequestError::Stopped)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(r) => r.map_err(|_| RequestError::Stopped)?,
            Err(_) => Err(RequestError::Timeout),
        }
    }

    /// A linearizable read (through ReadIndex), or a serializable one if the request says so.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Range { req, reply }).await.map_err(|_| RequestError::Stopped)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(r) => r.map_err(|_| RequestError::Stopped)?,
            Err(_) => Err(RequestError::Timeout),
        }
    }

    /// Asks the leader to hand leadership to `target` (the caller watches for it to happen).
    pub async fn transfer_leader(&self, target: u64) -> Result<(), RequestError> {
        self.tx.send(Command::TransferLeader { target }).await.map_err(|_| RequestError::Stopped)
    }

    /// Hands Raft messages from a peer to the node.
    pub async fn step(&self, msgs: Vec<Message>) -> Result<(), RequestError> {
        self.tx.send(Command::Step(msgs)).await.map_err(|_| RequestError::Stopped)
    }

    /// Opens a watch stream: its id and the updates the hub sends it.
    pub async fn watch_open(&self) -> Result<(u64, mpsc::Receiver<WatchUpdate>), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::WatchOpen { reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)
    }

    pub async fn watch_create(
        &self,
        stream: u64,
        watch_id: i64,
        spec: WatchSpec,
    ) -> Result<(), RequestError> {
        self.tx.send(Command::WatchCreate { stream, watch_id, spec }).await.map_err(|_| RequestError::Stopped)
    }

    pub async fn watch_cancel(&self, stream: u64, watch_id: i64) -> Result<(), RequestError> {
        self.tx.send(Command::WatchCancel { stream, watch_id }).await.map_err(|_| RequestError::Stopped)
    }

    pub async fn watch_progress(&self, stream: u64) -> Result<(), RequestError> {
        self.tx.send(Command::WatchProgress { stream }).await.map_err(|_| RequestError::Stopped)
    }

    pub async fn watch_close(&self, stream: u64) {
        let _ = self.tx.send(Command::WatchClose { stream }).await;
    }

    /// The hash of the applied state up to `revision` (0 = current).
    pub async fn hash_kv(&self, revision: i64) -> Result<HashKv, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::HashKv { revision, reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    /// Renews a lease (leader only); the granted TTL, or why not.
    pub async fn lease_keep_alive(
        &self,
        id: i64,
    ) -> Result<(ResponseHeader, Result<i64, LeaseError>), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::LeaseKeepAlive { id, reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)
    }

    pub async fn lease_time_to_live(
        &self,
        id: i64,
    ) -> Result<(ResponseHeader, Option<TimeToLive>), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::LeaseTimeToLive { id, reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)
    }

    pub async fn lease_leases(&self) -> Result<(ResponseHeader, Vec<i64>), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::LeaseLeases { reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)
    }

    pub async fn status(&self) -> Result<NodeStatus, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Status { reply }).await.map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)
    }
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub tick: Duration,
    /// The election timeout: a new leader extends every lease by it (etcd's rule), since the
    /// old leader may have stopped renewing up to that long ago.
    pub election_timeout: Duration,
    /// Quiet time after which a watcher that asked for progress notifications gets one.
    pub watch_progress_interval: Duration,
    /// Bounded queues to the peer transport, by member id. A full queue drops the message:
    /// Raft retransmits what matters.
    pub outbox: HashMap<u64, mpsc::Sender<Message>>,
    /// Where this boot's request ids start: `(start time in ms, low 40 bits) << 8`.
    pub id_base: u64,
    /// This member's name and client URLs, published through the log once a leader exists.
    pub name: String,
    pub client_urls: Vec<String>,
    pub member_id: u64,
    pub cluster_id: u64,
    /// Applied entries between two saves of the state machine's image (etcd's
    /// `--snapshot-count`); each save lets the WAL release what it covers.
    pub snapshot_count: u64,
}

type RangeReply = (RangeRequest, oneshot::Sender<Result<RangeResponse, RequestError>>);

struct Driver<D: Dir, F: PageFile> {
    cfg: DriverConfig,
    node: RawNode<MemStorage>,
    storage: Storage<D, F>,
    sm: StateMachine,
    /// Proposals by request id, waiting for their entry to apply.
    writes: HashMap<u64, oneshot::Sender<Result<WriteResponse, RequestError>>>,
    /// Reads collected in this batch; they share one ReadIndex.
    new_reads: Vec<RangeReply>,
    /// Read batches by ReadIndex context, waiting for their read state.
    reads_by_ctx: HashMap<u64, Vec<RangeReply>>,
    /// When each ReadIndex request went out (in ticks), to ask again if its answer is lost.
    read_issued: HashMap<u64, u64>,
    /// Read batches whose read point is known, waiting for the applied index to reach it.
    reads_by_index: BTreeMap<u64, Vec<RangeReply>>,
    pending_reads: usize,
    next_seq: u64,
    hub: WatchHub,
    /// This member's monotonic clock, for lease expiry (never replicated).
    started: tokio::time::Instant,
    last_lease_poll_ms: u64,
    ticks: u64,
    /// Ticks per (progress-notification) second.
    ticks_per_second: u64,
}

/// Starts the node task on the current runtime. It runs until `shutdown` turns true or the WAL
/// fails; the returned join handle yields the reason it stopped.
pub fn spawn<D: Dir + 'static, F: PageFile + 'static>(
    recovered: Recovered<D, F>,
    cfg: DriverConfig,
    mut shutdown: watch::Receiver<bool>,
) -> (NodeHandle, tokio::task::JoinHandle<Result<(), String>>) {
    let (tx, mut rx) = mpsc::channel(COMMAND_QUEUE_MAX);
    let handle = NodeHandle { tx, member_id: cfg.member_id, cluster_id: cfg.cluster_id };
    let cfg_tick_ms = cfg.tick.as_millis() as u64;
    let mut d = Driver {
        cfg,
        node: recovered.node,
        storage: recovered.storage,
        sm: recovered.sm,
        writes: HashMap::new(),
        new_reads: Vec::new(),
        reads_by_ctx: HashMap::new(),
        read_issued: HashMap::new(),
        reads_by_index: BTreeMap::new(),
        pending_reads: 0,
        next_seq: 0,
        hub: WatchHub::new(),
        started: tokio::time::Instant::now(),
        last_lease_poll_ms: 0,
        ticks: 0,
        ticks_per_second: (1000 / cfg_tick_ms.max(1)).max(1),
    };
    let join = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(d.cfg.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    d.node.tick();
                    d.drive_leases();
                    // Clients that gave up (timed out, disconnected) free their slots.
                    d.purge_abandoned();
                    d.retry_reads();
                    d.publish_attributes();
                    d.ticks += 1;
                    if d.ticks % d.ticks_per_second == 0 {
                        let quiet = d.cfg.watch_progress_interval.as_secs().max(1) as u32;
                        d.hub.progress_tick(quiet, d.header());
                    }
                    // Watchers that fell behind catch up as their clients read.
                    if d.hub.has_unsynced() {
                        d.hub.catch_up(&d.sm.store, d.header());
                    }
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    d.handle(cmd);
                    for _ in 1..BATCH_COMMANDS_MAX {
                        match rx.try_recv() {
                            Ok(cmd) => d.handle(cmd),
                            Err(_) => break,
                        }
                    }
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                }
            }
            d.issue_read_index();
            if let Err(e) = d.drain_ready() {
                tracing::error!(error = %e, "stopping the node: the WAL failed");
                return Err(e);
            }
        }
    });
    (handle, join)
}

impl<D: Dir, F: PageFile> Driver<D, F> {
    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cfg.cluster_id,
            member_id: self.cfg.member_id,
            revision: self.sm.store.revision(),
            raft_term: self.node.term(),
        }
    }

    /// A request id unique across members and restarts, as etcd's id generator makes them: the
    /// member id's low 16 bits, then a 48-bit counter that starts at this boot's start time in
    /// milliseconds shifted left by 8 (so a restart starts above every id the last run used,
    /// unless the clock went back or more than 256 ids per millisecond were used). Replies are
    /// matched to waiters by it, and the state machine drops a duplicate of one it applied.
    fn next_id(&mut self) -> u64 {
        self.next_seq += 1;
        let low = (self.cfg.id_base.wrapping_add(self.next_seq)) & ((1 << 48) - 1);
        ((self.cfg.member_id & 0xffff) << 48) | low
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::TransferLeader { target } => self.node.transfer_leader(target),
            Command::Step(msgs) => {
                for m in msgs {
                    if let Err(e) = self.node.step(m) {
                        tracing::debug!(error = %e, "peer message refused");
                    }
                }
            }
            Command::WatchOpen { reply } => {
                let _ = reply.send(self.hub.open_stream());
            }
            Command::WatchCreate { stream, watch_id, spec } => {
                let header = self.header();
                self.hub.create(stream, watch_id, spec, &self.sm.store, header);
                self.hub.catch_up(&self.sm.store, header);
            }
            Command::WatchCancel { stream, watch_id } => self.hub.cancel(stream, watch_id, self.header()),
            Command::WatchProgress { stream } => self.hub.progress(stream, self.header()),
            Command::WatchClose { stream } => self.hub.close_stream(stream),
            Command::Propose { op, reply } => {
                if self.writes.len() >= PENDING_WRITES_MAX {
                    let _ = reply.send(Err(RequestError::TooManyRequests));
                    return;
                }
                let id = self.next_id();
                let data = Request { id, op: Some(op) }.encode_to_vec();
                match self.node.propose(data.into()) {
                    Ok(_) => {
                        self.writes.insert(id, reply);
                    }
                    Err(ProposeError::NotLeader | ProposeError::NotMember) => {
                        let _ = reply.send(Err(RequestError::NoLeader));
                    }
                    Err(ProposeError::TransferInProgress) => {
                        let _ = reply.send(Err(RequestError::LeaderChanged));
                    }
                    Err(ProposeError::UncommittedLimit | ProposeError::ConfChangePending) => {
                        let _ = reply.send(Err(RequestError::TooManyRequests));
                    }
                }
            }
            Command::Range { req, reply } => {
                if req.serializable {
                    let _ = reply.send(self.serve_range(&req));
                } else if self.pending_reads >= PENDING_READS_MAX {
                    let _ = reply.send(Err(RequestError::TooManyRequests));
                } else {
                    self.pending_reads += 1;
                    self.new_reads.push((req, reply));
                }
            }
            Command::LeaseKeepAlive { id, reply } => {
                let now = self.now_ms();
                let _ = reply.send((self.header(), self.sm.lessor.renew(id, now)));
            }
            Command::LeaseTimeToLive { id, reply } => {
                let now = self.now_ms();
                let _ = reply.send((self.header(), self.sm.lessor.time_to_live(id, now)));
            }
            Command::LeaseLeases { reply } => {
                let _ = reply.send((self.header(), self.sm.lessor.leases()));
            }
            Command::HashKv { revision, reply } => {
                let result =
                    self.sm.store.hash_kv(revision).map_err(RequestError::from).map(|(hash, rev)| HashKv {
                        header: self.header(),
                        hash,
                        hash_revision: rev,
                        compact_revision: self.sm.store.compacted(),
                    });
                let _ = reply.send(result);
            }
            Command::Status { reply } => {
                let _ = reply.send(NodeStatus {
                    header: self.header(),
                    leader: self.node.leader(),
                    raft_index: self.node.last_index(),
                    raft_term: self.node.term(),
                    raft_applied_index: self.node.applied(),
                    wal_bytes: self.storage.wal.len(),
                    db_bytes: self.storage.image.file_bytes(),
                    members: self.sm.members().cloned().collect(),
                });
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The leader's side of leases: take over expiry once caught up with the log, propose
    /// revokes for expired leases and checkpoints of remaining TTLs, and let go on losing
    /// leadership.
    fn drive_leases(&mut self) {
        let now = self.now_ms();
        let leading = self.node.role() == StateRole::Leader;
        if !leading {
            if self.sm.lessor.is_leader() {
                self.sm.lessor.demote();
            }
            return;
        }
        if !self.sm.lessor.is_leader() {
            // Promote once every earlier grant and checkpoint is applied.
            if self.node.applied() < self.node.committed() {
                return;
            }
            self.sm.lessor.promote(now, self.cfg.election_timeout.as_millis() as u64);
        }
        if now < self.last_lease_poll_ms + EXPIRY_POLL_INTERVAL_MS {
            return;
        }
        self.last_lease_poll_ms = now;
        for id in self.sm.lessor.expired(now, EXPIRED_LIMIT) {
            self.propose_internal(Op::LeaseRevoke(LeaseRevokeRequest { id }));
        }
        let due = self.sm.lessor.checkpoints_due(now, DEFAULT_CHECKPOINT_INTERVAL_MS, CHECKPOINT_LIMIT);
        if !due.is_empty() {
            let checkpoints =
                due.into_iter().map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl }).collect();
            self.propose_internal(Op::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints }));
        }
    }

    /// Publishes this member's name and client URLs until the log has them (etcd does the
    /// same at start), retrying about once a second.
    fn publish_attributes(&mut self) {
        let published = self
            .sm
            .member(self.cfg.member_id)
            .is_some_and(|m| m.client_ur_ls == self.cfg.client_urls && m.name == self.cfg.name);
        if published || self.node.leader() == 0 || !self.ticks.is_multiple_of(self.ticks_per_second) {
            return;
        }
        let attrs = keel_core::pb::keelpb::MemberAttributes {
            id: self.cfg.member_id,
            name: self.cfg.name.clone(),
            client_urls: self.cfg.client_urls.clone(),
        };
        self.propose_internal(Op::MemberAttributes(attrs));
    }

    /// A proposal of the node's own (no client waits for it); dropped if it cannot be taken,
    /// the leader loop proposes it again later.
    fn propose_internal(&mut self, op: Op) {
        let id = self.next_id();
        let data = Request { id, op: Some(op) }.encode_to_vec();
        if let Err(e) = self.node.propose(data.into()) {
            tracing::debug!(error = %e, "internal proposal dropped");
        }
    }

    fn serve_range(&self, req: &RangeRequest) -> Result<RangeResponse, RequestError> {
        let mut resp = self.sm.store.range(req)?;
        resp.header = Some(self.header());
        Ok(resp)
    }

    fn issue_read_index(&mut self) {
        if self.new_reads.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.new_reads);
        let ctx = self.next_id();
        match self.node.read_index(ctx.to_be_bytes().to_vec().into()) {
            Ok(()) => {
                self.reads_by_ctx.insert(ctx, batch);
                self.read_issued.insert(ctx, self.ticks);
            }
            Err(_) => {
                self.pending_reads -= batch.len();
                for (_, reply) in batch {
                    let _ = reply.send(Err(RequestError::NoLeader));
                }
            }
        }
    }

    fn drain_ready(&mut self) -> Result<(), String> {
        while self.node.has_ready() {
            let now = self.now_ms();
            let outbox = &self.cfg.outbox;
            let mut snapshots = Vec::new();
            let mut send = |m: Message| {
                let (to, snapshot) = (m.to, m.msg_type == MessageType::MsgSnap as i32);
                let queued = outbox.get(&m.to).is_some_and(|tx| tx.try_send(m).is_ok());
                if snapshot {
                    snapshots.push((to, !queued));
                }
            };
            let outcome = handle_ready(&mut self.node, &mut self.storage, &mut self.sm, now, &mut send)
                .map_err(|e| e.to_string())?;
            for (to, failed) in snapshots {
                // Queued for the peer (or not): the leader waits for the follower's answer.
                self.node.report_snapshot(to, failed);
            }
            if outcome.installed.is_some() {
                self.hub.desync_all();
            }
            for (_, effect) in outcome.applied {
                if let Applied::Write { request_id, result, events } = effect {
                    if !events.is_empty() {
                        let revision = events[0].kv.as_ref().map_or(0, |kv| kv.mod_revision);
                        self.hub.notify(&events, ResponseHeader { revision, ..self.header() });
                    }
                    if let Some(reply) = self.writes.remove(&request_id) {
                        let result = result.map_err(RequestError::from).map(|mut r| {
                            // The revision is the one the write made, as etcd reports it.
                            let revision = match r.revision() {
                                0 => self.sm.store.revision(),
                                rev => rev,
                            };
                            let header = ResponseHeader { revision, ..self.header() };
                            r.set_header(header);
                            r
                        });
                        let _ = reply.send(result);
                    }
                }
            }
            for rs in outcome.read_states {
                // Contexts are ours (8 bytes); anything else came from a confused peer: ignore it.
                let Ok(ctx) = <[u8; 8]>::try_from(&rs.request_ctx[..]).map(u64::from_be_bytes) else {
                    continue;
                };
                self.read_issued.remove(&ctx);
                if let Some(batch) = self.reads_by_ctx.remove(&ctx) {
                    self.reads_by_index.entry(rs.index).or_default().extend(batch);
                }
            }
            if let Some(ss) = outcome.soft_state {
                tracing::info!(term = self.node.term(), leader = ss.lead, role = ?ss.role, "raft state changed");
                if ss.role != StateRole::Leader {
                    self.fail_pending_reads(RequestError::NoLeader);
                }
            }
            self.serve_ready_reads();
        }
        maybe_checkpoint(&mut self.node, &mut self.storage, &mut self.sm, self.cfg.snapshot_count)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn serve_ready_reads(&mut self) {
        let applied = self.sm.applied_index();
        while let Some(entry) = self.reads_by_index.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for (req, reply) in entry.remove() {
                self.pending_reads -= 1;
                let _ = reply.send(self.serve_range(&req));
            }
        }
    }

    /// Asks again for read points whose answer has not come within [`READ_RETRY_TICKS`] (the
    /// request or its answer may have been lost between members), as etcd retries ReadIndex.
    fn retry_reads(&mut self) {
        let now = self.ticks;
        let stale: Vec<u64> = self
            .read_issued
            .iter()
            .filter(|(_, &at)| now >= at + READ_RETRY_TICKS)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in stale {
            self.read_issued.remove(&ctx);
            if let Some(batch) = self.reads_by_ctx.remove(&ctx) {
                // Back in the queue: the main loop issues them under a fresh context.
                self.new_reads.extend(batch);
            }
        }
    }

    /// Drops waiters whose clients are gone (timed out or disconnected) and watch streams
    /// nobody reads, so that lost proposals or read points cannot pile up to the bounds.
    fn purge_abandoned(&mut self) {
        self.writes.retain(|_, reply| !reply.is_closed());
        for batch in self.reads_by_ctx.values_mut().chain(self.reads_by_index.values_mut()) {
            batch.retain(|(_, reply)| !reply.is_closed());
        }
        self.reads_by_ctx.retain(|_, b| !b.is_empty());
        let live = &self.reads_by_ctx;
        self.read_issued.retain(|ctx, _| live.contains_key(ctx));
        self.reads_by_index.retain(|_, b| !b.is_empty());
        self.new_reads.retain(|(_, reply)| !reply.is_closed());
        self.pending_reads = self.new_reads.len()
            + self.reads_by_ctx.values().map(Vec::len).sum::<usize>()
            + self.reads_by_index.values().map(Vec::len).sum::<usize>();
        self.hub.purge_closed();
    }

    /// Fails the reads waiting for a read point that may now never come (leadership moved).
    /// Writes keep waiting: their entries may still commit, so failing them would report an
    /// unknown outcome as a failure; their clients time out instead ([`REQUEST_TIMEOUT`]).
    fn fail_pending_reads(&mut self, err: RequestError) {
        let batches = self
            .reads_by_ctx
            .drain()
            .map(|(_, b)| b)
            .chain(std::mem::take(&mut self.reads_by_index).into_values());
        for batch in batches.collect::<Vec<_>>() {
            for (_, reply) in batch {
                let _ = reply.send(Err(err.clone()));
            }
        }
        self.pending_reads = self.new_reads.len();
    }
}
