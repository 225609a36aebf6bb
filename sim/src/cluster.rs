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

use jepsen::checker::{check, CheckOptions, Operation, Register, RegisterInput, RegisterOutput, Verdict};
use keel_core::pb::etcdserverpb::{
    compare, request_op, Compare, Member, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_core::pb::keelpb::request::Op;
use keel_core::pb::keelpb::{ConfChange, ConfChangeType, MessageType, Request};
use keel_core::raft::{Config, Message, StateRole};
use keel_core::state_machine::{Applied, WriteResponse};
use prost::Message as _;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use runtime::backend::{Dir as _, SimBackend, SimDisk};
use runtime::ready::{handle_ready, maybe_checkpoint};
use runtime::recover::{recover, Identity, Recovered};
use runtime::wal::WalOptions;
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
}

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
    applied: BTreeMap<u64, (u64, Vec<u8>)>,
    pub summary: ClusterSummary,
    seed: u64,
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
            summary: ClusterSummary { trace_digest: 0xcbf29ce484222325, ..Default::default() },
            seed,
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

    fn start(&mut self, id: u64) {
        let disk = self.disks.remove(&id).expect("a disk");
        let mut cfg = Config::new(id, self.rng.random());
        cfg.election_ticks = 10;
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
            }),
        );
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
        for _ in 0..16 {
            let Some(Some(n)) = self.nodes.get_mut(&id) else { return };
            if !n.node.has_ready() {
                break;
            }
            let mut out = Vec::new();
            let outcome =
                handle_ready(&mut n.node, &mut n.storage, &mut n.sm, self.now, &mut |m| out.push(m))
                    .unwrap_or_else(|e| panic!("seed {}: storage of node {id} failed: {e}", self.seed));
            let (term, role) = (n.node.term(), n.node.role());
            let mut finished = Vec::new();
            let mut joined = Vec::new();
            let mut left = Vec::new();
            if outcome.installed.is_some() {
                self.summary.snapshots_installed += 1;
                // Writes proposed here may have been applied inside the snapshot, unseen: their
                // outcome is unknown.
                finished.extend(n.writes.drain().map(|(_, (client, op))| (client, op, None)));
            }
            for (index, effect) in &outcome.applied {
                let entry = n.node.entries(*index, index + 1);
                if let Some(e) = entry.first() {
                    let prev = self.applied.entry(*index).or_insert((e.term, e.data.to_vec()));
                    assert_eq!(
                        *prev,
                        (e.term, e.data.to_vec()),
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
                if let Applied::Write { request_id, result, .. } = effect {
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
            }
            let applied = n.sm.applied_index();
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
                if let Some(Some(n)) = self.nodes.get_mut(&id) {
                    n.node.tick();
                }
            }
        }
        self.deliver_due();
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
                if let Some(Some(n)) = self.nodes.get_mut(&id) {
                    for _ in 0..ticks {
                        n.node.tick();
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
