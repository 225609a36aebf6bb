//! A seeded simulation of a Keel cluster: N nodes of the real core (Raft + state machine) over
//! the real WAL on simulated disks, driven by the same `handle_ready` as the server, with a
//! simulated network (delay, drop, duplicate, reorder, partitions), crashes that lose or tear
//! unsynced writes, per-node clock drift (each node ticks at its own rate), and clients doing
//! reads (ReadIndex), writes and compare-and-sets on one register through any node. The
//! history is checked for linearizability with the `jepsen` checker; invariants are checked
//! as the run goes: one leader per term, and every node applies the same entry at each index.
//!
//! Membership changes through Raft happen under the same faults, at a rate drawn per seed: a
//! voter is removed (and stops), a fresh member (a new id, an empty disk) joins as a voter or as
//! a learner that is later promoted. Node ids are small integers, never reused.
//!
//! Three more workloads run under the same faults, each on for some seeds only (drawn from a
//! stream of their own, so seeds without them run as before):
//!
//! * multi-key clients: txns over four keys (a compare on one key's value, mod revision or
//!   existence; puts, some on leases, deletes and ranges in either branch), puts, range deletes,
//!   linearizable ranges, and compactions;
//! * lease clients: grants with TTLs of 1–5 s, keys attached, keep-alives (to any member; a
//!   follower forwards to the leader it knows, as the server does) for a while, then expiry;
//!   some revoked. Each member's clock is its ticks (`TICK_MS` each, so drift and steps move
//!   it); on each tick the simulator drives the lessor with `runtime::ready::drive_leases`, as
//!   the node task does, and asserts that a leader proposes a lease's expiry only once the TTL
//!   has run in its own clock since the last grant it applied or keep-alive it acknowledged, or
//!   TTL plus the election timeout since it took over (the only promise etcd makes: clocks of
//!   different members are unrelated);
//! * watchers on members, through the real `WatchHub` driven as the node task drives it (events
//!   of applied entries, catch-up, progress); when a member crashes or a client moves, the watch
//!   is re-created elsewhere from the revision after the last one it saw.
//!
//! After the run, the committed log is replayed over a [`Model`] and every reply, every
//! member's store and every watch stream is checked against it (see `model.rs`).

use crate::model::Model;
use crate::workload::{
    check_kv_ops, check_store, check_watch, Checked, KvOp, KvOutput, KvRequest, WatchItem, WatchSession,
    Workload,
};
use jepsen::checker::{check, CheckOptions, Operation, Register, RegisterInput, RegisterOutput, Verdict};
use keel_core::pb::etcdserverpb::{
    compare, request_op, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest,
    LeaseRevokeRequest, Member, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest,
};
use keel_core::pb::keelpb::request::Op;
use keel_core::pb::keelpb::EntryType;
use keel_core::pb::keelpb::{ConfChange, ConfChangeType, MessageType, Request};
use keel_core::raft::{Config, Message, StateRole};
use keel_core::state_machine::{Applied, WriteResponse};
use prost::bytes::Bytes;
use prost::Message as _;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use runtime::backend::{Dir as _, SimBackend, SimDisk};
use runtime::ready::{handle_ready, maybe_checkpoint};
use runtime::recover::{recover, Identity, Recovered};
use runtime::wal::WalOptions;
use runtime::watch::{WatchHub, WatchSpec, WatchUpdate};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The knobs of one run, drawn from the seed (swarm testing: each seed its own fault mix).
#[derive(Debug, Clone)]
pub struct Faults {
    pub drop_pct: u32,
    pub dup_pct: u32,
    pub max_delay: u64,
    pub crash_per_mille: u32,
    pub partition_per_mille: u32,
    /// Steps per tick, per node id (clock drift).
    pub tick_every: BTreeMap<u64, u64>,
    /// Raft's bound on one append's bytes: small values send one entry per append, which
    /// opens interleavings a large batch hides.
    pub msg_bytes_max: u64,
    /// WAL segment size: small ones roll often, mid-batch and mid-crash.
    pub wal_segment_bytes: u64,
    /// Applied entries between saves of the state machine's image (and log compactions):
    /// small values make lagging members catch up by snapshot.
    pub snapshot_count: u64,
    /// Chance per step (‰) that a node pauses (a GC pause, SIGSTOP, a stalled disk): it neither
    /// ticks nor handles anything, and messages to it wait, for up to 200 steps.
    pub pause_per_mille: u32,
    /// Chance per step (‰) that a node's clock steps forward: it ticks up to 20 times at once.
    pub clock_step_per_mille: u32,
    /// Chance per step (‰) of proposing a membership change; 0 for many seeds.
    pub member_change_per_mille: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterSummary {
    pub ops_ok: usize,
    pub ops_unknown: usize,
    pub crashes: u32,
    pub partitions: u32,
    pub max_term: u64,
    pub trace_digest: u64,
    /// The checker ran out of budget (too many operations of unknown outcome to search):
    /// neither a pass nor a violation.
    pub check_unknown: bool,
    /// Images saved (checkpoints) and leader snapshots installed, over all members.
    pub checkpoints: u32,
    pub snapshots_installed: u32,
    pub pauses: u32,
    pub clock_steps: u32,
    /// Membership changes applied (each counted once, when the first member applies it): voters
    /// removed, fresh voters added, learners added, learners promoted, and changes the
    /// membership rules refused.
    pub members_removed: u32,
    pub voters_added: u32,
    pub learners_added: u32,
    pub learners_promoted: u32,
    pub changes_refused: u32,
    /// Multi-key txns and ranges whose replies matched the model of the committed log.
    pub txns_ok: usize,
    pub ranges_ok: usize,
    /// Leases granted, expired (revoked by a leader's expiry) and revoked by clients, as applied;
    /// keep-alives acknowledged.
    pub leases_granted: u32,
    pub leases_expired: u32,
    pub leases_revoked: u32,
    pub keepalives_acked: u32,
    /// Watch events checked against the committed history; watches resumed from the revision
    /// after the last one seen (after a crash of their member, or a move); watches canceled as
    /// compacted.
    pub watch_events_checked: usize,
    pub watches_resumed: u32,
    pub watches_compacted: u32,
    /// Forged and garbage peer messages the nemesis delivered (every one refused by Raft).
    pub forged_messages: u32,
    /// Workloads this seed ran: kv clients, lease clients, watchers.
    pub workload: (usize, usize, usize),
}

const KEY: &[u8] = b"r";

struct SimNode {
    node: keel_core::raft::RawNode<keel_core::raft::MemStorage>,
    storage: runtime::ready::Storage<SimDisk, SimBackend>,
    sm: keel_core::state_machine::StateMachine,
    /// Proposals made here, by request id: the client and its op index.
    writes: HashMap<u64, (usize, usize)>,
    /// Reads asked here, by ReadIndex context.
    reads: HashMap<u64, (usize, usize)>,
    /// Reads whose read point is known: (index, client, op).
    ready_reads: Vec<(u64, usize, usize)>,
    /// The same for the kv workload's ops (by index in `Cluster::kv_ops`).
    kv_writes: BTreeMap<u64, usize>,
    kv_reads: BTreeMap<u64, usize>,
    kv_ready_reads: Vec<(u64, usize)>,
    /// The member's watchers, driven as the node task drives them.
    hub: WatchHub,
    /// Ticks since this incarnation started: its monotonic clock is `ticks * TICK_MS`.
    ticks: u64,
    last_lease_poll_ms: u64,
    /// Which start of the member this is (a watcher on an earlier one lost its stream).
    incarnation: u64,
    /// While this member's lessor is the leader's: when it took over, and per lease the
    /// earliest time it may expire it (TTL after a grant it applied or a keep-alive it
    /// acknowledged, in its own clock).
    tenure: Option<Tenure>,
}

/// A simulated tick is this many milliseconds of a member's clock (etcd's default heartbeat):
/// with `election_ticks` 10 the election timeout is 1 s, etcd's minimum lease TTL 2 s.
const TICK_MS: u64 = 100;
const ELECTION_TIMEOUT_MS: u64 = 10 * TICK_MS;

struct Tenure {
    since_ms: u64,
    floors: BTreeMap<i64, u64>,
}

/// A lease of the lease workload.
struct SimLease {
    id: i64,
    /// Keep-alives are sent until this step (0: never), every `every` steps.
    keepalive_until: u64,
    every: u64,
    last_keepalive: u64,
}

/// A watcher: its range, the member it is on now, and everything it has received.
struct WatchClient {
    key: Bytes,
    range_end: Bytes,
    prev_kv: bool,
    /// The session (in `Cluster::sessions`) and stream it is reading, if connected.
    active: Option<ActiveWatch>,
    /// The revision to resume from: one past the last event or progress seen; 0 for "from now"
    /// (a fresh watcher, or one whose history was compacted away).
    resume_from: i64,
    /// Sessions opened so far: a later one resumes.
    opened: u32,
    /// A client that went away reconnects at this step (meanwhile its history may be compacted).
    away_until: u64,
}

struct ActiveWatch {
    session: usize,
    node: u64,
    incarnation: u64,
    stream: u64,
    rx: tokio::sync::mpsc::Receiver<WatchUpdate>,
}

/// The multi-key workload's keys (a watcher on `k`..`l` sees them all).
const KV_KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];

