use super::errors::StorageError;
use super::storage::Storage;
use crate::pb::keelpb::{Entry, Snapshot};
use prost::Message as _;

/// Entries (and possibly a snapshot) the node holds but the driver has not yet persisted.
///
/// Invariants: `entries[i].index == offset + i`; if `snapshot` is set, `offset` is its index + 1.
#[derive(Debug, Default)]
pub(crate) struct Unstable {
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) entries: Vec<Entry>,
    pub(crate) offset: u64,
}

pub(crate) fn snap_index(s: &Snapshot) -> u64 {
    s.metadata.as_ref().map_or(0, |m| m.index)
}

pub(crate) fn snap_term(s: &Snapshot) -> u64 {
    s.metadata.as_ref().map_or(0, |m| m.term)
}

impl Unstable {
    fn maybe_first_index(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| snap_index(s) + 1)
    }

    fn maybe_last_index(&self) -> Option<u64> {
        match self.entries.last() {
            Some(e) => Some(e.index),
            None => self.snapshot.as_ref().map(snap_index),
        }
    }

    fn maybe_term(&self, i: u64) -> Option<u64> {
        if i < self.offset {
            return self.snapshot.as_ref().filter(|s| snap_index(s) == i).map(snap_term);
        }
        self.entries.get((i - self.offset) as usize).map(|e| e.term)
    }

    fn truncate_and_append(&mut self, ents: &[Entry]) {
        let after = ents[0].index;
        if after == self.offset + self.entries.len() as u64 {
            self.entries.extend_from_slice(ents);
        } else if after <= self.offset {
            // Replaces everything unstable (and, once persisted, part of the stable log).
            self.offset = after;
            self.entries = ents.to_vec();
        } else {
            self.entries.truncate((after - self.offset) as usize);
            self.entries.extend_from_slice(ents);
        }
    }
}

/// The node's view of its log: the stable part in `store` and the not-yet-persisted suffix in
/// `unstable`.
///
/// Invariants: `applied <= committed <= last_index()`; what is handed to the application is
/// also durable (`<= stable_last_index()`).
pub(crate) struct RaftLog<S: Storage> {
    pub(crate) store: S,
    pub(crate) unstable: Unstable,
    pub(crate) committed: u64,
    pub(crate) applied: u64,
}

impl<S: Storage> RaftLog<S> {
    pub(crate) fn new(store: S, committed: u64, applied: u64) -> Self {
        let first = store.first_index();
        let last = store.last_index();
        assert!(committed <= last, "committed {committed} beyond the stored log's last index {last}");
        let applied = applied.max(first - 1);
        assert!(applied <= committed, "applied {applied} beyond committed {committed}");
        let unstable = Unstable { snapshot: None, entries: Vec::new(), offset: last + 1 };
        RaftLog { store, unstable, committed, applied }
    }

    pub(crate) fn first_index(&self) -> u64 {
        self.unstable.maybe_first_index().unwrap_or_else(|| self.store.first_index())
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.unstable.maybe_last_index().unwrap_or_else(|| self.store.last_index())
    }

    /// The last index that is durable on this node.
    pub(crate) fn stable_last_index(&self) -> u64 {
        self.unstable.offset - 1
    }

    pub(crate) fn term(&self, i: u64) -> Result<u64, StorageError> {
        let dummy = self.first_index() - 1;
        if i < dummy {
            return Err(StorageError::Compacted(i));
        }
        if i > self.last_index() {
            return Err(StorageError::Unavailable(i));
        }
        match self.unstable.maybe_term(i) {
            Some(t) => Ok(t),
            None => self.store.term(i),
        }
    }

    pub(crate) fn last_term(&self) -> u64 {
        self.term(self.last_index()).expect("the last entry's term is always known")
    }

    pub(crate) fn match_term(&self, i: u64, t: u64) -> bool {
        self.term(i).ok() == Some(t)
    }

    /// Whether a log ending at (`last_index`, `term`) is at least as up to date as ours (§5.4.1).
    pub(crate) fn is_up_to_date(&self, last_index: u64, term: u64) -> bool {
        term > self.last_term() || (term == self.last_term() && last_index >= self.last_index())
    }

    /// The first of `ents` that conflicts with our log (same index, other term) or is new;
    /// 0 if we hold all of them.
    fn find_conflict(&self, ents: &[Entry]) -> u64 {
        for e in ents {
            if !self.match_term(e.index, e.term) {
                return e.index;
            }
        }
        0
    }

