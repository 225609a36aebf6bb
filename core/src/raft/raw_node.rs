use super::errors::{ProposeError, StepError};
use super::state::{Config, Raft, StateRole};
use super::storage::Storage;
use crate::pb::keelpb::{Entry, HardState, Message};
use bytes::Bytes;

/// Volatile state worth reporting: who leads, and this node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftState {
    pub lead: u64,
    pub role: StateRole,
}

/// A linearizable read point: once the application has applied `index`, a read identified by
/// `request_ctx` may be served from local state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    pub index: u64,
    pub request_ctx: Bytes,
}

/// Everything the driver must do, as owned data. The driver handles one `Ready` in this order:
///
/// 1. Persist `hard_state` and `entries` (append to the WAL and sync), then append `entries` to
///    the [`Storage`] the node reads.
/// 2. Send `messages` (they need nothing durable); send `persisted_messages` only after step 1.
/// 3. Apply `committed_entries` to the state machine, in order. They are always durable here.
/// 4. Serve `read_states` once the applied index reaches each one's index.
/// 5. Call [`RawNode::advance`] with this `Ready`.
#[derive(Debug, Default)]
pub struct Ready {
    pub(crate) number: u64,
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    pub committed_entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub persisted_messages: Vec<Message>,
    pub read_states: Vec<ReadState>,
}

/// The driver-facing Raft node.
pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_hard_state: HardState,
    prev_soft_state: SoftState,
    /// The `Ready` handed out and not yet advanced, by number.
    outstanding: Option<u64>,
    ready_count: u64,
}

impl<S: Storage> RawNode<S> {
    pub fn new(config: &Config, store: S) -> Self {
        let raft = Raft::new(config, store);
        let prev_hard_state = raft.hard_state();
        let prev_soft_state = SoftState { lead: raft.lead, role: raft.role };
        RawNode { raft, prev_hard_state, prev_soft_state, outstanding: None, ready_count: 0 }
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Starts an election now, as a timeout would.
    pub fn campaign(&mut self) {
        self.raft.campaign();
    }

    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        self.raft.step(m)
    }

    /// Proposes `data` for the log; returns the index it was appended at. Only the leader accepts.
    pub fn propose(&mut self, data: Bytes) -> Result<u64, ProposeError> {
        self.raft.propose(data)
    }

    /// Asks for a linearizable read point; it arrives as a [`ReadState`] carrying `ctx`.
    pub fn read_index(&mut self, ctx: Bytes) -> Result<(), ProposeError> {
        self.raft.read_index(ctx)
    }

    /// Applies a configuration the log has committed.
    pub fn apply_voters(&mut self, voters: Vec<u64>) {
        self.raft.set_voters(voters);
    }

    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        r.hard_state() != self.prev_hard_state
            || self.soft_state() != self.prev_soft_state
            || !r.log.unstable_entries().is_empty()
            || r.log.has_next_committed()
            || !r.msgs.is_empty()
            || !r.read_states.is_empty()
    }

    fn soft_state(&self) -> SoftState {
        SoftState { lead: self.raft.lead, role: self.raft.role }
    }

    /// What the driver must do next. Panics if the previous `Ready` was not advanced.
    pub fn ready(&mut self) -> Ready {
        assert!(self.outstanding.is_none(), "ready() called before advance() of the last Ready");
        self.ready_count += 1;
        self.outstanding = Some(self.ready_count);
        let ss = self.soft_state();
        let hs = self.raft.hard_state();
        let max = self.raft.apply_bytes_max;
        Ready {
            number: self.ready_count,
            soft_state: (ss != self.prev_soft_state).then_some(ss),
            hard_state: (hs != self.prev_hard_state).then_some(hs),
            entries: self.raft.log.unstable_entries().to_vec(),
            committed_entries: self.raft.log.next_committed(max),
            // A sole voter sends nothing; with peers, appends to followers go in `messages` and
            // responses that acknowledge our own log in `persisted_messages`.
            messages: std::mem::take(&mut self.raft.msgs),
            persisted_messages: Vec::new(),
            read_states: std::mem::take(&mut self.raft.read_states),
        }
    }

    /// Tells the node that everything `rd` asked for is done.
    pub fn advance(&mut self, rd: Ready) {
        assert_eq!(self.outstanding.take(), Some(rd.number), "advance() of a Ready not handed out last");
        if let Some(ss) = rd.soft_state {
            self.prev_soft_state = ss;
        }
        if let Some(hs) = rd.hard_state {
            self.prev_hard_state = hs;
        }
        if let Some(last) = rd.entries.last() {
            self.raft.on_persisted(last.index, last.term);
        }
        if let Some(last) = rd.committed_entries.last() {
            self.raft.log.applied_to(last.index);
        }
    }

    pub fn store(&self) -> &S {
        &self.raft.log.store
    }

    /// The stable log, for the driver to append what it persisted (step 1 of [`Ready`]).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.raft.log.store
    }

    pub fn id(&self) -> u64 {
        self.raft.id
    }

    pub fn term(&self) -> u64 {
        self.raft.term
    }

    pub fn leader(&self) -> u64 {
        self.raft.lead
    }

    pub fn role(&self) -> StateRole {
        self.raft.role
    }

    pub fn committed(&self) -> u64 {
        self.raft.log.committed
    }

    pub fn applied(&self) -> u64 {
        self.raft.log.applied
    }

    pub fn last_index(&self) -> u64 {
        self.raft.log.last_index()
    }

    pub fn last_term(&self) -> u64 {
        self.raft.log.last_term()
    }
}