enum ClientState {
    Idle,
    Waiting { op: usize, node: u64, deadline: u64 },
}

pub struct Cluster {
    /// Per node: the step until which it is paused (0: running).
    paused_until: BTreeMap<u64, u64>,
    rng: SmallRng,
    /// Membership decisions draw from their own stream, so that a seed that never changes
    /// membership runs exactly as it did before membership changes existed.
    member_rng: SmallRng,
    /// The initial cluster's size: members 1..=n bootstrap it; later ones join it empty.
    n: u64,
    /// The nodes in the simulation (current members, and members being added or removed):
    /// `None` while crashed.
    nodes: BTreeMap<u64, Option<SimNode>>,
    /// Ids removed from the cluster (by a committed change): their nodes stop for good.
    removed: BTreeSet<u64>,
    /// Removed members still running, by the step at which they stop: a member that has not
    /// applied its own removal (cut off, lagging) goes on as it was, as a real one does until
    /// its operator stops it.
    stopping: BTreeMap<u64, u64>,
    next_member_id: u64,
    /// Membership changes already counted, by request id.
    changes_seen: BTreeSet<u64>,
    /// Whether removals may be proposed through any member (forwarded to the leader) rather
    /// than at the leader only.
    forwarded_removals: bool,
    disks: BTreeMap<u64, SimDisk>,
    /// In flight: (delivery time, sequence) -> message.
    net: BTreeMap<(u64, u64), Message>,
    net_seq: u64,
    /// Groups that can talk; empty means fully connected.
    partition: Vec<BTreeSet<u64>>,
    faults: Faults,
    now: u64,
    clients: Vec<ClientState>,
    pub history: Vec<Operation<RegisterInput, RegisterOutput>>,
    next_value: i64,
    next_id: u64,
    /// Invariants: the leader of each term; the entry applied at each index.
    leaders: BTreeMap<u64, u64>,
    applied: BTreeMap<u64, (u64, i32, Vec<u8>)>,
    pub summary: ClusterSummary,
    seed: u64,
    /// The new workloads draw from their own stream, so a seed that runs none of them runs
    /// exactly as before they existed.
    work_rng: SmallRng,
    /// The forged-message nemesis: its own stream, and how often it strikes (per mille of
    /// steps). What it sends must be refused, so it changes nothing else in the run.
    forge_rng: SmallRng,
    forge_per_mille: u32,
    pub workload: Workload,
    kv_clients: Vec<ClientState>,
    pub kv_ops: Vec<KvOp>,
    leases: Vec<SimLease>,
    lease_ttls: crate::workload::LeaseTtls,
    next_lease: i64,
    /// Request ids of the revokes leaders proposed for expired leases.
    expiry_revokes: BTreeSet<u64>,
    watchers: Vec<WatchClient>,
    pub sessions: Vec<WatchSession>,
    incarnations: u64,
    /// Values and mod revisions the kv clients have seen, for their compares.
    kv_seen: Vec<(Bytes, Bytes, i64)>,
}

/// A member's record as a conf change carries it. It has a name, so it counts as started for
/// etcd's quorum checks before a change.
fn member(id: u64) -> Member {
    Member {
        id,
        name: format!("n{id}"),
        peer_ur_ls: vec![format!("http://n{id}:2380")],
        ..Default::default()
    }
}

/// The initial members (1..=n) bootstrap the cluster; a later member starts empty and learns the
/// configuration from the leader's log or snapshot.
fn identity(id: u64, n: u64) -> Identity {
    if id > n {
        return Identity { name: format!("n{id}"), member_id: id, cluster_id: 7, initial_members: vec![] };
    }
    let members = (1..=n)
        .map(|m| Member {
            id: m,
            name: format!("n{m}"),
            peer_ur_ls: vec![format!("http://n{m}:2380")],
            ..Default::default()
        })
        .collect();
    Identity { name: format!("n{id}"), member_id: id, cluster_id: 7, initial_members: members }
}

fn digest(acc: &mut u64, x: u64) {
    for b in x.to_le_bytes() {
        *acc ^= b as u64;
        *acc = acc.wrapping_mul(0x100000001b3);
    }
}

