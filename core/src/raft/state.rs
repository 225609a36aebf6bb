use super::errors::{ProposeError, StepError};
use super::log::{entries_size, RaftLog};
use super::raw_node::ReadState;
use super::storage::Storage;
use crate::pb::keelpb::{Entry, EntryType, HardState, Message, MessageType};
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateRole {
    Follower,
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
    /// Bound on the bytes of proposed but uncommitted entries; proposals past it are dropped.
    pub uncommitted_bytes_max: u64,
    /// Bound on the bytes of committed entries handed out in one `Ready`.
    pub apply_bytes_max: u64,
    /// Index the application has already applied (from its own durable state).
    pub applied: u64,
}

impl Config {
    pub fn new(id: u64, seed: u64) -> Self {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            seed,
            uncommitted_bytes_max: 64 << 20,
            apply_bytes_max: 16 << 20,
            applied: 0,
        }
    }

    pub fn validate(&self) {
        assert!(self.id != 0, "node id 0 is reserved for 'none'");
        assert!(self.heartbeat_ticks > 0, "heartbeat_ticks must be positive");
        assert!(self.election_ticks > self.heartbeat_ticks, "election_ticks must exceed heartbeat_ticks");
    }
}

/// The protocol state of one node.
///
/// Invariants: a leader's `lead == id`; `vote` is set when `term` was entered as a candidate;
/// `uncommitted_bytes` counts the bytes of entries after `committed` that this leader appended.
pub(crate) struct Raft<S: Storage> {
    pub(crate) id: u64,
    pub(crate) term: u64,
    pub(crate) vote: u64,
    pub(crate) lead: u64,
    pub(crate) role: StateRole,
    pub(crate) log: RaftLog<S>,
    voters: Vec<u64>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_ticks: u32,
    election_ticks: u32,
    heartbeat_ticks: u32,
    rng: SmallRng,
    uncommitted_bytes: u64,
    uncommitted_bytes_max: u64,
    pub(crate) apply_bytes_max: u64,
    /// ReadIndex requests that arrived before this leader committed an entry of its term.
    pending_reads: Vec<Bytes>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) msgs: Vec<Message>,
}

