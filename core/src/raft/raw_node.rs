use super::errors::ProposeError;
use super::log::snap_index;
use super::progress::Progress;
use super::protocol::{Config, Raft, StateRole};
use super::storage::Storage;
use crate::pb::keelpb::{ConfChange, ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot};
use bytes::Bytes;
use prost::Message as _;
use std::collections::BTreeMap;

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
/// 1. Send `messages`: they depend on nothing this Ready persists (a leader's appends and
///    heartbeats), so a leader replicates while it writes its own log.
/// 2. Persist `snapshot`, `hard_state` and `entries` (append to the WAL; sync if `must_sync`),
///    then add them to the [`Storage`] the node reads.
/// 3. Send `persisted_messages` (votes, acknowledgements of our log): only now are they true.
/// 4. Restore the state machine from `snapshot` if there is one, then apply `committed_entries`
///    in order (they are always durable here; configuration changes go through
///    [`RawNode::apply_conf_change`]).
/// 5. Serve `read_states` once the applied index reaches each one's index.
/// 6. Call [`RawNode::advance`] with this `Ready`.
#[derive(Debug, Default)]
pub struct Ready {
    pub(crate) number: u64,
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub committed_entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub persisted_messages: Vec<Message>,
    pub read_states: Vec<ReadState>,
    /// Whether the write must be synced: a new term or vote, or new entries, must be durable
    /// before anyone hears of them; a commit index alone may ride with the next sync.
    pub must_sync: bool,
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
        let _ = self.raft.step(Message { msg_type: MessageType::MsgHup as i32, ..Default::default() });
    }

    /// Feeds a message from a peer. What a peer may not send, or could not have sent honestly
    /// (see [`Raft::check_remote`]), is refused with [`ProposeError::BadMessage`] and changes
    /// nothing.
    pub fn step(&mut self, m: Message) -> Result<(), ProposeError> {
        self.raft.check_remote(&m).map_err(ProposeError::BadMessage)?;
        self.raft.step(m)
    }

    /// Proposes `data` for the log. A follower forwards it to the leader it knows.
    pub fn propose(&mut self, data: Bytes) -> Result<(), ProposeError> {
        self.raft.step(Message {
            msg_type: MessageType::MsgProp as i32,
            from: self.raft.id,
            entries: vec![Entry { data, ..Default::default() }],
            ..Default::default()
        })
    }

    /// Proposes a configuration change (one at a time; see the leader's safety rules).
    pub fn propose_conf_change(&mut self, cc: &ConfChange) -> Result<(), ProposeError> {
        if self.raft.role == StateRole::Leader {
            if self.raft.pending_conf_index_unapplied() {
                return Err(ProposeError::ConfChangePending);
            }
            if !self.raft.committed_in_term() {
                return Err(ProposeError::ConfChangePending);
            }
        }
        self.raft.step(Message {
            msg_type: MessageType::MsgProp as i32,
            from: self.raft.id,
            entries: vec![Entry {
                entry_type: EntryType::EntryConfChange as i32,
                data: cc.encode_to_vec().into(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    /// Applies a committed configuration change; returns the configuration now in force.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> ConfState {
        self.raft.apply_conf_change(cc)
    }

    /// Asks for a linearizable read point; it arrives as a [`ReadState`] carrying `ctx`.
    pub fn read_index(&mut self, ctx: Bytes) -> Result<(), ProposeError> {
        self.raft.step(Message {
            msg_type: MessageType::MsgReadIndex as i32,
            entries: vec![Entry { data: ctx, ..Default::default() }],
            ..Default::default()
        })
    }

    /// Asks the leader to hand leadership to `transferee`.
    pub fn transfer_leader(&mut self, transferee: u64) {
        let _ = self.raft.step(Message {
            msg_type: MessageType::MsgTransferLeader as i32,
            from: transferee,
            ..Default::default()
        });
    }

    /// The driver could not deliver a message to `id`.
    pub fn report_unreachable(&mut self, id: u64) {
        let _ = self.raft.step(Message {
            msg_type: MessageType::MsgUnreachable as i32,
            from: id,
            ..Default::default()
        });
    }

    /// The driver delivered (or failed to deliver) a snapshot to `id`.
    pub fn report_snapshot(&mut self, id: u64, failed: bool) {
        let _ = self.raft.step(Message {
            msg_type: MessageType::MsgSnapStatus as i32,
            from: id,
            reject: failed,
            ..Default::default()
        });
    }

    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        r.hard_state() != self.prev_hard_state
            || self.soft_state() != self.prev_soft_state
            || r.log.unstable.snapshot.is_some()
            || !r.log.unstable.entries.is_empty()
            || r.log.has_next_committed()
            || !r.msgs.is_empty()
            || !r.msgs_after_persist.is_empty()
            || !r.read_states.is_empty()
            || r.pending_bcast
    }

    fn soft_state(&self) -> SoftState {
        SoftState { lead: self.raft.lead, role: self.raft.role }
    }

    /// What the driver must do next. Panics if the previous `Ready` was not advanced.
    pub fn ready(&mut self) -> Ready {
        assert!(self.outstanding.is_none(), "ready() called before advance() of the last Ready");
        self.raft.flush_proposals();
        self.ready_count += 1;
        self.outstanding = Some(self.ready_count);
        let ss = self.soft_state();
        let hs = self.raft.hard_state();
        let max = self.raft.apply_bytes_max();
        let entries = self.raft.log.unstable.entries.clone();
        let hard_state = (hs != self.prev_hard_state).then_some(hs);
        #[cfg(feature = "planted-bugs")]
        let vote_synced = !crate::planted::active(crate::planted::VOTE_NOT_SYNCED);
        #[cfg(not(feature = "planted-bugs"))]
        let vote_synced = true;
        let must_sync = !entries.is_empty()
            || (vote_synced
                && (hs.term != self.prev_hard_state.term || hs.vote != self.prev_hard_state.vote))
            || self.raft.log.unstable.snapshot.is_some();
        Ready {
            number: self.ready_count,
            soft_state: (ss != self.prev_soft_state).then_some(ss),
            hard_state,
            snapshot: self.raft.log.unstable.snapshot.clone(),
            entries,
            committed_entries: self.raft.log.next_committed(max),
            messages: std::mem::take(&mut self.raft.msgs),
            persisted_messages: std::mem::take(&mut self.raft.msgs_after_persist),
            read_states: std::mem::take(&mut self.raft.read_states),
            must_sync,
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
        if let Some(snap) = &rd.snapshot {
            let index = snap_index(snap);
            self.raft.on_snapshot_persisted(index);
            if index > self.raft.log.applied {
                self.raft.log.applied_to(index);
            }
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

    /// The stable log, for the driver to add what it persisted (step 2 of [`Ready`]).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.raft.log.store
    }

    pub fn id(&self) -> u64 {
        self.raft.id
    }

    pub fn term(&self) -> u64 {
        self.raft.term
    }

    pub fn vote(&self) -> u64 {
        self.raft.vote
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

    pub fn first_index(&self) -> u64 {
        self.raft.log.first_index()
    }

    /// The term of the entry at `index`, if held.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        self.raft.log.term(index).ok()
    }

    /// The log's entries in `[lo, hi)` that are still held (for checkers and tests).
    pub fn entries(&self, lo: u64, hi: u64) -> Vec<Entry> {
        self.raft.log.slice(lo, hi, u64::MAX).unwrap_or_default()
    }

    pub fn conf_state(&self) -> ConfState {
        self.raft.conf_state()
    }

    /// The leader's view of every member's replication (empty on followers' use).
    pub fn progress(&self) -> &BTreeMap<u64, Progress> {
        &self.raft.prs
    }

    pub fn lead_transferee(&self) -> Option<u64> {
        self.raft.lead_transferee
    }

    pub fn inflight_count(&self, id: u64) -> usize {
        self.raft.inflight_count(id)
    }

    pub fn pending_read_count(&self) -> usize {
        self.raft.pending_reads()
    }
}