impl Cluster {
    pub fn new(seed: u64, n: u64, clients: usize) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut faults = Faults {
            drop_pct: rng.random_range(0..15),
            dup_pct: rng.random_range(0..5),
            max_delay: rng.random_range(1..8),
            // Most runs crash rarely; some crash often (leaders die mid-replication).
            crash_per_mille: if rng.random_bool(0.25) {
                rng.random_range(10..40)
            } else {
                rng.random_range(0..6)
            },
            partition_per_mille: rng.random_range(0..20),
            tick_every: (1..=n).map(|id| (id, rng.random_range(1..4))).collect(),
            msg_bytes_max: [1, 64, 1 << 20][rng.random_range(0..3)],
            wal_segment_bytes: rng.random_range(4096..=65536),
            snapshot_count: [3, 10, 50, 200, 1 << 30][rng.random_range(0..5)],
            pause_per_mille: rng.random_range(0..6),
            clock_step_per_mille: rng.random_range(0..6),
            member_change_per_mille: 0,
        };
        let mut member_rng = SmallRng::seed_from_u64(seed ^ 0x6d65_6d62_6572_7321);
        // Swarm testing: some seeds never change membership, some rarely, some often (a change
        // every ~70 steps, so several land on crashes, partitions and elections).
        faults.member_change_per_mille = match member_rng.random_range(0..10) {
            0..3 => 0,
            3..6 => member_rng.random_range(1..5),
            _ => member_rng.random_range(5..30),
        };
        let mut work_rng = SmallRng::seed_from_u64(seed ^ 0x776f_726b_6c6f_6164);
        let mut forge_rng = SmallRng::seed_from_u64(seed ^ 0x666f_7267_6572_7921);
        let forge_per_mille = forge_rng.random_range(20..200);
        let workload = Workload {
            kv_clients: [0, 1, 2, 3][work_rng.random_range(0..4)],
            lease_clients: [0, 1, 1][work_rng.random_range(0..3)],
            watchers: [0, 1, 2, 3][work_rng.random_range(0..4)],
            watch_read_pct: [100, 30, 2][work_rng.random_range(0..3)],
            compact_per_mille: [0, 0, 5, 30][work_rng.random_range(0..4)],
        };
        let mut c = Cluster {
            paused_until: (1..=n).map(|id| (id, 0)).collect(),
            rng,
            member_rng,
            n,
            nodes: BTreeMap::new(),
            removed: BTreeSet::new(),
            stopping: BTreeMap::new(),
            next_member_id: n + 1,
            changes_seen: BTreeSet::new(),
            forwarded_removals: false,
            disks: (1..=n).map(|id| (id, SimDisk::new(&format!("n{id}")))).collect(),
            net: BTreeMap::new(),
            net_seq: 0,
            partition: Vec::new(),
            faults,
            now: 0,
            clients: (0..clients).map(|_| ClientState::Idle).collect(),
            history: Vec::new(),
            next_value: 1,
            next_id: 1,
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            summary: ClusterSummary {
                trace_digest: 0xcbf29ce484222325,
                workload: (workload.kv_clients, workload.lease_clients, workload.watchers),
                ..Default::default()
            },
            seed,
            kv_clients: (0..workload.kv_clients + workload.lease_clients)
                .map(|_| ClientState::Idle)
                .collect(),
            watchers: (0..workload.watchers)
                .map(|_| {
                    let (key, range_end) = match work_rng.random_range(0..3) {
                        0 => ("k", "l"),
                        1 => ("k1", ""),
                        _ => ("k1", "k3"),
                    };
                    WatchClient {
                        key: Bytes::from(key),
                        range_end: Bytes::from(range_end),
                        prev_kv: work_rng.random_bool(0.5),
                        active: None,
                        // From the first revision (the whole history), or from now.
                        resume_from: work_rng.random_range(0..2),
                        opened: 0,
                        away_until: 0,
                    }
                })
                .collect(),
            work_rng,
            forge_rng,
            forge_per_mille,
            workload,
            kv_ops: Vec::new(),
            leases: Vec::new(),
            lease_ttls: Default::default(),
            next_lease: 1,
            expiry_revokes: BTreeSet::new(),
            sessions: Vec::new(),
            incarnations: 0,
            kv_seen: Vec::new(),
        };
        for id in 1..=n {
            c.start(id);
        }
        c
    }

    /// Lets removals be proposed through any member, as `etcdctl member remove` may be: two
    /// removals decided on the same view can then shrink a three-voter configuration to one
    /// voter, through a two-voter one whose leader removes itself. Off by default: the leader
    /// steps down as soon as it applies its own removal and stops, so the last voter may never
    /// learn that the removal committed and waits forever for the removed one's vote
    /// (SIM_SEED=3340 with this on).
    pub fn with_forwarded_removals(mut self) -> Self {
        self.forwarded_removals = true;
        self
    }

    /// Turns the forged-message nemesis off (it is on by default).
    pub fn without_forgery(mut self) -> Self {
        self.forge_per_mille = 0;
        self
    }

    /// Delivers one message no honest member sends to a random running node: from an id that
    /// was never a member (every kind a non-member may never send), or in a member's name but
    /// malformed (a term past any reachable one, another receiver, appends whose entries do not
    /// follow their index, a proposal of garbage, an acknowledgement past any log, a vote
    /// without a term, a local message type, an unknown type). Raft must refuse every one; a
    /// refused message changes nothing, so the run goes on exactly as without the nemesis.
    fn forge(&mut self) {
        use keel_core::raft::{Entry, MessageType as T, ProposeError};
        // A node with no configuration yet (a member that has not heard from its first leader)
        // takes its first leader from anyone: not a target here.
        let running: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.as_ref().is_some_and(|n| {
                    let cs = n.node.conf_state();
                    !cs.voters.is_empty() || !cs.learners.is_empty()
                })
            })
            .map(|(id, _)| *id)
            .collect();
        if running.is_empty() {
            return;
        }
        let r = &mut self.forge_rng;
        let to = running[r.random_range(0..running.len())];
        let member = running[r.random_range(0..running.len())];
        let outsider = 1_000_000 + r.random_range(0..1000);
        let term = r.random_range(1..1000);
        // Bytes no protobuf decoder takes (field 0, wire type 7), then noise.
        let garbage: Vec<u8> =
            std::iter::once(0x07).chain((0..r.random_range(0..40)).map(|_| r.random())).collect();
        let msg =
            |t: T, from: u64, term: u64| Message { msg_type: t as i32, from, to, term, ..Default::default() };
        let never_from_outsiders = [
            T::MsgProp,
            T::MsgAppResp,
            T::MsgHeartbeatResp,
            T::MsgVoteResp,
            T::MsgPreVoteResp,
            T::MsgTimeoutNow,
            T::MsgReadIndex,
            T::MsgReadIndexResp,
        ];
        let local = [
            T::MsgHup,
            T::MsgBeat,
            T::MsgCheckQuorum,
            T::MsgSnapStatus,
            T::MsgUnreachable,
            T::MsgTransferLeader,
        ];
        let m = match r.random_range(0..9) {
            0 => {
                let t = never_from_outsiders[r.random_range(0..never_from_outsiders.len())];
                Message {
                    index: r.random(),
                    commit: r.random(),
                    entries: vec![Entry { data: garbage.into(), ..Default::default() }],
                    ..msg(t, outsider, term)
                }
            }
            1 => {
                let t = [T::MsgHeartbeat, T::MsgApp, T::MsgVote, T::MsgPreVote][r.random_range(0..4)];
                msg(t, member, keel_core::raft::TERM_MAX + r.random_range(1..1000))
            }
            2 => Message { to: to + 1_000_000, ..msg(T::MsgHeartbeat, member, term) },
            3 => Message {
                index: r.random_range(10..u64::MAX / 2),
                log_term: 1,
                entries: vec![Entry { index: r.random_range(1..10), term: 1, ..Default::default() }],
                ..msg(T::MsgApp, member, term)
            },
            4 => Message {
                entries: vec![Entry { data: garbage.into(), ..Default::default() }],
                ..msg(T::MsgProp, member, 0)
            },
            5 => {
                Message { index: u64::MAX / 2 + r.random_range(0..1000), ..msg(T::MsgAppResp, member, term) }
            }
            6 => msg([T::MsgVote, T::MsgPreVote, T::MsgVoteResp][r.random_range(0..3)], member, 0),
            7 => msg(local[r.random_range(0..local.len())], member, term),
            _ => Message { msg_type: r.random_range(19..1000), ..msg(T::MsgHeartbeat, member, term) },
        };
        let shown = format!("{m:?}");
        let Some(Some(n)) = self.nodes.get_mut(&to) else { return };
        match n.node.step(m) {
            Err(ProposeError::BadMessage(_)) => self.summary.forged_messages += 1,
            other => {
                panic!("seed {}: a forged message reached node {to}'s Raft ({other:?}): {shown}", self.seed)
            }
        }
    }

    fn start(&mut self, id: u64) {
        let disk = self.disks.remove(&id).expect("a disk");
        let mut cfg = Config::new(id, self.rng.random());
        cfg.election_ticks = 10;
        cfg.proposal_check = Some(keel_core::state_machine::entry_decodes);
        cfg.snapshot_check = Some(keel_core::state_machine::snapshot_matches);
        cfg.msg_bytes_max = self.faults.msg_bytes_max;
        let wal_options = WalOptions { segment_bytes: self.faults.wal_segment_bytes };
        // Crashes damage only what was never synced, so recovery must always succeed: a WAL
        // that calls such damage corruption would keep a healthy member down.
        let mut dir = disk.clone();
        let image_file = dir.open("db").expect("sim open");
        dir.sync().expect("sim dir sync");
        let Recovered { node, storage, sm, .. } =
            recover(disk.clone(), wal_options, image_file, &identity(id, self.n), cfg, Default::default())
                .unwrap_or_else(|e| {
                    let listing = runtime::wal::dump(&mut disk.clone());
                    panic!("SIM_SEED={}: node {id} cannot recover: {e}\n{listing}", self.seed)
                });
        self.nodes.insert(
            id,
            Some(SimNode {
                node,
                storage,
                sm,
                writes: HashMap::new(),
                reads: HashMap::new(),
                ready_reads: Vec::new(),
                kv_writes: BTreeMap::new(),
                kv_reads: BTreeMap::new(),
                kv_ready_reads: Vec::new(),
                hub: WatchHub::new(),
                ticks: 0,
                last_lease_poll_ms: 0,
                incarnation: self.incarnations,
                tenure: None,
            }),
        );
        self.incarnations += 1;
    }

    fn crash(&mut self, id: u64) {
        let Some(Some(n)) = self.nodes.get_mut(&id).map(|n| n.take()) else { return };
        let live = n.storage.wal.dir().clone();
        let rng = &mut self.rng;
        self.disks.insert(id, live.crash(&mut |_, unsynced| crate::draw_fault(rng, unsynced)));
        self.abandon(n);
        self.summary.crashes += 1;
        digest(&mut self.summary.trace_digest, 0xdead ^ id);
    }

    /// Member `id`'s removal is committed: it stops a few ticks after it applied the removal
    /// itself (as the server does), otherwise within 300 steps.
    fn removal_applied(&mut self, id: u64, by: u64) {
        if self.removed.insert(id) {
            let delay = self.member_rng.random_range(0..300);
            self.stopping.insert(id, self.now + delay);
        }
        if by == id {
            // As the server: it goes on for a few ticks (a removed leader's heartbeats carry the
            // commit), then stops.
            let ticks = runtime::node::REMOVED_STOP_DELAY_TICKS;
            let at = self.now + ticks * self.faults.tick_every.get(&id).copied().unwrap_or(1);
            let entry = self.stopping.entry(id).or_insert(at);
            *entry = (*entry).min(at);
        }
    }

    /// A removed member stops for good, its disk with it; messages to it vanish.
    fn stop(&mut self, id: u64) {
        assert!(self.removed.contains(&id), "only a removed member stops for good");
        self.stopping.remove(&id);
        self.disks.remove(&id);
        self.paused_until.remove(&id);
        if let Some(Some(n)) = self.nodes.remove(&id) {
            self.abandon(n);
        }
        digest(&mut self.summary.trace_digest, 0x7e30 ^ id);
    }

    /// A member added to the cluster starts with an empty disk, its own clock rate, and no
    /// configuration: the leader's log or snapshot tells it.
    fn add(&mut self, id: u64) {
        if self.nodes.contains_key(&id) || self.removed.contains(&id) {
            return; // already running, or already removed again
        }
        self.disks.insert(id, SimDisk::new(&format!("n{id}")));
        self.paused_until.insert(id, 0);
        self.faults.tick_every.insert(id, self.member_rng.random_range(1..4));
        self.start(id);
        digest(&mut self.summary.trace_digest, 0xadd0 ^ id);
    }

    /// A stopped node's clients stop waiting: their operations' outcomes are unknown.
    fn abandon(&mut self, n: SimNode) {
        for (_, (client, op)) in n.writes.into_iter() {
            self.give_up(client, op);
        }
        for (_, (client, op)) in
            n.reads.into_iter().chain(n.ready_reads.into_iter().map(|(_, c, o)| (0, (c, o))))
        {
            self.give_up(client, op);
        }
        for op in n
            .kv_writes
            .into_values()
            .chain(n.kv_reads.into_values())
            .chain(n.kv_ready_reads.into_iter().map(|(_, o)| o))
        {
            self.kv_give_up(op);
        }
    }

    /// A kv client stops waiting: the op's outcome is unknown (a read simply did not happen).
    fn kv_give_up(&mut self, op: usize) {
        let client = self.kv_ops[op].client;
        if let ClientState::Waiting { op: waiting, .. } = self.kv_clients[client] {
            if waiting == op {
                self.kv_clients[client] = ClientState::Idle;
            }
        }
    }

    fn kv_finish(&mut self, op: usize, output: KvOutput) {
        let client = self.kv_ops[op].client;
        if let ClientState::Waiting { op: waiting, .. } = self.kv_clients[client] {
            if waiting == op {
                self.kv_clients[client] = ClientState::Idle;
                let rev = match &output {
                    KvOutput::Read(r) => r.header.as_ref().map_or(0, |h| h.revision),
                    KvOutput::Write(w) => w.as_ref().map_or(-1, |w| w.revision()),
                };
                digest(&mut self.summary.trace_digest, rev as u64 ^ (op as u64) << 32);
                self.remember(&output);
                if let (KvRequest::Write(Op::LeaseGrant(g)), KvOutput::Write(Ok(_))) =
                    (&self.kv_ops[op].request, &output)
                {
                    self.lease_granted(g.id);
                }
                self.kv_ops[op].ret = Some((self.now, output));
            }
        }
    }

    /// The client stops waiting: a write's outcome becomes unknown; a read simply did not happen.
    fn give_up(&mut self, client: usize, op: usize) {
        if let ClientState::Waiting { op: waiting, .. } = self.clients[client] {
            if waiting == op {
                self.clients[client] = ClientState::Idle;
                if self.history[op].input == RegisterInput::Read {
                    self.history[op].call = u64::MAX; // marked for removal
                }
            }
        }
    }

    fn finish(&mut self, client: usize, op: usize, output: RegisterOutput) {
        if let ClientState::Waiting { op: waiting, .. } = self.clients[client] {
            if waiting == op {
                self.history[op].ret = Some(jepsen::checker::Ret { time: self.now, output });
                self.clients[client] = ClientState::Idle;
                self.summary.ops_ok += 1;
            }
        }
    }

    fn connected(&self, a: u64, b: u64) -> bool {
        self.partition.is_empty() || self.partition.iter().any(|g| g.contains(&a) && g.contains(&b))
    }

    fn send(&mut self, m: Message) {
        if self.rng.random_range(0..100) < self.faults.drop_pct {
            return;
        }
        let copies = if self.rng.random_range(0..100) < self.faults.dup_pct { 2 } else { 1 };
        for _ in 0..copies {
            let at = self.now + self.rng.random_range(1..=self.faults.max_delay);
            self.net_seq += 1;
            self.net.insert((at, self.net_seq), m.clone());
        }
    }

    fn issue(&mut self, client: usize) {
        let up: Vec<u64> = self.nodes.iter().filter(|(_, n)| n.is_some()).map(|(id, _)| *id).collect();
        if up.is_empty() {
            return;
        }
        let node_id = up[self.rng.random_range(0..up.len())];
        let kind = self.rng.random_range(0..3);
        let input = match kind {
            0 => RegisterInput::Read,
            1 => {
                self.next_value += 1;
                RegisterInput::Write(self.next_value)
            }
            _ => {
                self.next_value += 1;
                RegisterInput::Cas {
                    from: self.rng.random_range(1..self.next_value.max(2)),
                    to: self.next_value,
                }
            }
        };
        let op = self.history.len();
        self.history.push(Operation::unknown(client as u64, input, self.now));
        let deadline = self.now + 200;
        let id = self.next_id;
        self.next_id += 1;
        let node = self.nodes.get_mut(&node_id).unwrap().as_mut().unwrap();
        let accepted = match input {
            RegisterInput::Read => {
                let ok = node.node.read_index(id.to_be_bytes().to_vec().into()).is_ok();
                if ok {
                    node.reads.insert(id, (client, op));
                }
                ok
            }
            RegisterInput::Write(v) => {
                let put = PutRequest { key: KEY.into(), value: v.to_string().into(), ..Default::default() };
                let data = Request { id, op: Some(Op::Put(put)) }.encode_to_vec();
                let ok = node.node.propose(data.into()).is_ok();
                if ok {
                    node.writes.insert(id, (client, op));
                }
                ok
            }
            RegisterInput::Cas { from, to } => {
                let cmp = Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Value as i32,
                    key: KEY.into(),
                    target_union: Some(compare::TargetUnion::Value(from.to_string().into())),
                    range_end: Default::default(),
                };
                let put = PutRequest { key: KEY.into(), value: to.to_string().into(), ..Default::default() };
                let txn = TxnRequest {
                    compare: vec![cmp],
                    success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
                    failure: vec![],
                };
                let data = Request { id, op: Some(Op::Txn(txn)) }.encode_to_vec();
                let ok = node.node.propose(data.into()).is_ok();
                if ok {
                    node.writes.insert(id, (client, op));
                }
                ok
            }
        };
        if accepted {
            self.clients[client] = ClientState::Waiting { op, node: node_id, deadline };
        } else {
            // Refused at once (no leader known): it certainly had no effect.
            self.history[op].call = u64::MAX;
        }
    }

    fn paused(&self, id: u64) -> bool {
        self.paused_until.get(&id).is_some_and(|&until| until > self.now)
    }

    fn process(&mut self, id: u64) {
        if self.paused(id) {
            return;
        }
        if let Some(Some(n)) = self.nodes.get_mut(&id) {
            // Watchers that fell behind catch up as their clients read (as on every node loop).
            if n.hub.has_unsynced() {
                let rev = n.sm.store.revision();
                n.hub.catch_up(&n.sm.store, header(rev));
            }
        }
        for _ in 0..16 {
            let Some(Some(n)) = self.nodes.get_mut(&id) else { return };
            if !n.node.has_ready() {
                break;
            }
            let mut out = Vec::new();
            let now_ms = n.ticks * TICK_MS;
            let outcome = handle_ready(&mut n.node, &mut n.storage, &mut n.sm, now_ms, &mut |m| out.push(m))
                .unwrap_or_else(|e| panic!("seed {}: storage of node {id} failed: {e}", self.seed));
            let (term, role) = (n.node.term(), n.node.role());
            let mut finished = Vec::new();
            let mut kv_finished = Vec::new();
            let mut joined = Vec::new();
            let mut left = Vec::new();
            if outcome.installed.is_some() {
                self.summary.snapshots_installed += 1;
                // Writes proposed here may have been applied inside the snapshot, unseen: their
                // outcome is unknown.
                finished.extend(n.writes.drain().map(|(_, (client, op))| (client, op, None)));
                kv_finished.extend(std::mem::take(&mut n.kv_writes).into_values().map(|op| (op, None)));
                // The store was replaced: live events no longer follow on from what was sent.
                n.hub.desync_all();
            }
            for (index, effect) in &outcome.applied {
                let entry = n.node.entries(*index, index + 1);
                if let Some(e) = entry.first() {
                    let prev = self.applied.entry(*index).or_insert((e.term, e.entry_type, e.data.to_vec()));
                    assert_eq!(
                        *prev,
                        (e.term, e.entry_type, e.data.to_vec()),
                        "seed {}: state machine safety: node {id} applied a different entry at {index}",
                        self.seed
                    );
                }
                if let Applied::ConfChange { change, result } = effect {
                    let kind = ConfChangeType::try_from(change.change_type).expect("a known change type");
                    if self.changes_seen.insert(change.id) {
                        let s = &mut self.summary;
                        match (kind, change.promote, result.is_ok()) {
                            (_, _, false) => s.changes_refused += 1,
                            (ConfChangeType::RemoveNode, ..) => s.members_removed += 1,
                            (ConfChangeType::AddNode, true, _) => s.learners_promoted += 1,
                            (ConfChangeType::AddNode, false, _) => s.voters_added += 1,
                            (ConfChangeType::AddLearnerNode, ..) => s.learners_added += 1,
                            (ConfChangeType::UpdateNode, ..) => {}
                        }
                    }
                    // The operator acts once the change is committed: a removed member is
                    // stopped, an added one started.
                    match (kind, change.promote, result) {
                        (ConfChangeType::RemoveNode, _, Ok(())) => left.push(change.node_id),
                        (ConfChangeType::AddNode | ConfChangeType::AddLearnerNode, false, Ok(())) => {
                            joined.push(change.node_id)
                        }
                        _ => {}
                    }
                }
                if let Applied::Write { request_id, result, events } = effect {
                    if let Some(kv) = events.first().and_then(|e| e.kv.as_ref()) {
                        n.hub.notify(events, header(kv.mod_revision));
                    }
                    if let (Ok(WriteResponse::LeaseGrant(g)), true) = (result, n.sm.lessor.is_leader()) {
                        // The leader's lessor starts a granted lease's clock when it applies it.
                        let t = n.tenure.as_mut().expect("a leader's lessor has a tenure");
                        t.floors.insert(g.id, now_ms + g.ttl as u64 * 1000);
                    }
                    if let Some(op) = n.kv_writes.remove(request_id) {
                        kv_finished.push((op, Some(result.clone())));
                    }
                    if let Some((client, op)) = n.writes.remove(request_id) {
                        let output = match result {
                            Ok(WriteResponse::Put(_)) => Some(RegisterOutput::Write),
                            Ok(WriteResponse::Txn(t)) => Some(RegisterOutput::Cas(t.succeeded)),
                            _ => None,
                        };
                        finished.push((client, op, output));
                    }
                }
            }
            for rs in &outcome.read_states {
                let ctx = u64::from_be_bytes(rs.request_ctx[..].try_into().unwrap());
                if let Some((client, op)) = n.reads.remove(&ctx) {
                    n.ready_reads.push((rs.index, client, op));
                }
                if let Some(op) = n.kv_reads.remove(&ctx) {
                    n.kv_ready_reads.push((rs.index, op));
                }
            }
            let applied = n.sm.applied_index();
            let mut kv_served = Vec::new();
            let kv_ops = &self.kv_ops;
            let store = &n.sm.store;
            n.kv_ready_reads.retain(|&(index, op)| {
                if index > applied {
                    return true;
                }
                let KvRequest::Read(req) = &kv_ops[op].request else { unreachable!("a read") };
                kv_served.push((op, store.range(req).expect("a read at the current revision")));
                false
            });
            let mut served = Vec::new();
            n.ready_reads.retain(|(index, client, op)| {
                if *index <= applied {
                    served.push((*client, *op));
                    false
                } else {
                    true
                }
            });
            let value =
                n.sm.store
                    .range(&RangeRequest { key: KEY.into(), ..Default::default() })
                    .unwrap()
                    .kvs
                    .first()
                    .map(|kv| String::from_utf8_lossy(&kv.value).parse::<i64>().unwrap());
            if role == StateRole::Leader {
                let prev = *self.leaders.entry(term).or_insert(id);
                assert_eq!(prev, id, "seed {}: election safety: two leaders in term {term}", self.seed);
                self.summary.max_term = self.summary.max_term.max(term);
            }
            let snapshots_to: Vec<u64> =
                out.iter().filter(|m| m.msg_type == MessageType::MsgSnap as i32).map(|m| m.to).collect();
            for m in out {
                self.send(m);
            }
            let Some(Some(n)) = self.nodes.get_mut(&id) else { return };
            for to in snapshots_to {
                // Handed to the network: the leader waits for the follower's answer.
                n.node.report_snapshot(to, false);
            }
            let saved = maybe_checkpoint(&mut n.node, &mut n.storage, &mut n.sm, self.faults.snapshot_count)
                .unwrap_or_else(|e| panic!("seed {}: checkpoint of node {id} failed: {e}", self.seed));
            self.summary.checkpoints += saved as u32;
            for (client, op, output) in finished {
                match output {
                    Some(o) => self.finish(client, op, o),
                    None => self.give_up(client, op),
                }
            }
            for (client, op) in served {
                self.finish(client, op, RegisterOutput::Read(value));
            }
            for (op, result) in kv_finished {
                match result {
                    Some(r) => self.kv_finish(op, KvOutput::Write(r)),
                    None => self.kv_give_up(op),
                }
            }
            for (op, resp) in kv_served {
                self.kv_finish(op, KvOutput::Read(resp));
            }
            for member in joined {
                self.add(member);
            }
            for member in left {
                self.removal_applied(member, id);
            }
        }
    }

    /// Proposes one membership change, chosen from the leader's view of the configuration: a
    /// learner is promoted once it has caught up (or, sometimes, removed); a configuration short
    /// of the initial size gains a fresh member, as a voter or as a learner; a full one loses a
    /// voter (the leader itself, sometimes) or gains a learner. The proposal goes through the
    /// leader or, sometimes, through another member that forwards it. The core keeps one change
    /// pending at a time; the membership rules refuse the rest when they apply.
    fn change_membership(&mut self) {
        let leader = self
            .nodes
            .iter()
            .filter_map(|(id, n)| n.as_ref().map(|n| (*id, n)))
            .filter(|(id, n)| n.node.role() == StateRole::Leader && !self.paused(*id))
            .max_by_key(|(_, n)| n.node.term())
            .map(|(id, _)| id);
        let Some(leader) = leader else { return };
        let n = self.nodes[&leader].as_ref().unwrap();
        let ms = n.sm.membership();
        let conf = ms.conf_state();
        let rng = &mut self.member_rng;
        let (change_type, node_id, promote) = if let Some(&learner) = conf.learners.first() {
            let progress = n.node.progress();
            let caught_up = match (progress.get(&learner), progress.get(&leader)) {
                (Some(l), Some(lead)) => l.matched * 10 >= lead.matched * 9,
                _ => false,
            };
            if caught_up && ms.ready_to_promote() {
                (ConfChangeType::AddNode, learner, true)
            } else if rng.random_bool(0.1) {
                (ConfChangeType::RemoveNode, learner, false)
            } else {
                return;
            }
        } else if (conf.voters.len() as u64) < self.n
            || (conf.voters.len() as u64 == self.n && rng.random_bool(0.4))
        {
            let as_learner = conf.voters.len() as u64 >= self.n || rng.random_bool(0.5);
            if !as_learner && !ms.ready_to_add_voter() {
                return;
            }
            let id = self.next_member_id;
            self.next_member_id += 1;
            let kind = if as_learner { ConfChangeType::AddLearnerNode } else { ConfChangeType::AddNode };
            (kind, id, false)
        } else {
            let voter = conf.voters[rng.random_range(0..conf.voters.len())];
            if conf.voters.len() < 3 || !ms.ready_to_remove_voter(voter) {
                return;
            }
            (ConfChangeType::RemoveNode, voter, false)
        };
        let context = match change_type {
            ConfChangeType::RemoveNode => Vec::new(),
            _ if promote => Vec::new(),
            _ => member(node_id).encode_to_vec(),
        };
        let cc = ConfChange {
            change_type: change_type as i32,
            node_id,
            context: context.into(),
            id: self.next_id,
            promote,
        };
        self.next_id += 1;
        let up: Vec<u64> = self.nodes.iter().filter(|(_, n)| n.is_some()).map(|(id, _)| *id).collect();
        let mut via = if self.member_rng.random_bool(0.7) {
            leader
        } else {
            up[self.member_rng.random_range(0..up.len())]
        };
        // A removal decided on the leader's view and proposed there cannot land on a smaller
        // configuration than the one it was decided on (no other change is pending there), so
        // the cluster keeps at least two voters. Forwarded, two removals can race down to one
        // voter, and removing the leader of two voters leaves the other stuck (see
        // `forwarded_removals`).
        if change_type == ConfChangeType::RemoveNode && !self.forwarded_removals {
            via = leader;
        }
        let n = self.nodes.get_mut(&via).unwrap().as_mut().unwrap();
        // Refused (a change pending, no leader known): nothing happened; a later step tries again.
        let _ = n.node.propose_conf_change(&cc);
        digest(&mut self.summary.trace_digest, 0xcc ^ (node_id << 8) ^ ((change_type as u64) << 4));
    }

    fn deliver_due(&mut self) {
        while let Some((&(at, seq), _)) = self.net.first_key_value() {
            if at > self.now {
                break;
            }
            let m = self.net.remove(&(at, seq)).unwrap();
            if !self.connected(m.from, m.to) {
                continue;
            }
            if self.paused(m.to) {
                // Held in the network (a socket buffer) until the node runs again.
                let resume = self.paused_until[&m.to];
                self.net_seq += 1;
                self.net.insert((resume, self.net_seq), m);
                continue;
            }
            digest(&mut self.summary.trace_digest, m.msg_type as u64 ^ (m.to << 8) ^ (m.index << 16));
            if let Some(Some(n)) = self.nodes.get_mut(&m.to) {
                let _ = n.node.step(m);
            }
        }
    }

    /// One step of simulated time. `faults` turns fault injection on or off.
    fn step(&mut self, faults: bool) {
        self.now += 1;
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for &id in &ids {
            if self.now.is_multiple_of(self.faults.tick_every[&id]) && !self.paused(id) {
                self.tick(id);
            }
        }
        self.deliver_due();
        if faults && self.forge_per_mille > 0 && self.forge_rng.random_range(0..1000) < self.forge_per_mille {
            self.forge();
        }
        if faults {
            if self.rng.random_range(0..1000) < self.faults.pause_per_mille {
                let id = ids[self.rng.random_range(0..ids.len())];
                let until = self.now + self.rng.random_range(10..200);
                self.paused_until.insert(id, until);
                self.summary.pauses += 1;
            }
            if self.rng.random_range(0..1000) < self.faults.clock_step_per_mille {
                let id = ids[self.rng.random_range(0..ids.len())];
                let ticks = self.rng.random_range(1..=20);
                if let Some(Some(_)) = self.nodes.get(&id) {
                    for _ in 0..ticks {
                        self.tick(id);
                    }
                    self.summary.clock_steps += 1;
                }
            }
            if self.rng.random_range(0..1000) < self.faults.crash_per_mille {
                let id = ids[self.rng.random_range(0..ids.len())];
                self.crash(id);
            }
            // A cluster shrunk to one member (concurrent removals can do that) has none to cut off.
            if self.rng.random_range(0..1000) < self.faults.partition_per_mille && ids.len() > 1 {
                self.summary.partitions += 1;
                if self.partition.is_empty() {
                    // Members that join later are on the side of no group: cut off until healed.
                    let cut = self.rng.random_range(1..ids.len() as u64);
                    let mut ids = ids.clone();
                    for i in (1..ids.len()).rev() {
                        ids.swap(i, self.rng.random_range(0..=i));
                    }
                    self.partition = vec![
                        ids[..cut as usize].iter().copied().collect(),
                        ids[cut as usize..].iter().copied().collect(),
                    ];
                } else {
                    self.partition.clear();
                }
            }
            if self.member_rng.random_range(0..1000) < self.faults.member_change_per_mille {
                self.change_membership();
            }
        }
        let due: Vec<u64> =
            self.stopping.iter().filter(|(_, at)| **at <= self.now).map(|(id, _)| *id).collect();
        for id in due {
            self.stop(id);
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].is_none() && (!faults || self.rng.random_range(0..100) < 2) {
                self.start(id);
            }
        }
        for client in 0..self.clients.len() {
            match self.clients[client] {
                ClientState::Idle => {
                    if faults && self.rng.random_range(0..100) < 30 {
                        self.issue(client);
                    }
                }
                ClientState::Waiting { op, node, deadline } => {
                    if self.now > deadline {
                        if let Some(Some(n)) = self.nodes.get_mut(&node) {
                            n.writes.retain(|_, (c, _)| *c != client);
                            n.reads.retain(|_, (c, _)| *c != client);
                            n.ready_reads.retain(|(_, c, _)| *c != client);
                        }
                        self.give_up(client, op);
                    }
                }
            }
        }
        for client in 0..self.kv_clients.len() {
            match self.kv_clients[client] {
                ClientState::Idle => {
                    if faults && self.work_rng.random_range(0..100) < 30 {
                        self.issue_kv(client);
                    }
                }
                ClientState::Waiting { op, node, deadline } => {
                    if self.now > deadline {
                        if let Some(Some(n)) = self.nodes.get_mut(&node) {
                            n.kv_writes.retain(|_, o| *o != op);
                            n.kv_reads.retain(|_, o| *o != op);
                            n.kv_ready_reads.retain(|(_, o)| *o != op);
                        }
                        self.kv_give_up(op);
                    }
                }
            }
        }
        self.keepalives();
        self.drive_watchers(faults);
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.process(id);
        }
    }

    /// Runs `steps` with faults, then heals everything and lets the cluster settle; checks the
    /// history and that the healed cluster still commits.
    pub fn run(mut self, steps: u64) -> ClusterSummary {
        for _ in 0..steps {
            self.step(true);
        }
        self.partition.clear();
        self.paused_until.values_mut().for_each(|p| *p = 0);
        for _ in 0..2000 {
            self.step(false);
            if self.clients.iter().all(|c| matches!(c, ClientState::Idle)) {
                break;
            }
        }
        // Liveness: once faults have healed, a client's operations complete again.
        let probe = self.clients.len();
        self.clients.push(ClientState::Idle);
        let mut committed = false;
        for _attempt in 0..50 {
            if matches!(self.clients[probe], ClientState::Idle) {
                self.issue(probe);
            }
            for _ in 0..100 {
                self.step(false);
            }
            if let Some(op) = self.history.iter().rposition(|o| o.process == probe as u64) {
                if self.history[op].ret.is_some() {
                    committed = true;
                    break;
                }
            }
        }
        assert!(committed, "seed {}: liveness: no operation completed after the faults healed", self.seed);
        self.check_workloads();
        self.history.retain(|o| o.call != u64::MAX);
        self.summary.ops_unknown = self.history.iter().filter(|o| o.ret.is_none()).count();
        let result = check::<Register>(&self.history, &CheckOptions::default());
        if let (Verdict::NotLinearizable, Some(failure)) = (&result.verdict, &result.failure) {
            let window =
                jepsen::checker::minimal_window::<Register>(&self.history, failure, &CheckOptions::default());
            let title = format!("SIM_SEED={}", self.seed);
            let html = jepsen::checker::render_html(
                &self.history,
                &window,
                |s: &Option<i64>| format!("{s:?}"),
                &jepsen::checker::HtmlOptions { title: &title, time_name: "step" },
            );
            let path = std::env::temp_dir().join(format!("keel-sim-{}.html", self.seed));
            let _ = std::fs::write(&path, html);
            eprintln!("seed {}: minimal non-linearizable window (report: {}):", self.seed, path.display());
            for &i in &window.ops {
                let o = &self.history[i];
                eprintln!(
                    "  client {} {:?} call {} -> {:?}",
                    o.process,
                    o.input,
                    o.call,
                    o.ret.as_ref().map(|r| (r.time, &r.output))
                );
            }
        }
        assert_ne!(
            result.verdict,
            Verdict::NotLinearizable,
            "seed {}: history of {} ops is not linearizable",
            self.seed,
            self.history.len()
        );
        self.summary.check_unknown = result.verdict == Verdict::Unknown;
        self.summary
    }
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader { revision, ..Default::default() }
}

