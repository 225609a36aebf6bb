//! The tokio driver: one task owns the Raft node, the WAL and the state machine. It ticks the
//! node, takes proposals and reads from a bounded channel in batches (so one WAL sync serves
//! many clients), handles each `Ready` with [`handle_ready`], and answers clients once their
//! entry is applied (writes) or the applied index reaches their read point (reads).

use crate::backend::Dir;
use crate::btree::{PageFile, ShrinkProgress};
use crate::ready::handle_ready;
use crate::ready::{begin_checkpoint, finish_checkpoint, maybe_checkpoint, Storage};
use crate::recover::Recovered;
use crate::watch::{WatchHub, WatchSpec, WatchUpdate};
use keel_core::lease::{LeaseError, TimeToLive};
use keel_core::membership::MemberError;
use keel_core::mvcc::MvccError;
use keel_core::pb::etcdserverpb::{AlarmMember, Member, RangeRequest, RangeResponse, ResponseHeader};
use keel_core::pb::keelpb::{
    request::Op, ConfChange, ConfChangeType, MessageType, Request, SnapshotMetadata,
};
use keel_core::raft::{MemStorage, Message, ProposeError, RawNode, StateRole};
use keel_core::state_machine::{Applied, ApplyError, StateMachine, WriteResponse};
use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
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
/// Bound on snapshot requests waiting for the image to be saved (each save serves them all).
pub const PENDING_SNAPSHOTS_MAX: usize = 16;
/// Bound on membership changes waiting to apply (Raft takes one at a time anyway).
pub const PENDING_MEMBER_CHANGES_MAX: usize = 64;
/// etcd promotes a learner only once its log reaches 90% of the leader's (`readyPercent`).
pub const LEARNER_READY_PERCENT: u64 = 90;
/// How long a client waits for its write to apply or its read to be served (etcd: 5 s plus
/// two election timeouts with defaults).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// Why the node task stops when this member applied its own removal (etcd's words).
pub const REMOVED: &str = "the member has been permanently removed from the cluster";
/// Ticks a member that applied its own removal goes on running (etcd's `stopWithDelay`).
pub const REMOVED_STOP_DELAY_TICKS: u64 = 10;

type MemberWaiter = (Option<Member>, oneshot::Sender<Result<MembersChanged, RequestError>>);

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
    #[error(transparent)]
    Member(#[from] MemberError),
    /// Only the leader can do this (a learner's promotion): the caller forwards it.
    #[error("etcdserver: not leader")]
    NotLeader,
}

/// A membership change a client asked for (etcd's Cluster service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// A new member at `peer_urls` (sorted); `unix_secs` feeds its id as in etcd.
    Add {
        peer_urls: Vec<String>,
        is_learner: bool,
        unix_secs: u64,
    },
    Remove {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
    Promote {
        id: u64,
    },
}

/// An applied membership change: the member added (for Add) and every member after it.
#[derive(Debug, Clone)]
pub struct MembersChanged {
    pub header: ResponseHeader,
    pub member: Option<Member>,
    pub members: Vec<Member>,
}

/// The membership as this member has applied it, published on every change.
#[derive(Debug, Clone, Default)]
pub struct MembersView {
    pub members: Vec<Member>,
    pub removed: BTreeSet<u64>,
}

/// Starts the peer transport's sender for a member at a URL and returns its bounded queue. The
/// sender tells the node how each snapshot it was given ended, through the reports handle.
pub type ConnectFn = dyn Fn(u64, &str, SnapshotReports) -> mpsc::Sender<Message> + Send + Sync;

/// Bound on snapshot outcomes waiting for the node task (a sender has one snapshot in flight).
const SNAPSHOT_REPORTS_MAX: usize = 64;

/// Where a peer sender reports how a snapshot (MsgSnap) it was handed ended: the leader keeps
/// the follower paused until then, as etcd's snapshot sender reports `SnapshotFinish`/`Failure`.
#[derive(Clone, Debug)]
pub struct SnapshotReports(mpsc::Sender<(u64, bool)>);

