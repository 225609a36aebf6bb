//! The Raft protocol (Ongaro & Ousterhout, "In Search of an Understandable Consensus
//! Algorithm", and Ongaro's thesis for pre-vote, check-quorum, ReadIndex, leadership transfer
//! and single-server membership changes).

use super::errors::{ProposeError, StorageError};
use super::log::{payload_size, snap_index, snap_term, RaftLog};
use super::progress::{Progress, ProgressState};
use super::raw_node::ReadState;
use super::read_only::{read_ctx, ReadOnly};
use super::storage::Storage;
use crate::pb::keelpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot,
};
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

/// Marks a vote request sent on a leader's behalf (leadership transfer): it may break the
/// voters' leader lease.
const CAMPAIGN_TRANSFER: &[u8] = b"CampaignTransfer";

/// The highest term a peer's message may carry. Honest terms grow by one per election and never
/// come near it, so refusing more keeps this node's own `term + 1` from ever overflowing: a
/// forged term of `u64::MAX` would otherwise stop every election for good.
pub const TERM_MAX: u64 = 1 << 62;

/// Likewise the highest log index a peer's message may name: `index + 1` never overflows.
pub const INDEX_MAX: u64 = 1 << 62;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateRole {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Static configuration of one Raft node. Time is in ticks: the driver decides how long one is.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: u64,
    /// A follower that hears from no leader for a random time in
    /// `[election_ticks, 2 * election_ticks)` campaigns.
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    /// Seed of the node's PRNG, the core's only source of randomness.
    pub seed: u64,
    /// Campaign only after a pre-vote round shows a quorum would vote (§9.6): a partitioned
    /// node rejoining does not disrupt the cluster with its inflated term.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down, and
    /// voters that hear from a leader ignore vote requests for that long (§6.2, §9.6).
    pub check_quorum: bool,
    /// Bound on the bytes of proposed but uncommitted entries; proposals past it are dropped.
    pub uncommitted_bytes_max: u64,
    /// Bound on the bytes of entries in one append message (at least one entry is sent).
    pub msg_bytes_max: u64,
    /// Bound on appends in flight to one follower (the pipeline window), in count and bytes.
    pub inflight_msgs_max: usize,
    pub inflight_bytes_max: u64,
    /// Bound on the bytes of committed entries handed out in one `Ready`.
    pub apply_bytes_max: u64,
    /// Index the application has already applied (from its own durable state).
    pub applied: u64,
    /// Followers drop proposals instead of forwarding them to the leader.
    pub disable_proposal_forwarding: bool,
    /// Whether a proposal forwarded by a peer holds what the state machine can apply; one that
    /// does not is refused before it reaches the log. Raft does not know what entries mean, so
    /// the driver says (Keel's: [`crate::state_machine::entry_decodes`]); `None` takes any.
    pub proposal_check: Option<fn(&Entry) -> bool>,
    /// Likewise for a peer's snapshot: whether its data is the state its metadata names (Keel's:
    /// [`crate::state_machine::snapshot_matches`]); `None` takes any.
    pub snapshot_check: Option<fn(&Snapshot) -> bool>,
}

impl Config {
    pub fn new(id: u64, seed: u64) -> Self {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            seed,
            pre_vote: true,
            check_quorum: true,
            uncommitted_bytes_max: 64 << 20,
            msg_bytes_max: 1 << 20,
            inflight_msgs_max: 256,
            inflight_bytes_max: 32 << 20,
            apply_bytes_max: 16 << 20,
            applied: 0,
            disable_proposal_forwarding: false,
            proposal_check: None,
            snapshot_check: None,
        }
    }

    pub fn validate(&self) {
        assert!(self.id != 0, "node id 0 is reserved for 'none'");
        assert!(self.heartbeat_ticks > 0, "heartbeat_ticks must be positive");
        assert!(self.election_ticks > self.heartbeat_ticks, "election_ticks must exceed heartbeat_ticks");
        assert!(self.inflight_msgs_max > 0, "inflight_msgs_max must be positive");
        assert!(self.msg_bytes_max > 0, "msg_bytes_max must be positive");
    }
}

#[derive(Debug, PartialEq, Eq)]
enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// The protocol state of one node.
///
/// Invariants: a leader's `lead == id`; `prs` holds exactly `voters ∪ learners`; a leader's own
/// progress `matched` is its durable last index.
pub(crate) struct Raft<S: Storage> {
    pub(crate) id: u64,
    pub(crate) term: u64,
    pub(crate) vote: u64,
    pub(crate) lead: u64,
    pub(crate) role: StateRole,
    pub(crate) log: RaftLog<S>,
    pub(crate) prs: BTreeMap<u64, Progress>,
    pub(crate) voters: BTreeSet<u64>,
    pub(crate) learners: BTreeSet<u64>,
    votes: BTreeMap<u64, bool>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_ticks: u32,
    cfg: Config,
    rng: SmallRng,
    uncommitted_bytes: u64,
    /// Index of the last configuration change appended; a new one waits until it is applied.
    pending_conf_index: u64,
    pub(crate) lead_transferee: Option<u64>,
    read_only: ReadOnly,
    /// Proposals appended since the last `Ready`: they go out together, one append per follower
    /// for the whole batch, when the driver asks for the next `Ready`.
    pub(crate) pending_bcast: bool,
    /// ReadIndex requests that arrived before this leader committed an entry of its term.
    pending_read_index: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    /// Messages that may be sent before this Ready's persistence.
    pub(crate) msgs: Vec<Message>,
    /// Messages that must wait until this Ready's hard state and entries are durable.
    pub(crate) msgs_after_persist: Vec<Message>,
}