/// The new workloads: multi-key txns and ranges, leases, watchers.
impl Cluster {
    fn up_nodes(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(id, n)| n.is_some() && !self.paused(**id)).map(|(id, _)| *id).collect()
    }

    /// One tick of member `id`'s clock, and what the node task does on a tick: the leader's side
    /// of leases (proposing revokes for expired ones) and progress notifications.
    fn tick(&mut self, id: u64) {
        let Some(Some(n)) = self.nodes.get_mut(&id) else { return };
        n.node.tick();
        n.ticks += 1;
        let now = n.ticks * TICK_MS;
        let was_leader = n.sm.lessor.is_leader();
        let ops = runtime::ready::drive_leases(
            &n.node,
            &mut n.sm,
            now,
            ELECTION_TIMEOUT_MS,
            &mut n.last_lease_poll_ms,
        );
        if !n.sm.lessor.is_leader() {
            n.tenure = None;
        } else if !was_leader || n.tenure.is_none() {
            n.tenure = Some(Tenure { since_ms: now, floors: BTreeMap::new() });
        }
        for op in ops {
            if let Op::LeaseRevoke(r) = &op {
                // What a leader's expiry really promises, in its own clock (clocks of different
                // members are unrelated, and a deposed leader that has not noticed yet may still
                // acknowledge keep-alives the new leader never sees): a lease runs its TTL from
                // the last grant this member applied or keep-alive it acknowledged while leading
                // (a keep-alive may shorten the lease: it runs from now), or, failing both, its
                // TTL plus the election timeout from the takeover.
                let ttl_ms = self.lease_ttls[&r.id] as u64 * 1000;
                let t = n.tenure.as_ref().expect("a leader's lessor has a tenure");
                let (due, since) = match t.floors.get(&r.id) {
                    Some(&floor) => (floor, "its last grant or keep-alive here"),
                    None => (t.since_ms + ELECTION_TIMEOUT_MS + ttl_ms, "the takeover"),
                };
                assert!(
                    now >= due,
                    "SIM_SEED={}: node {id} expired lease {} at {now} ms, before {due} ms (TTL after {since})",
                    self.seed,
                    r.id
                );
            }
            let request_id = (1 << 62) | self.next_id;
            self.next_id += 1;
            if matches!(op, Op::LeaseRevoke(_)) {
                self.expiry_revokes.insert(request_id);
            }
            let _ = n.node.propose(Request { id: request_id, op: Some(op) }.encode_to_vec().into());
        }
        if n.ticks.is_multiple_of(10) {
            let rev = n.sm.store.revision();
            n.hub.progress_tick(2, header(rev));
        }
    }

    fn kv_key(&mut self) -> Bytes {
        Bytes::from(KV_KEYS[self.work_rng.random_range(0..KV_KEYS.len())])
    }

    /// A lease for a put: mostly none; otherwise one of the last few granted (perhaps revoked or
    /// expired by now: the put then fails, whole).
    fn kv_lease(&mut self) -> i64 {
        if self.lease_ttls.is_empty() || self.work_rng.random_bool(0.7) {
            return 0;
        }
        let recent: Vec<i64> = self.lease_ttls.keys().rev().take(4).copied().collect();
        recent[self.work_rng.random_range(0..recent.len())]
    }

    fn kv_put(&mut self, key: Bytes, lease: i64) -> PutRequest {
        let value = Bytes::from(format!("v{}", self.kv_ops.len()));
        PutRequest { key, value, lease, ..Default::default() }
    }

    /// The ops of one txn branch: puts, deletes and ranges over distinct keys (etcd refuses a
    /// branch that writes a key twice), sometimes a range over all of them.
    fn branch(&mut self, max_ops: usize) -> Vec<RequestOp> {
        let mut keys: Vec<&str> = KV_KEYS.to_vec();
        for i in (1..keys.len()).rev() {
            keys.swap(i, self.work_rng.random_range(0..=i));
        }
        let n = self.work_rng.random_range(0..=max_ops);
        let mut ops = Vec::new();
        for key in keys.into_iter().take(n) {
            let key = Bytes::from(key);
            let request = match self.work_rng.random_range(0..10) {
                0..6 => {
                    let lease = self.kv_lease();
                    request_op::Request::RequestPut(self.kv_put(key, lease))
                }
                6..8 => {
                    request_op::Request::RequestDeleteRange(DeleteRangeRequest { key, ..Default::default() })
                }
                _ => request_op::Request::RequestRange(RangeRequest { key, ..Default::default() }),
            };
            ops.push(RequestOp { request: Some(request) });
        }
        if self.work_rng.random_bool(0.3) {
            let all =
                RangeRequest { key: Bytes::from("k"), range_end: Bytes::from("l"), ..Default::default() };
            ops.push(RequestOp { request: Some(request_op::Request::RequestRange(all)) });
        }
        ops
    }

    /// A compare on one key: its value or mod revision against one seen, or its existence.
    fn kv_compare(&mut self) -> Compare {
        let key = self.kv_key();
        let seen: Vec<(Bytes, i64)> =
            self.kv_seen.iter().filter(|(k, ..)| *k == key).map(|(_, v, r)| (v.clone(), *r)).collect();
        let (value, mod_rev) = match seen.len() {
            0 => (Bytes::from("v0"), 1),
            n => seen[self.work_rng.random_range(0..n)].clone(),
        };
        let (target, result, union) = match self.work_rng.random_range(0..5) {
            0 | 1 => (
                compare::CompareTarget::Value,
                compare::CompareResult::Equal,
                compare::TargetUnion::Value(value),
            ),
            2 => {
                let result = [
                    compare::CompareResult::Equal,
                    compare::CompareResult::Less,
                    compare::CompareResult::Greater,
                ][self.work_rng.random_range(0..3)];
                (compare::CompareTarget::Mod, result, compare::TargetUnion::ModRevision(mod_rev))
            }
            3 => (
                compare::CompareTarget::Version,
                compare::CompareResult::Equal,
                compare::TargetUnion::Version(0),
            ),
            _ => (
                compare::CompareTarget::Version,
                compare::CompareResult::Greater,
                compare::TargetUnion::Version(0),
            ),
        };
        Compare {
            result: result as i32,
            target: target as i32,
            key,
            target_union: Some(union),
            range_end: Bytes::new(),
        }
    }

    fn kv_request(&mut self, node_id: u64) -> KvRequest {
        if self.work_rng.random_range(0..1000) < self.workload.compact_per_mille {
            let current = self.nodes[&node_id].as_ref().expect("up").sm.store.revision();
            let revision = (current - self.work_rng.random_range(0..40)).max(1);
            let physical = self.work_rng.random_bool(0.5);
            return KvRequest::Write(Op::Compaction(CompactionRequest { revision, physical }));
        }
        match self.work_rng.random_range(0..10) {
            0..4 => {
                let compare = vec![self.kv_compare()];
                let success = self.branch(3);
                let failure = self.branch(2);
                KvRequest::Write(Op::Txn(TxnRequest { compare, success, failure }))
            }
            4..6 => {
                let (key, lease) = (self.kv_key(), self.kv_lease());
                KvRequest::Write(Op::Put(self.kv_put(key, lease)))
            }
            6 => {
                let (a, b) = (self.kv_key(), self.kv_key());
                let (key, range_end) = if a <= b { (a, b) } else { (b, a) };
                KvRequest::Write(Op::DeleteRange(DeleteRangeRequest { key, range_end, ..Default::default() }))
            }
            7 => KvRequest::Read(RangeRequest { key: self.kv_key(), ..Default::default() }),
            _ => KvRequest::Read(RangeRequest {
                key: Bytes::from("k"),
                range_end: Bytes::from("l"),
                ..Default::default()
            }),
        }
    }

    /// A lease client's next request: grant (short TTLs), attach a key, revoke, or read.
    fn lease_request(&mut self) -> KvRequest {
        let live: Vec<i64> = self.leases.iter().map(|l| l.id).collect();
        match self.work_rng.random_range(0..10) {
            0..4 if live.len() < 3 => {
                let id = self.next_lease;
                self.next_lease += 1;
                let ttl = self.work_rng.random_range(1..=5);
                self.lease_ttls.insert(id, ttl.max(keel_core::lease::DEFAULT_MIN_TTL_SECS));
                KvRequest::Write(Op::LeaseGrant(LeaseGrantRequest { id, ttl }))
            }
            0..8 if !live.is_empty() => {
                let lease = live[self.work_rng.random_range(0..live.len())];
                let key = self.kv_key();
                KvRequest::Write(Op::Put(self.kv_put(key, lease)))
            }
            8 if !live.is_empty() => {
                let i = self.work_rng.random_range(0..live.len());
                self.leases.remove(i);
                KvRequest::Write(Op::LeaseRevoke(LeaseRevokeRequest { id: live[i] }))
            }
            _ => KvRequest::Read(RangeRequest {
                key: Bytes::from("k"),
                range_end: Bytes::from("l"),
                ..Default::default()
            }),
        }
    }

    fn issue_kv(&mut self, client: usize) {
        let up = self.up_nodes();
        if up.is_empty() {
            return;
        }
        let node_id = up[self.work_rng.random_range(0..up.len())];
        let request =
            if client < self.workload.kv_clients { self.kv_request(node_id) } else { self.lease_request() };
        let id = self.next_id;
        self.next_id += 1;
        let op = self.kv_ops.len();
        self.kv_ops.push(KvOp {
            client,
            id,
            request: request.clone(),
            call: self.now,
            ret: None,
            refused: false,
        });
        let n = self.nodes.get_mut(&node_id).unwrap().as_mut().unwrap();
        let accepted = match request {
            KvRequest::Read(_) => {
                let ok = n.node.read_index(id.to_be_bytes().to_vec().into()).is_ok();
                if ok {
                    n.kv_reads.insert(id, op);
                }
                ok
            }
            KvRequest::Write(w) => {
                let ok = n.node.propose(Request { id, op: Some(w) }.encode_to_vec().into()).is_ok();
                if ok {
                    n.kv_writes.insert(id, op);
                }
                ok
            }
        };
        if accepted {
            self.kv_clients[client] = ClientState::Waiting { op, node: node_id, deadline: self.now + 200 };
        } else {
            self.kv_ops[op].refused = true;
        }
    }

    /// Keeps what a reply showed of the keys, for later compares.
    fn remember(&mut self, output: &KvOutput) {
        let kvs: Vec<&keel_core::pb::mvccpb::KeyValue> = match output {
            KvOutput::Read(r) => r.kvs.iter().collect(),
            KvOutput::Write(Ok(keel_core::state_machine::WriteResponse::Txn(t))) => t
                .responses
                .iter()
                .filter_map(|r| match &r.response {
                    Some(keel_core::pb::etcdserverpb::response_op::Response::ResponseRange(r)) => {
                        Some(&r.kvs)
                    }
                    _ => None,
                })
                .flatten()
                .collect(),
            _ => Vec::new(),
        };
        for kv in kvs {
            self.kv_seen.push((kv.key.clone(), kv.value.clone(), kv.mod_revision));
        }
        let excess = self.kv_seen.len().saturating_sub(16);
        self.kv_seen.drain(..excess);
    }

    /// A grant was acknowledged: the client keeps the lease alive for a while (or not at all),
    /// then lets it expire.
    fn lease_granted(&mut self, id: i64) {
        let keepalive_until =
            if self.work_rng.random_bool(0.3) { 0 } else { self.now + self.work_rng.random_range(0..1500) };
        let every = self.work_rng.random_range(3..15);
        self.leases.push(SimLease { id, keepalive_until, every, last_keepalive: self.now });
    }

    /// Keep-alives due, each to a random member; a follower forwards it to the leader it knows
    /// (as the server does). Acknowledged at once: keep-alives do not go through the log.
    fn keepalives(&mut self) {
        let mut gone = Vec::new();
        for i in 0..self.leases.len() {
            let (id, until, every, last) = {
                let l = &self.leases[i];
                (l.id, l.keepalive_until, l.every, l.last_keepalive)
            };
            if self.now >= until {
                // Not kept alive any more: the client forgets it once it surely expired.
                if self.now > until + 1000 {
                    gone.push(id);
                }
                continue;
            }
            if self.now < last + every {
                continue;
            }
            self.leases[i].last_keepalive = self.now;
            let up = self.up_nodes();
            if up.is_empty() {
                continue;
            }
            let mut target = up[self.work_rng.random_range(0..up.len())];
            for _hop in 0..2 {
                if self.paused(target) {
                    break;
                }
                let Some(Some(n)) = self.nodes.get_mut(&target) else { break };
                let now = n.ticks * TICK_MS;
                match runtime::ready::renew_lease(&n.node, &mut n.sm, id, now) {
                    Ok(ttl) => {
                        assert_eq!(
                            n.node.role(),
                            StateRole::Leader,
                            "SIM_SEED={}: node {target} acknowledged a keep-alive of lease {id} while it knows it \
                             is not the leader",
                            self.seed
                        );
                        assert_eq!(
                            ttl, self.lease_ttls[&id],
                            "SIM_SEED={}: lease {id} renewed with another TTL",
                            self.seed
                        );
                        let t = n.tenure.as_mut().expect("a leader's lessor has a tenure");
                        t.floors.insert(id, now + ttl as u64 * 1000);
                        self.summary.keepalives_acked += 1;
                        digest(&mut self.summary.trace_digest, 0x6b61 ^ (id as u64) << 16 ^ target);
                        break;
                    }
                    Err(keel_core::lease::LeaseError::NotLeader) => {
                        let leader = n.node.leader();
                        if leader == 0 || !self.connected(target, leader) {
                            break;
                        }
                        target = leader;
                    }
                    Err(_) => {
                        // Not found (revoked, expired) or expired with its revoke pending.
                        gone.push(id);
                        break;
                    }
                }
            }
        }
        self.leases.retain(|l| !gone.contains(&l.id));
    }

    /// Watchers: reconnect (resuming from the revision after the last one seen) when their
    /// member went away, read their streams (some slowly), sometimes ask for progress or move to
    /// another member.
    fn drive_watchers(&mut self, faults: bool) {
        for w in 0..self.watchers.len() {
            if let Some(a) = &self.watchers[w].active {
                let alive =
                    matches!(self.nodes.get(&a.node), Some(Some(n)) if n.incarnation == a.incarnation);
                if !alive {
                    self.drain_watch(w);
                    self.watchers[w].active = None;
                }
            }
            let Some(a) = &self.watchers[w].active else {
                let up = self.up_nodes();
                if !up.is_empty() && (!faults || self.now >= self.watchers[w].away_until) {
                    let node = up[self.work_rng.random_range(0..up.len())];
                    self.open_watch(w, node);
                }
                continue;
            };
            let (node, stream) = (a.node, a.stream);
            if !faults || self.work_rng.random_range(0..100) < self.workload.watch_read_pct {
                self.drain_watch(w);
            }
            if faults && self.work_rng.random_range(0..1000) < 3 {
                // The client moves to another member (a reconnect), resuming where it was; some
                // go away for a while first.
                self.drain_watch(w);
                if let Some(Some(n)) = self.nodes.get_mut(&node) {
                    n.hub.close_stream(stream);
                }
                self.watchers[w].active = None;
                if self.work_rng.random_bool(0.3) {
                    self.watchers[w].away_until = self.now + self.work_rng.random_range(0..600);
                }
            } else if self.work_rng.random_range(0..100) < 2 && !self.paused(node) {
                if let Some(Some(n)) = self.nodes.get_mut(&node) {
                    let rev = n.sm.store.revision();
                    n.hub.progress(stream, header(rev));
                }
            }
        }
    }

    fn open_watch(&mut self, w: usize, node: u64) {
        let wc = &self.watchers[w];
        let start = wc.resume_from;
        let spec = WatchSpec {
            key: wc.key.clone(),
            range_end: wc.range_end.clone(),
            start_revision: start,
            prev_kv: wc.prev_kv,
            progress_notify: true,
            ..Default::default()
        };
        let session = WatchSession {
            node,
            key: wc.key.clone(),
            range_end: wc.range_end.clone(),
            prev_kv: wc.prev_kv,
            start,
            items: Vec::new(),
        };
        if wc.opened > 0 && start > 0 {
            self.summary.watches_resumed += 1;
        }
        self.watchers[w].opened += 1;
        let n = self.nodes.get_mut(&node).unwrap().as_mut().unwrap();
        let (stream, rx) = n.hub.open_stream();
        n.hub.create(stream, 0, spec, &n.sm.store, header(n.sm.store.revision()));
        let incarnation = n.incarnation;
        self.watchers[w].active =
            Some(ActiveWatch { session: self.sessions.len(), node, incarnation, stream, rx });
        self.sessions.push(session);
        digest(&mut self.summary.trace_digest, 0x3a7c ^ node << 8 ^ (start as u64) << 16);
    }

    /// Reads everything queued on the watcher's stream.
    fn drain_watch(&mut self, w: usize) {
        let wc = &mut self.watchers[w];
        let Some(a) = wc.active.as_mut() else { return };
        let session = &mut self.sessions[a.session];
        let mut canceled = false;
        while let Ok(u) = a.rx.try_recv() {
            let item = match u {
                WatchUpdate::Created { header, .. } => {
                    if session.start == 0 {
                        wc.resume_from = wc.resume_from.max(header.revision + 1);
                    }
                    WatchItem::Created(header.revision)
                }
                WatchUpdate::Events { header, events, .. } => {
                    let last = events.last().map_or(header.revision, |e| e.kv.as_ref().unwrap().mod_revision);
                    wc.resume_from = wc.resume_from.max(last + 1);
                    WatchItem::Events(header.revision, events)
                }
                WatchUpdate::Progress { header } => {
                    wc.resume_from = wc.resume_from.max(header.revision + 1);
                    WatchItem::Progress(header.revision)
                }
                WatchUpdate::Canceled { compact_revision, reason, .. } => {
                    canceled = true;
                    WatchItem::Canceled { compact_revision, reason }
                }
            };
            digest(&mut self.summary.trace_digest, 0x3a7d ^ session.items.len() as u64);
            session.items.push(item);
            if canceled {
                break;
            }
        }
        if canceled {
            // Compacted away: the client closes the stream and starts over from now (after a
            // fresh read, in real life).
            let (node, stream) = (a.node, a.stream);
            wc.resume_from = 0;
            wc.active = None;
            self.summary.watches_compacted += 1;
            if let Some(Some(n)) = self.nodes.get_mut(&node) {
                n.hub.close_stream(stream);
            }
        }
    }

    /// After the run: every watcher reads what its member owes it; the committed log is replayed
    /// over the model; every reply, store and watch stream is checked against it.
    fn check_workloads(&mut self) {
        for _ in 0..20 {
            for id in self.nodes.keys().copied().collect::<Vec<_>>() {
                if let Some(Some(n)) = self.nodes.get_mut(&id) {
                    let rev = n.sm.store.revision();
                    n.hub.catch_up(&n.sm.store, header(rev));
                }
            }
            for w in 0..self.watchers.len() {
                self.drain_watch(w);
            }
        }
        let mut model = Model::new();
        // Every index from 1 on was applied by some member (the first to apply it recorded it).
        for (expected, (index, (_, entry_type, data))) in (1..).zip(&self.applied) {
            assert_eq!(*index, expected, "SIM_SEED={}: no member applied entry {expected}", self.seed);
            if *entry_type == EntryType::EntryNormal as i32 {
                model.apply(data);
            }
        }
        let mut checked = Checked::default();
        check_kv_ops(self.seed, &model, &self.kv_ops, &mut checked);
        let last_index = self.applied.keys().next_back().copied().unwrap_or(0);
        for (id, n) in &self.nodes {
            let Some(n) = n else { continue };
            check_store(self.seed, *id, &model, &n.sm.store);
            if n.sm.applied_index() == last_index {
                // Every member that applied the whole log holds the model's leases and keys.
                let got: BTreeMap<i64, BTreeSet<Bytes>> =
                    n.sm.lessor
                        .leases()
                        .into_iter()
                        .map(|l| {
                            let keys = n.sm.lessor.time_to_live(l, 0).expect("a listed lease").keys;
                            (l, keys.into_iter().collect())
                        })
                        .collect();
                assert_eq!(
                    &got,
                    model.leases(),
                    "SIM_SEED={}: node {id}'s leases differ from the model's",
                    self.seed
                );
            }
        }
        for w in &self.watchers {
            let Some(a) = &w.active else { continue };
            let s = &self.sessions[a.session];
            let next = check_watch(self.seed, &model, s, &mut checked);
            // Everything the member has applied is owed to a watcher that kept reading.
            let Some(Some(n)) = self.nodes.get(&a.node) else { continue };
            let owed = model.event_revisions(next, n.sm.store.revision(), &s.key, &s.range_end);
            assert!(
                owed.is_empty(),
                "SIM_SEED={}: a watcher on node {} never received revisions {owed:?}",
                self.seed,
                a.node
            );
        }
        let active: BTreeSet<usize> =
            self.watchers.iter().filter_map(|w| w.active.as_ref().map(|a| a.session)).collect();
        for (i, s) in self.sessions.iter().enumerate() {
            if !active.contains(&i) {
                check_watch(self.seed, &model, s, &mut checked);
            }
        }
        for (id, outcome) in &model.outcomes {
            match outcome {
                crate::model::Outcome::LeaseGrant => self.summary.leases_granted += 1,
                crate::model::Outcome::LeaseRevoke { .. } if self.expiry_revokes.contains(id) => {
                    self.summary.leases_expired += 1
                }
                crate::model::Outcome::LeaseRevoke { .. } => self.summary.leases_revoked += 1,
                _ => {}
            }
        }
        self.summary.txns_ok = checked.txns_ok;
        self.summary.ranges_ok = checked.reads_ok;
        self.summary.watch_events_checked = checked.watch_events;
    }
}