impl SnapshotReports {
    /// The snapshot for member `to` was delivered (`failed == false`) or not.
    pub async fn report(&self, to: u64, failed: bool) {
        // Only fails once the node has stopped, when nobody waits for the answer.
        let _ = self.0.send((to, failed)).await;
    }
}

/// How the node reaches the other members: it opens a sender per member of the configuration
/// it has applied (and drops those removed), so the transport follows membership changes.
#[derive(Clone)]
pub struct Transport {
    pub connect: Arc<ConnectFn>,
    /// Members to reach before this member has applied its own addition (a joining member
    /// learns them from the cluster; a bootstrapping one from `--initial-cluster`).
    pub initial_peers: Vec<Member>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("initial_peers", &self.initial_peers).finish_non_exhaustive()
    }
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
    /// Bytes of the image file's pages in use (neither free nor beyond the high-water mark).
    pub db_in_use_bytes: u64,
    pub members: Vec<Member>,
    /// The raised alarms (replicated state), ordered by alarm type, then member id.
    pub alarms: Vec<AlarmMember>,
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
    ChangeMembers {
        change: MemberChange,
        reply: oneshot::Sender<Result<MembersChanged, RequestError>>,
    },
    /// The whole state as of now: the image is saved first (a checkpoint), then read.
    Snapshot {
        reply: oneshot::Sender<Result<StateSnapshot, RequestError>>,
    },
    /// The image brought up to the applied state (a checkpoint), without reading it.
    Checkpoint {
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
}