    /// The largest index `<= index` whose term is `<= term`, with that term: where a leader's
    /// log and ours may agree, skipping a whole term of divergent entries per round trip.
    pub(crate) fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut i = index;
        loop {
            match self.term(i) {
                Ok(t) if t > term => i -= 1,
                Ok(t) => return (i, t),
                Err(_) => return (i, 0),
            }
        }
    }

    /// Handles a leader's append: if our log has `(index, log_term)`, append `ents` after it
    /// (replacing any conflicting suffix) and advance the commit index; returns the last index of
    /// the new entries. `None` means our log does not match there.
    pub(crate) fn maybe_append(
        &mut self,
        index: u64,
        log_term: u64,
        committed: u64,
        ents: &[Entry],
    ) -> Option<u64> {
        if !self.match_term(index, log_term) {
            return None;
        }
        let last_new = index + ents.len() as u64;
        let ci = self.find_conflict(ents);
        if ci != 0 {
            assert!(ci > self.committed, "entry {ci} conflicts with committed entry {}", self.committed);
            let start = (ci - (index + 1)) as usize;
            self.append(&ents[start..]);
        }
        self.commit_to(committed.min(last_new));
        Some(last_new)
    }

    pub(crate) fn append(&mut self, ents: &[Entry]) -> u64 {
        if ents.is_empty() {
            return self.last_index();
        }
        assert!(ents[0].index > self.committed, "must never overwrite committed entries");
        self.unstable.truncate_and_append(ents);
        self.last_index()
    }

    pub(crate) fn commit_to(&mut self, index: u64) {
        if index > self.committed {
            assert!(index <= self.last_index(), "commit {index} beyond the last index {}", self.last_index());
            self.committed = index;
        }
    }

    /// Commits up to `index` if it is an entry of `term`: a leader commits only entries of its own
    /// term by counting replicas (§5.4.2).
    pub(crate) fn maybe_commit(&mut self, index: u64, term: u64) -> bool {
        #[cfg(feature = "planted-bugs")]
        if crate::planted::active(crate::planted::COMMIT_OLD_TERM_BY_COUNT) && index > self.committed {
            self.commit_to(index);
            return true;
        }
        if index > self.committed && self.term(index).ok() == Some(term) {
            self.commit_to(index);
            return true;
        }
        false
    }

    /// Entries in `[lo, hi)`, up to `max_bytes` (at least one), from storage and unstable.
    pub(crate) fn slice(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        if lo < self.first_index() {
            return Err(StorageError::Compacted(lo));
        }
        assert!(
            hi <= self.last_index() + 1,
            "slice [{lo}, {hi}) beyond the last index {}",
            self.last_index()
        );
        let mut out = Vec::new();
        let stable_hi = hi.min(self.unstable.offset);
        if lo < stable_hi {
            out = self.store.entries(lo, stable_hi, max_bytes)?;
            if (out.len() as u64) < stable_hi - lo {
                return Ok(out); // The byte bound cut it short.
            }
        }
        if hi > self.unstable.offset {
            let from = lo.max(self.unstable.offset);
            let mut bytes: u64 = out.iter().map(|e| e.encoded_len() as u64).sum();
            for e in &self.unstable.entries
                [(from - self.unstable.offset) as usize..(hi - self.unstable.offset) as usize]
            {
                bytes += e.encoded_len() as u64;
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                out.push(e.clone());
            }
        }
        Ok(out)
    }

    pub(crate) fn entries_from(&self, lo: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        self.slice(lo, self.last_index() + 1, max_bytes)
    }

    pub(crate) fn snapshot(&self) -> Result<Snapshot, StorageError> {
        match &self.unstable.snapshot {
            Some(s) => Ok(s.clone()),
            None => self.store.snapshot(),
        }
    }

    /// Replaces the log with a snapshot (a follower far behind its leader).
    pub(crate) fn restore(&mut self, snap: Snapshot) {
        let index = snap_index(&snap);
        self.committed = index;
        self.unstable = Unstable { snapshot: Some(snap), entries: Vec::new(), offset: index + 1 };
    }

    /// The driver has persisted entries up to `index` at `term`.
    pub(crate) fn stable_to(&mut self, index: u64, term: u64) {
        if index < self.unstable.offset {
            return;
        }
        if self.unstable.maybe_term(index) == Some(term) {
            let n = (index + 1 - self.unstable.offset) as usize;
            self.unstable.entries.drain(..n);
            self.unstable.offset = index + 1;
        }
    }

    pub(crate) fn stable_snap_to(&mut self, index: u64) {
        if self.unstable.snapshot.as_ref().map(snap_index) == Some(index) {
            self.unstable.snapshot = None;
        }
    }

    /// Last index that is both committed and durable here: what may be applied.
    fn applicable_to(&self) -> u64 {
        self.committed.min(self.stable_last_index())
    }

    pub(crate) fn has_next_committed(&self) -> bool {
        self.unstable.snapshot.is_none() && self.applicable_to() > self.applied
    }

    /// Committed, durable entries not yet handed to the application, up to `max_bytes`.
    pub(crate) fn next_committed(&self, max_bytes: u64) -> Vec<Entry> {
        if !self.has_next_committed() {
            return Vec::new();
        }
        let lo = self.applied.max(self.first_index() - 1) + 1;
        self.slice(lo, self.applicable_to() + 1, max_bytes).expect("committed, durable entries are held")
    }

    pub(crate) fn applied_to(&mut self, index: u64) {
        assert!(index <= self.committed, "applied {index} beyond committed {}", self.committed);
        assert!(index >= self.applied, "applied index went back from {} to {index}", self.applied);
        self.applied = index;
    }
}

pub(crate) fn payload_size(ents: &[Entry]) -> u64 {
    ents.iter().map(|e| e.data.len() as u64).sum()
}