impl<S: Storage> Raft<S> {
    pub(crate) fn new(cfg: &Config, store: S) -> Self {
        cfg.validate();
        let (hs, cs) = store.initial_state();
        let log = RaftLog::new(store, hs.commit, cfg.applied);
        let mut r = Raft {
            id: cfg.id,
            term: hs.term,
            vote: hs.vote,
            lead: 0,
            role: StateRole::Follower,
            log,
            prs: BTreeMap::new(),
            voters: BTreeSet::new(),
            learners: BTreeSet::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: 0,
            cfg: cfg.clone(),
            rng: SmallRng::seed_from_u64(cfg.seed),
            uncommitted_bytes: 0,
            pending_conf_index: 0,
            lead_transferee: None,
            read_only: ReadOnly::default(),
            pending_bcast: false,
            pending_read_index: Vec::new(),
            read_states: Vec::new(),
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
        };
        r.apply_conf_state(&cs);
        r.become_follower(r.term, 0);
        r
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    pub(crate) fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
        }
    }

    fn apply_conf_state(&mut self, cs: &ConfState) {
        self.voters = cs.voters.iter().copied().collect();
        self.learners = cs.learners.iter().copied().collect();
        let next = self.log.last_index() + 1;
        self.prs.clear();
        for &id in self.voters.iter().chain(self.learners.iter()) {
            let mut pr = Progress::new(next, self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
            pr.is_learner = self.learners.contains(&id);
            self.prs.insert(id, pr);
        }
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whether this node may campaign: it is a voter and not waiting to install a snapshot.
    fn promotable(&self) -> bool {
        self.voters.contains(&self.id) && self.log.unstable.snapshot.is_none()
    }

    // ----- sending -----

    fn send(&mut self, mut m: Message) {
        m.from = self.id;
        let t = MessageType::try_from(m.msg_type).expect("own message type");
        if matches!(
            t,
            MessageType::MsgVote
                | MessageType::MsgPreVote
                | MessageType::MsgVoteResp
                | MessageType::MsgPreVoteResp
        ) {
            assert!(m.term != 0, "vote messages carry their term explicitly");
        } else if t != MessageType::MsgProp && t != MessageType::MsgReadIndex {
            // Forwarded proposals and reads carry no term: they are not part of the protocol.
            m.term = self.term;
        }
        // What a leader sends depends only on state that is durable already (its term was
        // persisted before it asked for votes), so it may go out while this Ready's entries are
        // written. Everything else — votes, acknowledgements of our log — waits for persistence.
        let leader_msg = matches!(
            t,
            MessageType::MsgApp
                | MessageType::MsgHeartbeat
                | MessageType::MsgSnap
                | MessageType::MsgTimeoutNow
                | MessageType::MsgReadIndexResp
        );
        if leader_msg && self.role == StateRole::Leader
            || matches!(t, MessageType::MsgProp | MessageType::MsgReadIndex)
        {
            self.msgs.push(m);
        } else {
            self.msgs_after_persist.push(m);
        }
    }

    fn msg(t: MessageType, to: u64) -> Message {
        Message { msg_type: t as i32, to, ..Default::default() }
    }

    /// Sends an append (or a snapshot if the follower needs entries we no longer hold) to `to`.
    /// Returns whether a message went out.
    fn maybe_send_append(&mut self, to: u64, send_if_empty: bool) -> bool {
        let pr = &self.prs[&to];
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let prev_index = next - 1;
        let prev_term = self.log.term(prev_index);
        let ents = self.log.entries_from(next, self.cfg.msg_bytes_max);
        let (prev_term, ents) = match (prev_term, ents) {
            (Ok(t), Ok(e)) => (t, e),
            _ => return self.send_snapshot(to),
        };
        if ents.is_empty() && !send_if_empty {
            return false;
        }
        let (count, last, bytes) =
            (ents.len(), ents.last().map_or(prev_index, |e| e.index), payload_size(&ents));
        let commit = self.log.committed;
        self.send(Message {
            msg_type: MessageType::MsgApp as i32,
            to,
            index: prev_index,
            log_term: prev_term,
            entries: ents,
            commit,
            ..Default::default()
        });
        self.prs.get_mut(&to).expect("progress").sent_entries(count, last, bytes);
        true
    }

    fn send_snapshot(&mut self, to: u64) -> bool {
        if !self.prs[&to].recent_active {
            return false;
        }
        let snapshot = match self.log.snapshot() {
            Ok(s) => s,
            Err(StorageError::SnapshotTemporarilyUnavailable) => return false,
            Err(e) => panic!("leader cannot read its snapshot: {e}"),
        };
        let index = snap_index(&snapshot);
        assert!(index > 0, "a follower needs a snapshot but the leader has none");
        self.prs.get_mut(&to).expect("progress").become_snapshot(index);
        self.send(Message {
            msg_type: MessageType::MsgSnap as i32,
            to,
            snapshot: Some(snapshot),
            ..Default::default()
        });
        true
    }

    fn bcast_append(&mut self) {
        let peers: Vec<u64> = self.prs.keys().copied().filter(|&id| id != self.id).collect();
        for id in peers {
            self.maybe_send_append(id, true);
        }
    }

    fn bcast_heartbeat(&mut self, ctx: Option<Bytes>) {
        let peers: Vec<u64> = self.prs.keys().copied().filter(|&id| id != self.id).collect();
        for id in peers {
            // Never tell a follower to commit beyond what it is known to hold.
            let commit = self.prs[&id].matched.min(self.log.committed);
            self.send(Message {
                msg_type: MessageType::MsgHeartbeat as i32,
                to: id,
                commit,
                context: ctx.clone().unwrap_or_default(),
                ..Default::default()
            });
        }
    }

    // ----- role changes -----

    fn reset_randomized_election_timeout(&mut self) {
        let lo = self.cfg.election_ticks;
        self.randomized_election_ticks = self.rng.random_range(lo..2 * lo);
    }

    fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = 0;
        }
        self.lead = 0;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.lead_transferee = None;
        self.votes.clear();
        let last = self.log.last_index();
        let stable = self.log.stable_last_index();
        let id = self.id;
        for (&pid, pr) in self.prs.iter_mut() {
            let learner = pr.is_learner;
            *pr = Progress::new(last + 1, self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
            pr.is_learner = learner;
            if pid == id {
                pr.matched = stable;
                pr.recent_active = true;
            }
        }
        self.pending_conf_index = 0;
        self.uncommitted_bytes = 0;
        self.read_only = ReadOnly::default();
        self.pending_read_index.clear();
    }

    pub(crate) fn become_follower(&mut self, term: u64, lead: u64) {
        self.reset(term);
        self.lead = lead;
        self.role = StateRole::Follower;
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(self.role, StateRole::Leader, "a leader cannot become a pre-candidate");
        // Neither the term nor the vote changes: a pre-vote round records nothing.
        self.votes.clear();
        self.lead = 0;
        self.role = StateRole::PreCandidate;
    }

    fn become_candidate(&mut self) {
        assert_ne!(self.role, StateRole::Leader, "a leader cannot become a candidate");
        self.reset(self.term + 1);
        self.vote = self.id;
        self.role = StateRole::Candidate;
    }

    fn become_leader(&mut self) {
        assert_ne!(self.role, StateRole::Follower, "a follower must campaign before it leads");
        let term = self.term;
        self.reset(term);
        self.lead = self.id;
        self.role = StateRole::Leader;
        if let Some(pr) = self.prs.get_mut(&self.id) {
            pr.become_replicate();
        }
        // Conservatively treat any unapplied entry as a possible configuration change.
        self.pending_conf_index = self.log.last_index();
        // An empty entry of the new term: committing it commits everything before it (§5.4.2)
        // and lets ReadIndex serve reads (§6.4).
        let index = self.log.last_index() + 1;
        self.log.append(&[Entry {
            term,
            index,
            entry_type: EntryType::EntryNormal as i32,
            data: Bytes::new(),
        }]);
    }

    fn poll(&mut self, id: u64, granted: bool) -> VoteResult {
        self.votes.entry(id).or_insert(granted);
        let yes = self.voters.iter().filter(|v| self.votes.get(v) == Some(&true)).count();
        let no = self.voters.iter().filter(|v| self.votes.get(v) == Some(&false)).count();
        if yes >= self.quorum() {
            VoteResult::Won
        } else if no >= self.quorum() || self.voters.len() - no < self.quorum() {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    fn campaign(&mut self, pre: bool, transfer: bool) {
        if !self.promotable() || self.term >= TERM_MAX {
            // A term this high comes only from a data directory written before peers' terms
            // were bounded: no election can follow it, but nothing overflows either.
            return;
        }
        let (vote_type, term) = if pre {
            self.become_pre_candidate();
            (MessageType::MsgPreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageType::MsgVote, self.term)
        };
        if self.poll(self.id, true) == VoteResult::Won {
            // A sole voter wins at once.
            if pre {
                self.campaign(false, transfer);
            } else {
                self.become_leader();
            }
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<u64> = self.voters.iter().copied().filter(|&v| v != self.id).collect();
        for to in voters {
            self.send(Message {
                msg_type: vote_type as i32,
                to,
                term,
                index: last_index,
                log_term: last_term,
                context: if transfer { Bytes::from_static(CAMPAIGN_TRANSFER) } else { Bytes::new() },
                ..Default::default()
            });
        }
    }

    fn hup(&mut self, transfer: bool) {
        if self.role == StateRole::Leader || !self.promotable() {
            return;
        }
        // A node with a committed but unapplied configuration change must not campaign under a
        // configuration that may no longer hold.
        if self.has_unapplied_conf_change() {
            return;
        }
        self.campaign(self.cfg.pre_vote && !transfer, transfer);
    }

    fn has_unapplied_conf_change(&self) -> bool {
        if self.log.applied >= self.log.committed {
            return false;
        }
        let lo = self.log.applied.max(self.log.first_index() - 1) + 1;
        match self.log.slice(lo, self.log.committed + 1, u64::MAX) {
            Ok(ents) => ents.iter().any(|e| e.entry_type == EntryType::EntryConfChange as i32),
            Err(_) => false,
        }
    }

    // ----- ticks -----

    pub(crate) fn tick(&mut self) {
        match self.role {
            StateRole::Leader => self.tick_heartbeat(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        // A sole voter cannot conflict with anyone, so it need not wait out a timeout.
        let sole = self.voters.len() == 1 && self.voters.contains(&self.id);
        if self.promotable() && (self.election_elapsed >= self.randomized_election_ticks || sole) {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                self.check_quorum();
            }
            if self.role == StateRole::Leader && self.lead_transferee.is_some() {
                // The transfer did not finish within an election timeout: give it up.
                self.lead_transferee = None;
            }
        }
        if self.role != StateRole::Leader {
            return;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat(self.read_only.last_pending_ctx());
        }
    }

    fn check_quorum(&mut self) {
        let active = self.voters.iter().filter(|v| **v == self.id || self.prs[v].recent_active).count();
        for (&id, pr) in self.prs.iter_mut() {
            if id != self.id {
                pr.recent_active = false;
            }
        }
        if active < self.quorum() {
            self.become_follower(self.term, 0);
        }
    }

    // ----- stepping -----

    /// Whether a message from the network may reach [`Raft::step`]: everything from outside is
    /// checked here, so the protocol's arithmetic and assertions hold for what it is given.
    /// Refused: local message types, messages for another node or from none, senders outside
    /// this node's configuration (unless it has none yet: a member joining a cluster learns it
    /// from its first leader; and for a leader's traffic and vote requests while this node has
    /// no leader, see below), terms past [`TERM_MAX`], protocol messages without a term,
    /// appends whose entries are not the contiguous, term-ordered run after their `index`,
    /// snapshots without metadata, and acknowledgements past the end of this leader's log.
    pub(crate) fn check_remote(&self, m: &Message) -> Result<(), &'static str> {
        use MessageType::*;
        let t = MessageType::try_from(m.msg_type).map_err(|_| "unknown message type")?;
        if matches!(t, MsgHup | MsgBeat | MsgCheckQuorum | MsgSnapStatus | MsgUnreachable | MsgTransferLeader)
        {
            return Err("local message type");
        }
        if m.to != self.id {
            return Err("message for another node");
        }
        if m.from == 0 || m.from == self.id {
            return Err("message without a sender");
        }
        let configured = !self.voters.is_empty() || !self.learners.is_empty();
        if configured && !self.voters.contains(&m.from) && !self.learners.contains(&m.from) {
            // A leader's traffic is the one exception, and only while this node has heard from
            // no leader for an election timeout: a member that missed the change adding its
            // leader learns of that change only from that leader's log, and a member catching
            // up replays configurations older than its leader (the simulator finds such members
            // stuck for good without this). Without peer TLS this leaves forged
            // leader traffic from a non-member a window while there is no leader; with a
            // healthy leader, a non-member's heartbeat cannot unseat it.
            // The leader this node already follows stays accepted while it replays a history
            // whose configurations predate that leader.
            // Likewise a candidate's vote request while there is no leader: the candidate may be
            // a member this node has not learned of, and the cluster may need this vote.
            let leader_traffic = matches!(t, MsgApp | MsgHeartbeat | MsgSnap);
            let campaign = matches!(t, MsgVote | MsgPreVote);
            let leaderless = self.lead == 0 || self.election_elapsed >= self.cfg.election_ticks;
            let from_leader = leader_traffic && m.from == self.lead;
            if !(from_leader || (leader_traffic || campaign) && leaderless) {
                return Err("sender not in this node's configuration");
            }
        }
        if m.term > TERM_MAX {
            return Err("term out of range");
        }
        let last_entry = m.index.checked_add(m.entries.len() as u64);
        if last_entry.is_none_or(|i| i > INDEX_MAX) || m.commit > INDEX_MAX || m.reject_hint > INDEX_MAX {
            return Err("index out of range");
        }
        // Forwarded proposals and reads carry no term (they are not part of the protocol); one
        // with a term would move this node's term before being refused (found by the
        // `peer_batch` fuzzer).
        let termless = matches!(t, MsgProp | MsgReadIndex);
        if m.term == 0 && !termless {
            return Err("protocol message without a term");
        }
        if m.term != 0 && termless {
            return Err("forwarded proposal or read with a term");
        }
        if m.entries.iter().any(|e| EntryType::try_from(e.entry_type).is_err()) {
            return Err("entry of unknown type");
        }
        match t {
            MsgProp if m.entries.is_empty() => return Err("proposal without entries"),
            // Nothing reaches the log that the state machine cannot decode: a forwarded
            // proposal is a member's own encoding of a request it decoded, so this refuses only
            // what was forged or damaged on the way.
            MsgProp if self.cfg.proposal_check.is_some_and(|ok| !m.entries.iter().all(ok)) => {
                return Err("proposal that does not decode")
            }
            MsgApp => {
                if m.log_term > m.term {
                    return Err("append after an entry of a later term");
                }
                let mut prev_term = m.log_term;
                for (i, e) in m.entries.iter().enumerate() {
                    if m.index.checked_add(1 + i as u64) != Some(e.index) {
                        return Err("append entries not contiguous after its index");
                    }
                    if e.term < prev_term || e.term > m.term {
                        return Err("append entries out of term order");
                    }
                    prev_term = e.term;
                }
            }
            MsgSnap => {
                let meta = m
                    .snapshot
                    .as_ref()
                    .and_then(|s| s.metadata.as_ref())
                    .ok_or("snapshot without metadata")?;
                if meta.index == 0 || meta.index > INDEX_MAX || meta.term == 0 || meta.term > m.term {
                    return Err("snapshot metadata out of range");
                }
                let snap = m.snapshot.as_ref().expect("checked above");
                if self.cfg.snapshot_check.is_some_and(|ok| !ok(snap)) {
                    return Err("snapshot data is not the state its metadata names");
                }
            }
            MsgAppResp => {
                let last = self.log.last_index();
                if m.index > last || m.reject_hint > last {
                    return Err("acknowledgement past the end of the log");
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn step(&mut self, m: Message) -> Result<(), ProposeError> {
        let t = MessageType::try_from(m.msg_type).unwrap_or(MessageType::MsgHup);
        if m.term > self.term && m.term != 0 {
            if matches!(t, MessageType::MsgVote | MessageType::MsgPreVote) {
                let force = m.context == CAMPAIGN_TRANSFER;
                let in_lease = self.cfg.check_quorum
                    && self.lead != 0
                    && self.election_elapsed < self.cfg.election_ticks;
                if !force && in_lease {
                    // We heard from a leader within an election timeout: this candidate is
                    // probably partitioned; ignoring it keeps it from disrupting the cluster.
                    return Ok(());
                }
            }
            let keep_term = t == MessageType::MsgPreVote || (t == MessageType::MsgPreVoteResp && !m.reject);
            if !keep_term {
                let lead =
                    if matches!(t, MessageType::MsgApp | MessageType::MsgHeartbeat | MessageType::MsgSnap) {
                        m.from
                    } else {
                        0
                    };
                self.become_follower(m.term, lead);
            }
        } else if m.term < self.term && m.term != 0 {
            if (self.cfg.check_quorum || self.cfg.pre_vote)
                && matches!(t, MessageType::MsgHeartbeat | MessageType::MsgApp)
            {
                // A stale leader: tell it our term so it steps down (with check-quorum or
                // pre-vote it would otherwise never learn of it).
                self.send(Self::msg(MessageType::MsgAppResp, m.from));
            } else if t == MessageType::MsgPreVote {
                let term = self.term;
                self.send(Message { term, reject: true, ..Self::msg(MessageType::MsgPreVoteResp, m.from) });
            }
            return Ok(());
        }
        match t {
            MessageType::MsgHup => {
                self.hup(false);
                Ok(())
            }
            MessageType::MsgVote | MessageType::MsgPreVote => {
                self.handle_vote_request(m, t);
                Ok(())
            }
            _ => match self.role {
                StateRole::Leader => self.step_leader(m, t),
                StateRole::Candidate | StateRole::PreCandidate => self.step_candidate(m, t),
                StateRole::Follower => self.step_follower(m, t),
            },
        }
    }

    fn handle_vote_request(&mut self, m: Message, t: MessageType) {
        let resp =
            if t == MessageType::MsgVote { MessageType::MsgVoteResp } else { MessageType::MsgPreVoteResp };
        // We may vote if we already voted for this candidate, or have voted for no one and know
        // of no leader in this term; a pre-vote for a later term is always considered.
        let can_vote = self.vote == m.from
            || (self.vote == 0 && self.lead == 0)
            || (t == MessageType::MsgPreVote && m.term > self.term);
        if can_vote && self.log.is_up_to_date(m.index, m.log_term) {
            self.send(Message { term: m.term, ..Self::msg(resp, m.from) });
            if t == MessageType::MsgVote {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
        } else {
            let term = self.term;
            self.send(Message { term, reject: true, ..Self::msg(resp, m.from) });
        }
    }

    fn step_leader(&mut self, m: Message, t: MessageType) -> Result<(), ProposeError> {
        match t {
            MessageType::MsgBeat => {
                self.bcast_heartbeat(self.read_only.last_pending_ctx());
                Ok(())
            }
            MessageType::MsgCheckQuorum => {
                self.check_quorum();
                Ok(())
            }
            MessageType::MsgProp => self.leader_propose(m),
            MessageType::MsgReadIndex => {
                self.leader_read_index(m);
                Ok(())
            }
            MessageType::MsgTransferLeader => {
                self.leader_transfer(m.from);
                Ok(())
            }
            _ => {
                if !self.prs.contains_key(&m.from) {
                    return Ok(()); // From a node no longer in the configuration.
                }
                match t {
                    MessageType::MsgAppResp => self.handle_append_response(&m),
                    MessageType::MsgHeartbeatResp => self.handle_heartbeat_response(&m),
                    MessageType::MsgSnapStatus => {
                        let pr = self.prs.get_mut(&m.from).expect("progress");
                        if pr.state == ProgressState::Snapshot {
                            if m.reject {
                                pr.pending_snapshot = 0;
                            }
                            pr.become_probe();
                            // Wait for the follower's answer (or a heartbeat's) before probing.
                            pr.probe_sent = true;
                        }
                    }
                    MessageType::MsgUnreachable => {
                        let pr = self.prs.get_mut(&m.from).expect("progress");
                        if pr.state == ProgressState::Replicate {
                            pr.become_probe();
                        }
                    }
                    _ => {}
                }
                Ok(())
            }
        }
    }

    fn leader_propose(&mut self, mut m: Message) -> Result<(), ProposeError> {
        assert!(!m.entries.is_empty(), "a proposal carries entries");
        if !self.prs.contains_key(&self.id) {
            return Err(ProposeError::NotMember);
        }
        if self.lead_transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        for e in m.entries.iter_mut() {
            if e.entry_type != EntryType::EntryConfChange as i32 {
                continue;
            }
            // Single-server changes are safe only one at a time, and only once this leader has
            // committed an entry of its term (otherwise a leader of an older configuration could
            // still commit under it). A change that breaks either rule becomes a no-op entry.
            if self.pending_conf_index > self.log.applied || !self.committed_in_term() {
                *e = Entry { entry_type: EntryType::EntryNormal as i32, ..Default::default() };
            } else {
                self.pending_conf_index = self.log.last_index() + 1;
            }
        }
        self.append_entries(m.entries)?;
        self.pending_bcast = true;
        Ok(())
    }

    /// Sends the proposals appended since the last `Ready` (see `pending_bcast`).
    pub(crate) fn flush_proposals(&mut self) {
        if std::mem::take(&mut self.pending_bcast) && self.role == StateRole::Leader {
            self.bcast_append();
        }
    }

    fn append_entries(&mut self, mut ents: Vec<Entry>) -> Result<(), ProposeError> {
        let size = payload_size(&ents);
        // One batch is always accepted when nothing is outstanding, so a large entry cannot
        // wedge an idle leader.
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + size > self.cfg.uncommitted_bytes_max {
            return Err(ProposeError::UncommittedLimit);
        }
        let last = self.log.last_index();
        for (i, e) in ents.iter_mut().enumerate() {
            e.term = self.term;
            e.index = last + 1 + i as u64;
        }
        self.uncommitted_bytes += size;
        self.log.append(&ents);
        Ok(())
    }

    /// Whether this leader has committed an entry of its own term (§6.4, §4.1 fix).
    pub(crate) fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed).ok() == Some(self.term)
    }

    fn leader_read_index(&mut self, m: Message) {
        #[cfg(feature = "planted-bugs")]
        let sole = (self.voters.len() == 1 && self.voters.contains(&self.id))
            || crate::planted::active(crate::planted::READ_WITHOUT_QUORUM);
        #[cfg(not(feature = "planted-bugs"))]
        let sole = self.voters.len() == 1 && self.voters.contains(&self.id);
        #[cfg(feature = "planted-bugs")]
        let in_term = self.committed_in_term() || crate::planted::active(crate::planted::READ_WITHOUT_QUORUM);
        #[cfg(not(feature = "planted-bugs"))]
        let in_term = self.committed_in_term();
        if sole {
            if in_term {
                let index = self.log.committed;
                self.respond_read_index(m, index);
            } else {
                self.pending_read_index.push(m);
            }
            return;
        }
        if !self.committed_in_term() {
            self.pending_read_index.push(m);
            return;
        }
        let ctx = read_ctx(&m);
        self.read_only.add_request(self.log.committed, m);
        // Our own acknowledgement counts toward the quorum.
        self.read_only.recv_ack(self.id, &ctx);
        self.bcast_heartbeat(Some(ctx));
    }

    fn respond_read_index(&mut self, req: Message, index: u64) {
        if req.from == 0 || req.from == self.id {
            self.read_states.push(ReadState { index, request_ctx: read_ctx(&req) });
        } else {
            self.send(Message {
                index,
                entries: req.entries,
                ..Self::msg(MessageType::MsgReadIndexResp, req.from)
            });
        }
    }

    fn release_pending_read_index(&mut self) {
        if self.pending_read_index.is_empty() || !self.committed_in_term() {
            return;
        }
        for m in std::mem::take(&mut self.pending_read_index) {
            self.leader_read_index(m);
        }
    }

    fn leader_transfer(&mut self, transferee: u64) {
        if self.learners.contains(&transferee) || !self.prs.contains_key(&transferee) {
            return;
        }
        if let Some(current) = self.lead_transferee {
            if current == transferee {
                return;
            }
            self.lead_transferee = None;
        }
        if transferee == self.id {
            return;
        }
        // The transfer must finish within an election timeout.
        self.election_elapsed = 0;
        self.lead_transferee = Some(transferee);
        if self.prs[&transferee].matched == self.log.last_index() {
            self.send(Self::msg(MessageType::MsgTimeoutNow, transferee));
        } else {
            self.maybe_send_append(transferee, true);
        }
    }

    fn handle_append_response(&mut self, m: &Message) {
        let pr = self.prs.get_mut(&m.from).expect("progress");
        pr.recent_active = true;
        if m.reject {
            let mut hint = m.reject_hint;
            if m.log_term > 0 {
                // Skip every entry of ours in a term the follower's log cannot match.
                hint = self.log.find_conflict_by_term(m.reject_hint, m.log_term).0;
            }
            let pr = self.prs.get_mut(&m.from).expect("progress");
            if pr.maybe_decr_to(m.index, hint) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.maybe_send_append(m.from, true);
            }
            return;
        }
        let was_paused = pr.is_paused();
        // A probe answered at exactly the known match still proves the logs agree there.
        let probe_confirmed = pr.state == ProgressState::Probe && pr.matched == m.index;
        if !pr.maybe_update(m.index) && !probe_confirmed {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched + 1 >= self.log.first_index() => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Replicate => pr.inflights.free_le(m.index),
            ProgressState::Snapshot => {}
        }
        if self.maybe_commit() {
            self.bcast_append();
        } else if was_paused {
            self.maybe_send_append(m.from, true);
        }
        // Stream what else fits in the window.
        while self.maybe_send_append(m.from, false) {}
        if self.lead_transferee == Some(m.from) && self.prs[&m.from].matched == self.log.last_index() {
            self.send(Self::msg(MessageType::MsgTimeoutNow, m.from));
        }
    }

    fn handle_heartbeat_response(&mut self, m: &Message) {
        let last = self.log.last_index();
        let pr = self.prs.get_mut(&m.from).expect("progress");
        pr.recent_active = true;
        pr.probe_sent = false;
        // Appends can be lost; if the window stays full, free one slot per heartbeat round so
        // replication resumes (a gap then makes the follower reject, and probing finds the match).
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            pr.inflights.free_first();
        }
        if pr.matched < last {
            self.maybe_send_append(m.from, true);
        }
        if m.context.is_empty() {
            return;
        }
        let quorum = self.quorum();
        let voters = self.voters.clone();
        let confirmed = match self.read_only.recv_ack(m.from, &m.context) {
            Some(acks) => acks.iter().filter(|a| voters.contains(a)).count() >= quorum,
            None => false,
        };
        if confirmed {
            for status in self.read_only.advance(&m.context) {
                self.respond_read_index(status.req, status.index);
            }
        }
    }

    /// Advances the commit index to what a quorum of voters has durably (§5.3, §5.4.2).
    fn maybe_commit(&mut self) -> bool {
        let mut matched: Vec<u64> = self.voters.iter().map(|v| self.prs[v].matched).collect();
        if matched.is_empty() {
            return false;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let index = matched[self.quorum() - 1];
        let before = self.log.committed;
        if !self.log.maybe_commit(index, self.term) {
            return false;
        }
        if let Ok(ents) = self.log.slice(before + 1, self.log.committed + 1, u64::MAX) {
            self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(payload_size(&ents));
        }
        self.release_pending_read_index();
        true
    }

    fn step_candidate(&mut self, m: Message, t: MessageType) -> Result<(), ProposeError> {
        let my_resp = if self.role == StateRole::PreCandidate {
            MessageType::MsgPreVoteResp
        } else {
            MessageType::MsgVoteResp
        };
        match t {
            MessageType::MsgProp => return Err(ProposeError::NotLeader),
            MessageType::MsgReadIndex => return Err(ProposeError::NotLeader),
            MessageType::MsgApp => {
                self.become_follower(m.term, m.from);
                self.handle_append(m);
            }
            MessageType::MsgHeartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m);
            }
            MessageType::MsgSnap => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m);
            }
            _ if t == my_resp => match self.poll(m.from, !m.reject) {
                VoteResult::Won => {
                    if self.role == StateRole::PreCandidate {
                        self.campaign(false, false);
                    } else {
                        self.become_leader();
                        self.bcast_append();
                    }
                }
                VoteResult::Lost => self.become_follower(self.term, 0),
                VoteResult::Pending => {}
            },
            _ => {}
        }
        Ok(())
    }

    fn step_follower(&mut self, mut m: Message, t: MessageType) -> Result<(), ProposeError> {
        match t {
            MessageType::MsgProp => {
                if self.lead == 0 || self.cfg.disable_proposal_forwarding {
                    return Err(ProposeError::NotLeader);
                }
                m.to = self.lead;
                self.send(m);
            }
            MessageType::MsgApp => {
                self.election_elapsed = 0;
                self.lead = m.from;
                self.handle_append(m);
            }
            MessageType::MsgHeartbeat => {
                self.election_elapsed = 0;
                self.lead = m.from;
                self.handle_heartbeat(m);
            }
            MessageType::MsgSnap => {
                self.election_elapsed = 0;
                self.lead = m.from;
                self.handle_snapshot(m);
            }
            MessageType::MsgTransferLeader if self.lead != 0 => {
                // Forwarded as is: `from` names the transferee.
                m.to = self.lead;
                self.msgs.push(m);
            }
            // Only the leader we follow may hand leadership on.
            MessageType::MsgTimeoutNow if m.from == self.lead => self.hup(true),
            MessageType::MsgReadIndex => {
                if self.lead == 0 {
                    return Err(ProposeError::NotLeader);
                }
                m.to = self.lead;
                self.send(m);
            }
            // Only the leader's answer is a read point.
            MessageType::MsgReadIndexResp if m.from == self.lead => {
                self.read_states.push(ReadState { index: m.index, request_ctx: read_ctx(&m) });
            }
            _ => {}
        }
        Ok(())
    }

    fn handle_append(&mut self, m: Message) {
        if m.index < self.log.committed {
            let committed = self.log.committed;
            self.send(Message { index: committed, ..Self::msg(MessageType::MsgAppResp, m.from) });
            return;
        }
        match self.log.maybe_append(m.index, m.log_term, m.commit, &m.entries) {
            Some(last_new) => {
                self.send(Message { index: last_new, ..Self::msg(MessageType::MsgAppResp, m.from) })
            }
            None => {
                // Tell the leader where our log may match: the last index at or before its probe
                // whose term is not above the leader's there.
                let hint = m.index.min(self.log.last_index());
                let (hint, hint_term) = self.log.find_conflict_by_term(hint, m.log_term);
                self.send(Message {
                    index: m.index,
                    reject: true,
                    reject_hint: hint,
                    log_term: hint_term,
                    ..Self::msg(MessageType::MsgAppResp, m.from)
                });
            }
        }
    }

    fn handle_heartbeat(&mut self, m: Message) {
        self.log.commit_to(m.commit.min(self.log.last_index()));
        self.send(Message { context: m.context, ..Self::msg(MessageType::MsgHeartbeatResp, m.from) });
    }

    fn handle_snapshot(&mut self, m: Message) {
        let snap = m.snapshot.expect("MsgSnap carries a snapshot");
        let index = if self.restore(snap) { self.log.last_index() } else { self.log.committed };
        self.send(Message { index, ..Self::msg(MessageType::MsgAppResp, m.from) });
    }

    /// Installs a leader's snapshot unless our log already covers it.
    fn restore(&mut self, snap: Snapshot) -> bool {
        let (index, term) = (snap_index(&snap), snap_term(&snap));
        if index <= self.log.committed {
            return false;
        }
        if self.log.match_term(index, term) {
            // We hold the snapshot's last entry: fast-forward the commit index instead.
            self.log.commit_to(index);
            return false;
        }
        let cs = snap.metadata.as_ref().and_then(|m| m.conf_state.clone()).unwrap_or_default();
        self.log.restore(snap);
        self.apply_conf_state(&cs);
        if let Some(pr) = self.prs.get_mut(&self.id) {
            pr.matched = index;
            pr.next = index + 1;
        }
        true
    }

    // ----- configuration -----

    /// Applies a committed configuration change (the driver calls this when it applies the
    /// entry). Returns the configuration now in force.
    pub(crate) fn apply_conf_change(&mut self, cc: &ConfChange) -> ConfState {
        let id = cc.node_id;
        let next = self.log.last_index() + 1;
        match ConfChangeType::try_from(cc.change_type) {
            Ok(ConfChangeType::AddNode) => {
                self.learners.remove(&id);
                self.voters.insert(id);
                let pr = self.prs.entry(id).or_insert_with(|| {
                    Progress::new(next, self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max)
                });
                pr.is_learner = false;
                // A newly added node counts as active until the next check-quorum round.
                pr.recent_active = true;
            }
            Ok(ConfChangeType::AddLearnerNode) => {
                // A voter is never demoted by adding it as a learner.
                if !self.voters.contains(&id) {
                    self.learners.insert(id);
                    let pr = self.prs.entry(id).or_insert_with(|| {
                        Progress::new(next, self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max)
                    });
                    pr.is_learner = true;
                    pr.recent_active = true;
                }
            }
            // New peer URLs are the cluster layer's business; Raft's configuration stays.
            Ok(ConfChangeType::UpdateNode) => {}
            Ok(ConfChangeType::RemoveNode) => {
                self.voters.remove(&id);
                self.learners.remove(&id);
                self.prs.remove(&id);
                if self.lead_transferee == Some(id) {
                    self.lead_transferee = None;
                }
            }
            // The member table refuses what it does not know, so Raft never sees it; if it did,
            // nothing changes.
            Err(_) => return self.conf_state(),
        }
        if self.role == StateRole::Leader {
            // A leader removed from the configuration goes on leading it without counting itself
            // (it takes no new proposals), as etcd's Raft does: its appends and heartbeats tell
            // the others that the removal committed. Were it to step down at once, a remaining
            // voter that missed the commit could wait forever for the removed member's vote
            // (found by the simulator, SIM_SEED=3340). The server stops it a few ticks later,
            // and the others elect a leader among themselves.
            if self.maybe_commit() {
                // A smaller quorum may commit more.
                self.bcast_append();
            }
        }
        self.conf_state()
    }

    // ----- persistence -----

    /// The driver has made entries up to `index` (at `term`) durable on this node.
    pub(crate) fn on_persisted(&mut self, index: u64, term: u64) {
        self.log.stable_to(index, term);
        let stable = self.log.stable_last_index();
        if let Some(pr) = self.prs.get_mut(&self.id) {
            pr.maybe_update(stable.min(index));
        }
        if self.role == StateRole::Leader && self.maybe_commit() {
            self.bcast_append();
        }
    }

    pub(crate) fn on_snapshot_persisted(&mut self, index: u64) {
        self.log.stable_snap_to(index);
    }

    pub(crate) fn inflight_count(&self, id: u64) -> usize {
        self.prs.get(&id).map_or(0, |p| p.inflights.len())
    }

    pub(crate) fn pending_conf_index_unapplied(&self) -> bool {
        self.pending_conf_index > self.log.applied
    }

    pub(crate) fn apply_bytes_max(&self) -> u64 {
        self.cfg.apply_bytes_max
    }

    pub(crate) fn pending_reads(&self) -> usize {
        self.read_only.len() + self.pending_read_index.len()
    }
}