/// The state machine's whole image (an encoded `keelpb.FullImage`) as of `header`, for
/// Maintenance.Snapshot and Hash.
#[derive(Debug, Clone)]
pub struct StateSnapshot {
    pub header: ResponseHeader,
    pub applied_index: u64,
    pub image: bytes::Bytes,
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
    members: watch::Receiver<Arc<MembersView>>,
    /// The image's pages in use, in bytes, as of the last save: read on every write that
    /// checks the quota, so it is kept here rather than asked of the node task.
    db_in_use: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes applied but not yet in the image (written since the last save began, plus what
    /// the save in flight writes).
    unsaved: Arc<std::sync::atomic::AtomicU64>,
    /// [`crate::image::Image::shrink`] on this member's image (the handle is not generic over
    /// the image's file type).
    shrink_image: ShrinkImage,
}

/// `(steps, pages per step)` to the last step's progress; see [`NodeHandle::defragment`].
type ShrinkImage = Arc<dyn Fn(usize, usize) -> Result<ShrinkProgress, String> + Send + Sync>;

/// Shrink steps per blocking call of a defragment, and pages each step moves: each step holds
/// the image's lock for one B-tree commit of at most this many page copies (plus parents).
const DEFRAG_STEPS_PER_CALL: usize = 4;
const DEFRAG_PAGES_PER_STEP: usize = 256;
/// A bound on a defragment's calls, far above what any file needs (each step moves up to
/// 1 MiB): shrinking ends on its own, this only keeps a bug from looping forever.
const DEFRAG_CALLS_MAX: usize = 1 << 20;
/// Calls in a row without the file or its high-water mark going down after which a defragment
/// ends (what is left stays in the file).
const DEFRAG_STALLED_CALLS_MAX: u32 = 64;

impl NodeHandle {
    /// Bytes of the image's pages in use as of its last save (or snapshot install).
    pub fn db_in_use_bytes(&self) -> u64 {
        self.db_in_use.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the database will hold once everything applied is saved, at most: the pages in use
    /// plus the bytes applied since (saves run every `--snapshot-count` entries, so the pages
    /// alone lag the applied state). The quota checks this.
    pub fn db_size_estimate(&self) -> u64 {
        self.db_in_use_bytes().saturating_add(self.unsaved.load(std::sync::atomic::Ordering::Relaxed))
    }

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

    /// Proposes a membership change and waits for it to apply, at most [`REQUEST_TIMEOUT`].
    pub async fn change_members(&self, change: MemberChange) -> Result<MembersChanged, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::ChangeMembers { change, reply }).await.map_err(|_| RequestError::Stopped)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(r) => r.map_err(|_| RequestError::Stopped)?,
            Err(_) => Err(RequestError::Timeout),
        }
    }

    /// The membership as applied here, updated on every change.
    pub fn members(&self) -> watch::Receiver<Arc<MembersView>> {
        self.members.clone()
    }

    /// Saves the state machine's image now and returns it whole (the node task reads it once;
    /// the caller streams it).
    pub async fn snapshot(&self) -> Result<StateSnapshot, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Snapshot { reply }).await.map_err(|_| RequestError::Stopped)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(r) => r.map_err(|_| RequestError::Stopped)?,
            Err(_) => Err(RequestError::Timeout),
        }
    }

    /// Brings the image up to the applied state (a checkpoint on the node task, after any save
    /// in flight), then gives the file's free pages back to the file system (etcd's
    /// defragment) in bounded steps on a blocking thread, off the node task. Each step holds
    /// the image's lock for one B-tree commit, so saves (and so writes) go on between them; a
    /// step moving pages of large values can hold it longer. Returns the file's pages before
    /// and after. A failed commit poisons the image (the next save fails and stops the node);
    /// other errors (a truncation's I/O) leave it usable.
    pub async fn defragment(&self) -> Result<(u64, u64), String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Checkpoint { reply }).await.map_err(|_| RequestError::Stopped.to_string())?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(r)) => r.map_err(|e| e.to_string())?,
            Ok(Err(_)) => return Err(RequestError::Stopped.to_string()),
            Err(_) => return Err(RequestError::Timeout.to_string()),
        }
        let mut first = None;
        // Calls since the file or its high-water mark last went down: shrinking that stops
        // making progress ends instead of running to the bound.
        let (mut lowest, mut stalled) = (u64::MAX, 0);
        for _ in 0..DEFRAG_CALLS_MAX {
            let shrink = self.shrink_image.clone();
            let work = move || shrink(DEFRAG_STEPS_PER_CALL, DEFRAG_PAGES_PER_STEP);
            // Under the simulator there are no blocking threads: the steps run in line.
            #[cfg(not(madsim))]
            let p = tokio::task::spawn_blocking(work).await.map_err(|e| e.to_string())??;
            #[cfg(madsim)]
            let p = work()?;
            let before = *first.get_or_insert(p.file_pages);
            if p.done {
                tracing::info!(
                    before_pages = before,
                    after_pages = p.file_pages,
                    "defragmented the state image"
                );
                return Ok((before, p.file_pages));
            }
            let reached = p.page_count.min(p.file_pages);
            if reached < lowest {
                (lowest, stalled) = (reached, 0);
            } else {
                stalled += 1;
                if stalled >= DEFRAG_STALLED_CALLS_MAX {
                    tracing::warn!(pages = p.file_pages, "defragment stopped: the file no longer shrinks");
                    return Ok((before, p.file_pages));
                }
            }
        }
        Err("defragment did not finish".to_string())
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
    /// The peer transport (none for a member that runs alone and never gains peers, such as
    /// under the simulator's single node).
    pub transport: Option<Transport>,
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
    /// Membership changes by request id, waiting to apply, with the member an Add adds.
    member_changes: HashMap<u64, MemberWaiter>,
    /// Bounded queues to the peer transport by member id, with the URL each sender uses. A
    /// full queue drops the message: Raft retransmits what matters. Invariant: holds exactly
    /// the other members of the applied configuration (plus the initial peers until this
    /// member's own addition is applied).
    outbox: HashMap<u64, (String, mpsc::Sender<Message>)>,
    members_tx: watch::Sender<Arc<MembersView>>,
    /// This member applied its own removal: it stops.
    removed: bool,
    /// When a member that applied its own removal stops (in ticks).
    stop_at_tick: Option<u64>,
    /// Reads collected in this batch; they share one ReadIndex.
    new_reads: Vec<RangeReply>,
    /// Read batches by ReadIndex context, waiting for their read state.
    reads_by_ctx: HashMap<u64, Vec<RangeReply>>,
    /// When each ReadIndex request went out (in ticks), to ask again if its answer is lost.
    read_issued: HashMap<u64, u64>,
    /// Read batches whose read point is known, waiting for the applied index to reach it.
    reads_by_index: BTreeMap<u64, Vec<RangeReply>>,
    pending_reads: usize,
    /// Peer messages Raft refused as no honest member's: each of the first few is logged, then
    /// every thousandth, so that a flood cannot flood the log.
    refused_peer_messages: u64,
    next_seq: u64,
    hub: WatchHub,
    /// This member's monotonic clock, for lease expiry (never replicated).
    started: tokio::time::Instant,
    last_lease_poll_ms: u64,
    ticks: u64,
    /// Ticks per (progress-notification) second.
    ticks_per_second: u64,
    /// Snapshot requests, served after the batch's Ready by one save of the image.
    snapshot_waiters: Vec<oneshot::Sender<Result<StateSnapshot, RequestError>>>,
    /// Checkpoint requests (a defragment's first step), served with the snapshot requests.
    checkpoint_waiters: Vec<oneshot::Sender<Result<(), RequestError>>>,
    /// The image save in flight (at most one), answering with the point it reached.
    saving: Option<oneshot::Receiver<Result<SnapshotMetadata, String>>>,
    /// Handed to each peer sender, to report how the snapshots it sends end.
    snapshot_reports: SnapshotReports,
    /// When this member last proposed its own attributes (name, client URLs).
    last_publish_tick: Option<u64>,
    /// Shared with the handles: see [`NodeHandle::db_in_use_bytes`].
    db_in_use: Arc<std::sync::atomic::AtomicU64>,
    /// Shared with the handles: see [`NodeHandle::db_size_estimate`].
    unsaved: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes the save in flight writes (counted until they are in the pages in use).
    saving_bytes: u64,
}

