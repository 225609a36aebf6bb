use std::collections::VecDeque;

/// How the leader is replicating to one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// Where the follower's log matches is unknown: one append at a time, then wait.
    Probe,
    /// The follower is known to match: appends stream, up to the in-flight bound.
    Replicate,
    /// The follower needs a snapshot; no appends until it has one.
    Snapshot,
}

/// Appends sent and not yet acknowledged, bounded in count and bytes: the pipeline window.
#[derive(Debug, Clone)]
pub(crate) struct Inflights {
    /// (last index of the append, its payload bytes), oldest first.
    queue: VecDeque<(u64, u64)>,
    bytes: u64,
    count_max: usize,
    bytes_max: u64,
}

impl Inflights {
    pub(crate) fn new(count_max: usize, bytes_max: u64) -> Self {
        assert!(count_max > 0, "the in-flight window must hold at least one append");
        Inflights { queue: VecDeque::new(), bytes: 0, count_max, bytes_max }
    }

    pub(crate) fn full(&self) -> bool {
        self.queue.len() >= self.count_max || (self.bytes_max > 0 && self.bytes >= self.bytes_max)
    }

    pub(crate) fn add(&mut self, index: u64, bytes: u64) {
        assert!(!self.full(), "add to a full in-flight window");
        if let Some((last, _)) = self.queue.back() {
            assert!(index > *last, "in-flight appends must grow: {index} after {last}");
        }
        self.queue.push_back((index, bytes));
        self.bytes += bytes;
    }

    /// Frees every append up to and including `to`.
    pub(crate) fn free_le(&mut self, to: u64) {
        while let Some(&(index, bytes)) = self.queue.front() {
            if index > to {
                break;
            }
            self.queue.pop_front();
            self.bytes -= bytes;
        }
    }

    pub(crate) fn free_first(&mut self) {
        if let Some((_, bytes)) = self.queue.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub(crate) fn reset(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

/// The leader's view of one follower.
///
/// Invariants: `matched < next`; in `Snapshot` state `pending_snapshot > 0`.
#[derive(Debug, Clone)]
pub struct Progress {
    pub matched: u64,
    pub next: u64,
    pub state: ProgressState,
    /// Index of the snapshot in flight (Snapshot state).
    pub pending_snapshot: u64,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Probe state: an append is out; wait for its answer (or a heartbeat's) before the next.
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    pub is_learner: bool,
}

impl Progress {
    pub(crate) fn new(next: u64, inflight_max: usize, inflight_bytes_max: u64) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            recent_active: false,
            probe_sent: false,
            inflights: Inflights::new(inflight_max, inflight_bytes_max),
            is_learner: false,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.state = state;
        self.inflights.reset();
    }

    pub(crate) fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            // The snapshot, if it arrived, moved the follower to its index at least.
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next = self.matched + 1;
        }
    }

    pub(crate) fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub(crate) fn become_snapshot(&mut self, index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = index;
    }

    /// The follower acknowledged `n`; returns whether that is news.
    pub(crate) fn maybe_update(&mut self, n: u64) -> bool {
        let updated = self.matched < n;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        self.next = self.next.max(n + 1);
        updated
    }

    /// The follower rejected an append at `rejected`; `hint` is where its log may match.
    /// Returns false for a stale rejection.
    pub(crate) fn maybe_decr_to(&mut self, rejected: u64, hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next - 1 != rejected {
            return false;
        }
        self.next = rejected.min(hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// Records an append of `count` entries ending at `last` carrying `bytes`.
    pub(crate) fn sent_entries(&mut self, count: usize, last: u64, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if count > 0 {
                    self.next = last + 1;
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => panic!("sending entries to a follower awaiting a snapshot"),
        }
    }
}