impl<S: Storage> Raft<S> {
    pub(crate) fn new(config: &Config, store: S) -> Self {
        config.validate();
        let (hs, cs) = store.initial_state();
        assert!(
            cs.voters.len() <= 1,
            "multi-voter configurations come with issue #3; got voters {:?}",
            cs.voters
        );
        let log = RaftLog::new(store, hs.commit, config.applied);
        let mut raft = Raft {
            id: config.id,
            term: hs.term,
            vote: hs.vote,
            lead: 0,
            role: StateRole::Follower,
            log,
            voters: cs.voters,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: 0,
            election_ticks: config.election_ticks,
            heartbeat_ticks: config.heartbeat_ticks,
            rng: SmallRng::seed_from_u64(config.seed),
            uncommitted_bytes: 0,
            uncommitted_bytes_max: config.uncommitted_bytes_max,
            apply_bytes_max: config.apply_bytes_max,
            pending_reads: Vec::new(),
            read_states: Vec::new(),
            msgs: Vec::new(),
        };
        raft.reset_randomized_election_timeout();
        raft
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    pub(crate) fn set_voters(&mut self, voters: Vec<u64>) {
        assert!(voters.len() <= 1, "multi-voter configurations come with issue #3");
        self.voters = voters;
    }

    fn is_sole_voter(&self) -> bool {
        self.voters == [self.id]
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    fn reset_randomized_election_timeout(&mut self) {
        let lo = self.election_ticks;
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
        self.uncommitted_bytes = 0;
        self.reset_randomized_election_timeout();
    }

    pub(crate) fn tick(&mut self) {
        match self.role {
            StateRole::Leader => {
                self.heartbeat_elapsed += 1;
                if self.heartbeat_elapsed >= self.heartbeat_ticks {
                    // With peers this is where heartbeats go out; a sole voter has none.
                    self.heartbeat_elapsed = 0;
                }
            }
            StateRole::Follower | StateRole::Candidate => {
                self.election_elapsed += 1;
                // A sole voter cannot conflict with anyone, so it need not wait out a timeout.
                let timed_out = self.election_elapsed >= self.randomized_election_ticks;
                if self.voters.contains(&self.id) && (timed_out || self.is_sole_voter()) {
                    self.election_elapsed = 0;
                    self.campaign();
                }
            }
        }
    }

    pub(crate) fn campaign(&mut self) {
        if !self.voters.contains(&self.id) {
            return;
        }
        let term = self.term + 1;
        self.reset(term);
        self.role = StateRole::Candidate;
        self.vote = self.id;
        // Every vote request would go to the other voters here; our own vote counts at once.
        if 1 >= self.quorum() {
            self.become_leader();
        }
    }

    fn become_leader(&mut self) {
        assert_ne!(self.role, StateRole::Follower, "a follower must campaign before it leads");
        self.role = StateRole::Leader;
        self.lead = self.id;
        // An empty entry of the new term: committing it commits everything before it (§5.4.2)
        // and lets ReadIndex serve reads (§6.4).
        let index = self.log.last_index() + 1;
        self.log.append(vec![Entry {
            term: self.term,
            index,
            entry_type: EntryType::EntryNormal as i32,
            data: Bytes::new(),
        }]);
    }

    pub(crate) fn step(&mut self, m: Message) -> Result<(), StepError> {
        if m.msg_type == MessageType::MsgHup as i32 {
            if self.role != StateRole::Leader {
                self.campaign();
            }
            return Ok(());
        }
        Err(StepError::PeerMessagesUnsupported(m.from))
    }

    pub(crate) fn propose(&mut self, data: Bytes) -> Result<u64, ProposeError> {
        if self.role != StateRole::Leader {
            return Err(ProposeError::NotLeader);
        }
        let index = self.log.last_index() + 1;
        let entry = Entry { term: self.term, index, entry_type: EntryType::EntryNormal as i32, data };
        let size = entries_size(std::slice::from_ref(&entry));
        // Like etcd-io/raft, one entry is always accepted so that a large entry cannot wedge
        // an idle leader.
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + size > self.uncommitted_bytes_max {
            return Err(ProposeError::UncommittedLimit);
        }
        self.uncommitted_bytes += size;
        self.log.append(vec![entry]);
        Ok(index)
    }

    /// Whether this leader has committed an entry of its own term (§6.4).
    fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed).ok() == Some(self.term)
    }

    pub(crate) fn read_index(&mut self, ctx: Bytes) -> Result<(), ProposeError> {
        if self.role != StateRole::Leader {
            return Err(ProposeError::NotLeader);
        }
        if !self.committed_in_term() {
            self.pending_reads.push(ctx);
            return Ok(());
        }
        // With peers a heartbeat round would confirm leadership first; a sole voter is its own quorum.
        self.read_states.push(ReadState { index: self.log.committed, request_ctx: ctx });
        Ok(())
    }

    /// The driver has made entries up to `index` (at `term`) durable on this node.
    pub(crate) fn on_persisted(&mut self, index: u64, term: u64) {
        self.log.stable_to(index, term);
        if self.role == StateRole::Leader && self.is_sole_voter() {
            self.maybe_commit(index);
        }
    }

    fn maybe_commit(&mut self, durable: u64) {
        // Only entries of the current term are committed by counting replicas (§5.4.2).
        if durable <= self.log.committed || self.log.term(durable).ok() != Some(self.term) {
            return;
        }
        let before = self.log.committed;
        self.log.commit_to(durable);
        let released: u64 = self
            .log
            .store
            .entries(before + 1, durable + 1, u64::MAX)
            .map(|ents| entries_size(&ents))
            .unwrap_or(0);
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(released);
        if self.committed_in_term() && !self.pending_reads.is_empty() {
            let index = self.log.committed;
            for ctx in std::mem::take(&mut self.pending_reads) {
                self.read_states.push(ReadState { index, request_ctx: ctx });
            }
        }
    }
}