/// Starts the node task on the current runtime. It runs until `shutdown` turns true or the WAL
/// fails; the returned join handle yields the reason it stopped.
pub fn spawn<D: Dir + 'static, F: PageFile + 'static>(
    recovered: Recovered<D, F>,
    cfg: DriverConfig,
    mut shutdown: watch::Receiver<bool>,
) -> (NodeHandle, tokio::task::JoinHandle<Result<(), String>>) {
    let (tx, mut rx) = mpsc::channel(COMMAND_QUEUE_MAX);
    let (reports_tx, mut reports_rx) = mpsc::channel(SNAPSHOT_REPORTS_MAX);
    let (members_tx, members) = watch::channel(Arc::new(MembersView::default()));
    let db_in_use = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let unsaved = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let image = recovered.storage.image.clone();
    let shrink_image: ShrinkImage =
        Arc::new(move |steps, pages| image.shrink(steps, pages).map_err(|e| e.to_string()));
    let handle = NodeHandle {
        tx,
        member_id: cfg.member_id,
        cluster_id: cfg.cluster_id,
        members,
        db_in_use: db_in_use.clone(),
        unsaved: unsaved.clone(),
        shrink_image,
    };
    let cfg_tick_ms = cfg.tick.as_millis() as u64;
    let mut d = Driver {
        cfg,
        node: recovered.node,
        storage: recovered.storage,
        sm: recovered.sm,
        writes: HashMap::new(),
        member_changes: HashMap::new(),
        outbox: HashMap::new(),
        members_tx,
        removed: false,
        stop_at_tick: None,
        new_reads: Vec::new(),
        reads_by_ctx: HashMap::new(),
        read_issued: HashMap::new(),
        reads_by_index: BTreeMap::new(),
        pending_reads: 0,
        refused_peer_messages: 0,
        next_seq: 0,
        hub: WatchHub::new(),
        started: tokio::time::Instant::now(),
        last_lease_poll_ms: 0,
        ticks: 0,
        ticks_per_second: (1000 / cfg_tick_ms.max(1)).max(1),
        snapshot_waiters: Vec::new(),
        checkpoint_waiters: Vec::new(),
        saving: None,
        snapshot_reports: SnapshotReports(reports_tx),
        last_publish_tick: None,
        db_in_use,
        unsaved,
        saving_bytes: 0,
    };
    d.refresh_db_in_use();
    d.membership_changed();
    {
        // The only voter elects itself at once instead of waiting out an election timeout: no
        // other member can hold a vote or a lease it must wait for.
        use keel_core::raft::Storage as _;
        let voters = d.node.store().initial_state().1.voters;
        if voters == [d.cfg.member_id] {
            d.node.campaign();
        }
    }
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
                Some((to, failed)) = reports_rx.recv() => {
                    if failed {
                        tracing::warn!(peer = %format!("{to:x}"), "sending a snapshot failed");
                    }
                    d.node.report_snapshot(to, failed);
                }
                saved = wait_save(&mut d.saving), if d.saving.is_some() => {
                    if let Err(e) = d.finish_save(saved) {
                        tracing::error!(error = %e, "stopping the node: the state image failed");
                        return Err(e);
                    }
                }
            }
            d.issue_read_index();
            let (leader, committed, applied) = (d.node.leader(), d.node.committed(), d.node.applied());
            crate::metrics::observe_node(leader, committed, applied, d.sm.store.compacted());
            if let Err(e) = d.drain_ready().and_then(|()| d.serve_snapshots()) {
                tracing::error!(error = %e, "stopping the node: the WAL failed");
                return Err(e);
            }
            if d.stop_at_tick.is_some_and(|t| d.ticks >= t) {
                d.removed = true;
            }
            if d.removed {
                tracing::warn!("the member has been permanently removed from the cluster");
                return Err(REMOVED.to_string());
            }
        }
    });
    (handle, join)
}

/// Waits for the save in flight (the select branch is disabled when there is none).
async fn wait_save(
    saving: &mut Option<oneshot::Receiver<Result<SnapshotMetadata, String>>>,
) -> Result<Result<SnapshotMetadata, String>, oneshot::error::RecvError> {
    match saving.as_mut() {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

impl<D: Dir, F: PageFile + 'static> Driver<D, F> {
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
                    let (from, msg_type) = (m.from, m.msg_type);
                    match self.node.step(m) {
                        Err(e @ ProposeError::BadMessage(_)) => {
                            self.refused_peer_messages += 1;
                            let n = self.refused_peer_messages;
                            if n <= 10 || n.is_multiple_of(1000) {
                                tracing::warn!(from = %format!("{from:x}"), msg_type, error = %e, refused = n, "peer message refused")
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "peer message refused"),
                        Ok(()) => {}
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
                    // (BadMessage is for peers' messages, never a local proposal.)
                    Err(ProposeError::NotLeader | ProposeError::NotMember | ProposeError::BadMessage(_)) => {
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
            Command::ChangeMembers { change, reply } => {
                if self.member_changes.len() >= PENDING_MEMBER_CHANGES_MAX {
                    let _ = reply.send(Err(RequestError::TooManyRequests));
                    return;
                }
                let id = self.next_id();
                match self.member_conf_change(change, id) {
                    Ok((cc, member)) => match self.node.propose_conf_change(&cc) {
                        Ok(()) => {
                            self.member_changes.insert(id, (member, reply));
                        }
                        Err(
                            ProposeError::NotLeader | ProposeError::NotMember | ProposeError::BadMessage(_),
                        ) => {
                            let _ = reply.send(Err(RequestError::NoLeader));
                        }
                        Err(ProposeError::TransferInProgress) => {
                            let _ = reply.send(Err(RequestError::LeaderChanged));
                        }
                        // etcd's Raft turns a change proposed while another is pending into an
                        // empty entry, and its client times out; say so at once.
                        Err(ProposeError::ConfChangePending) => {
                            let _ = reply.send(Err(RequestError::Timeout));
                        }
                        Err(ProposeError::UncommittedLimit) => {
                            let _ = reply.send(Err(RequestError::TooManyRequests));
                        }
                    },
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Snapshot { reply } => {
                if self.snapshot_waiters.len() >= PENDING_SNAPSHOTS_MAX {
                    let _ = reply.send(Err(RequestError::TooManyRequests));
                } else {
                    self.snapshot_waiters.push(reply);
                }
            }
            Command::Checkpoint { reply } => {
                if self.checkpoint_waiters.len() >= PENDING_SNAPSHOTS_MAX {
                    let _ = reply.send(Err(RequestError::TooManyRequests));
                } else {
                    self.checkpoint_waiters.push(reply);
                }
            }
            Command::LeaseKeepAlive { id, reply } => {
                let now = self.now_ms();
                let renewed = crate::ready::renew_lease(&self.node, &mut self.sm, id, now);
                let _ = reply.send((self.header(), renewed));
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
                    db_in_use_bytes: self.refresh_db_in_use(),
                    members: self.sm.members().cloned().collect(),
                    alarms: self.sm.alarms().collect(),
                });
            }
        }
    }

    /// Serves the waiting snapshot requests: a checkpoint brings the image up to the applied
    /// index (the same save, WAL record and log compaction as a periodic one, so the image and
    /// the log's snapshot point stay equal), then the image is read once for all of them. A
    /// storage failure stops the node, as in [`Self::drain_ready`].
    fn serve_snapshots(&mut self) -> Result<(), String> {
        if self.snapshot_waiters.is_empty() && self.checkpoint_waiters.is_empty() {
            return Ok(());
        }
        // Not while a save is in flight: a checkpoint taken now would reach the image first
        // and the older save, holding keys changed before it, would then be dropped as stale.
        // The waiters are served once that save is in (the loop comes back here after it).
        if self.saving.is_some() {
            return Ok(());
        }
        maybe_checkpoint(&mut self.node, &mut self.storage, &mut self.sm, 1).map_err(|e| e.to_string())?;
        self.refresh_db_in_use();
        for reply in self.checkpoint_waiters.drain(..) {
            let _ = reply.send(Ok(()));
        }
        if self.snapshot_waiters.is_empty() {
            return Ok(());
        }
        let image = match self.storage.image.full() {
            Ok((image, meta)) => {
                Ok(StateSnapshot { header: self.header(), applied_index: meta.index, image })
            }
            // Reading failed but nothing was written: the node can go on; the clients are told.
            Err(e) => {
                tracing::error!(error = %e, "reading the state image for a snapshot failed");
                Err(RequestError::Timeout)
            }
        };
        for reply in self.snapshot_waiters.drain(..) {
            let _ = reply.send(image.clone());
        }
        Ok(())
    }

    /// etcd's checks before proposing a membership change (`mayAddMember`, `mayRemoveMember`,
    /// `mayPromoteMember`), then the change to propose, with request id `id`. The rules every
    /// member checks when applying it are [`keel_core::membership::Membership::apply`]'s.
    fn member_conf_change(
        &self,
        change: MemberChange,
        id: u64,
    ) -> Result<(ConfChange, Option<Member>), RequestError> {
        let ms = self.sm.membership();
        let conf = |change_type: ConfChangeType, node_id: u64, context: Vec<u8>| ConfChange {
            change_type: change_type as i32,
            node_id,
            context: context.into(),
            id,
            promote: false,
        };
        match change {
            MemberChange::Add { peer_urls, is_learner, unix_secs } => {
                if !is_learner && !ms.ready_to_add_voter() {
                    return Err(MemberError::NotEnoughStarted.into());
                }
                let node_id = keel_core::ids::new_member_id(&peer_urls, "", unix_secs);
                let member = Member { id: node_id, peer_ur_ls: peer_urls, is_learner, ..Default::default() };
                let change_type =
                    if is_learner { ConfChangeType::AddLearnerNode } else { ConfChangeType::AddNode };
                Ok((conf(change_type, node_id, member.encode_to_vec()), Some(member)))
            }
            MemberChange::Remove { id: node_id } => {
                let learner = ms.member(node_id).is_some_and(|m| m.is_learner);
                if !learner && !ms.ready_to_remove_voter(node_id) {
                    return Err(MemberError::NotEnoughStarted.into());
                }
                Ok((conf(ConfChangeType::RemoveNode, node_id, Vec::new()), None))
            }
            MemberChange::Update { id: node_id, peer_urls } => {
                let member = Member { id: node_id, peer_ur_ls: peer_urls, ..Default::default() };
                Ok((conf(ConfChangeType::UpdateNode, node_id, member.encode_to_vec()), None))
            }
            MemberChange::Promote { id: node_id } => {
                // Only the leader knows how far the learner's log is (etcd's isLearnerReady);
                // like etcd, a member that is not (or is unknown) passes, and the rules at
                // apply time say why it cannot be promoted.
                if self.node.role() != StateRole::Leader {
                    return Err(RequestError::NotLeader);
                }
                let progress = self.node.progress();
                if let (Some(pr), Some(lead)) = (progress.get(&node_id), progress.get(&self.node.id())) {
                    if pr.matched * 100 < lead.matched * LEARNER_READY_PERCENT {
                        return Err(MemberError::LearnerNotReady.into());
                    }
                }
                if !ms.ready_to_promote() {
                    return Err(MemberError::NotEnoughStarted.into());
                }
                let mut cc = conf(ConfChangeType::AddNode, node_id, Vec::new());
                cc.promote = true;
                Ok((cc, None))
            }
        }
    }

    /// After the applied configuration changed: follow it with the peer transport, and publish
    /// it.
    fn membership_changed(&mut self) {
        let ms = self.sm.membership();
        self.members_tx.send_replace(Arc::new(MembersView {
            members: ms.members().cloned().collect(),
            removed: ms.removed().collect(),
        }));
        let Some(transport) = &self.cfg.transport else { return };
        let mut want: BTreeMap<u64, String> = BTreeMap::new();
        if ms.member(self.cfg.member_id).is_none() {
            // Not yet in the configuration it applied (a joining member catching up): keep
            // reaching the members it was told of, the leader among them.
            for m in &transport.initial_peers {
                if let Some(url) = m.peer_ur_ls.first() {
                    want.insert(m.id, url.clone());
                }
            }
        }
        for m in ms.members() {
            if let Some(url) = m.peer_ur_ls.first() {
                want.insert(m.id, url.clone());
            }
        }
        want.remove(&self.cfg.member_id);
        // Dropping a queue ends its sender once it has sent what is queued.
        self.outbox.retain(|id, (url, _)| want.get(id) == Some(url));
        for (id, url) in want {
            self.outbox.entry(id).or_insert_with(|| {
                tracing::info!(peer = %format!("{id:x}"), %url, "peer added to the transport");
                let tx = (transport.connect)(id, &url, self.snapshot_reports.clone());
                (url, tx)
            });
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
        let extend_ms = self.cfg.election_timeout.as_millis() as u64;
        for op in
            crate::ready::drive_leases(&self.node, &mut self.sm, now, extend_ms, &mut self.last_lease_poll_ms)
        {
            self.propose_internal(op);
        }
    }

    /// Publishes this member's name and client URLs until the log has them (etcd does the
    /// same at start), retrying about once a second.
    fn publish_attributes(&mut self) {
        let published = self
            .sm
            .member(self.cfg.member_id)
            .is_some_and(|m| m.client_ur_ls == self.cfg.client_urls && m.name == self.cfg.name);
        // At once when a leader is known, then once a second until it is applied.
        let retry = self.last_publish_tick.is_some_and(|t| self.ticks < t + self.ticks_per_second);
        if published || self.node.leader() == 0 || retry {
            return;
        }
        self.last_publish_tick = Some(self.ticks);
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
            let outbox = &self.outbox;
            let mut snapshots = Vec::new();
            let mut send = |m: Message| {
                let (to, snapshot) = (m.to, m.msg_type == MessageType::MsgSnap as i32);
                let queued = outbox.get(&m.to).is_some_and(|(_, tx)| tx.try_send(m).is_ok());
                if snapshot {
                    snapshots.push((to, queued));
                }
            };
            let outcome = handle_ready(&mut self.node, &mut self.storage, &mut self.sm, now, &mut send)
                .map_err(|e| e.to_string())?;
            for (to, queued) in snapshots {
                // A queued snapshot is reported by the peer sender once the stream ends.
                if !queued {
                    self.node.report_snapshot(to, true);
                }
            }
            let mut members_changed = outcome.installed.is_some();
            if let Some(index) = outcome.installed {
                tracing::info!(index, "installed a snapshot from the leader");
                self.refresh_db_in_use();
                self.hub.desync_all();
            }
            for (_, effect) in outcome.applied {
                if let Applied::ConfChange { change, result } = &effect {
                    members_changed |= result.is_ok();
                    self.conf_change_applied(change, *result);
                }
                if let Applied::Write { request_id, result, events } = effect {
                    // A member's published name and client URLs change the membership view.
                    members_changed |= matches!(result, Ok(WriteResponse::MemberAttributes));
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
            if members_changed {
                self.membership_changed();
            }
        }
        self.refresh_unsaved();
        self.start_save();
        Ok(())
    }

    /// Starts a save of the state machine's image on a blocking thread once `snapshot_count`
    /// entries have been applied since the last one, one at a time: the node task only takes
    /// the changed keys' histories; the B-tree commit happens elsewhere, and
    /// [`Self::finish_save`] follows when it is durable.
    fn start_save(&mut self) {
        // Waiting snapshot or checkpoint requests take the next checkpoint in line instead.
        if self.saving.is_some() || !self.snapshot_waiters.is_empty() || !self.checkpoint_waiters.is_empty() {
            return;
        }
        let image_index = self.storage.image.index();
        let unsaved = self.sm.store.unsaved_bytes();
        let Some(job) = begin_checkpoint(&self.node, &mut self.sm, image_index, self.cfg.snapshot_count)
        else {
            return;
        };
        self.saving_bytes = unsaved;
        let image = self.storage.image.clone();
        let meta = job.meta.clone();
        let (tx, rx) = oneshot::channel();
        let work = move || {
            let keys = job.len();
            let started = std::time::Instant::now();
            let result = image.apply(job).map(|_| meta).map_err(|e| e.to_string());
            tracing::debug!(keys, elapsed_ms = started.elapsed().as_millis() as u64, "saved the state image");
            let _ = tx.send(result);
        };
        // Under the simulator there are no blocking threads: the save runs in line.
        #[cfg(not(madsim))]
        tokio::task::spawn_blocking(work);
        #[cfg(madsim)]
        work();
        self.saving = Some(rx);
    }

    /// A save finished: on success the WAL and the log move their starting point to it; a
    /// failure stops the node (the image's state is unknown and the changed keys are gone).
    fn finish_save(
        &mut self,
        result: Result<Result<SnapshotMetadata, String>, oneshot::error::RecvError>,
    ) -> Result<(), String> {
        self.saving = None;
        let meta = match result {
            Ok(Ok(meta)) => meta,
            Ok(Err(e)) => return Err(format!("saving the state image failed: {e}")),
            Err(_) => return Err("the state image save was lost".to_string()),
        };
        self.saving_bytes = 0;
        self.refresh_db_in_use();
        finish_checkpoint(&mut self.node, &mut self.storage.wal, &meta).map_err(|e| e.to_string())
    }

    /// Reads the image's pages in use (without its lock) and shares the figure with the handles.
    fn refresh_db_in_use(&self) -> u64 {
        let bytes = self.storage.image.used_bytes();
        // The unsaved bytes first: a reader in between counts the save just in once, or not yet
        // (never twice, which could raise NOSPACE for nothing).
        self.refresh_unsaved();
        self.db_in_use.store(bytes, std::sync::atomic::Ordering::Relaxed);
        bytes
    }

    /// Shares the bytes applied but not yet in the image's pages.
    fn refresh_unsaved(&self) {
        let unsaved = self.saving_bytes + self.sm.store.unsaved_bytes();
        self.unsaved.store(unsaved, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers the proposer of an applied membership change; notes this member's removal.
    fn conf_change_applied(&mut self, change: &ConfChange, result: Result<(), MemberError>) {
        if let Some((member, reply)) = self.member_changes.remove(&change.id) {
            let reply_value = result.map_err(RequestError::from).map(|()| MembersChanged {
                // etcd's Cluster service headers carry no revision.
                header: ResponseHeader { revision: 0, ..self.header() },
                member,
                members: self.sm.members().cloned().collect(),
            });
            let _ = reply.send(reply_value);
        }
        let removal = change.change_type == ConfChangeType::RemoveNode as i32;
        if result.is_ok() && removal && change.node_id == self.cfg.member_id && self.stop_at_tick.is_none() {
            // Stop a little later, as etcd does (10 ticks): a removed leader's heartbeats tell
            // the others that the removal committed.
            self.stop_at_tick = Some(self.ticks + REMOVED_STOP_DELAY_TICKS);
        }
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
        self.member_changes.retain(|_, (_, reply)| !reply.is_closed());
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
