use super::errors::StorageError;
use super::storage::Storage;
use crate::pb::keelpb::Entry;
use prost::Message as _;

/// The node's view of its log: the stable part in `store` and the not-yet-persisted suffix in
/// `unstable`.
///
/// Invariants: `applied <= committed`; `committed <= persisted_last_index()` for what is handed
/// to the application; `unstable[i].index == unstable_offset + i`.
pub(crate) struct RaftLog<S: Storage> {
    pub(crate) store: S,
    unstable: Vec<Entry>,
    unstable_offset: u64,
    pub(crate) committed: u64,
    pub(crate) applied: u64,
}

impl<S: Storage> RaftLog<S> {
    pub(crate) fn new(store: S, committed: u64, applied: u64) -> Self {
        let unstable_offset = store.last_index() + 1;
        assert!(committed <= store.last_index(), "committed {committed} beyond the stored log");
        assert!(applied <= committed, "applied {applied} beyond committed {committed}");
        RaftLog { store, unstable: Vec::new(), unstable_offset, committed, applied }
    }

    pub(crate) fn last_index(&self) -> u64 {
        match self.unstable.last() {
            Some(e) => e.index,
            None => self.store.last_index(),
        }
    }

    pub(crate) fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index >= self.unstable_offset {
            let i = (index - self.unstable_offset) as usize;
            return self.unstable.get(i).map(|e| e.term).ok_or(StorageError::Unavailable(index));
        }
        self.store.term(index)
    }

    pub(crate) fn last_term(&self) -> u64 {
        self.term(self.last_index()).expect("the last entry's term is always known")
    }

    /// Appends entries the leader created; they become unstable until the driver persists them.
    pub(crate) fn append(&mut self, ents: Vec<Entry>) {
        let Some(first) = ents.first() else { return };
        assert!(first.index > self.committed, "must never overwrite committed entries");
        if first.index < self.unstable_offset {
            // The new entries replace part of the stable log; the driver's append truncates it.
            self.unstable.clear();
            self.unstable_offset = first.index;
        } else {
            self.unstable.truncate((first.index - self.unstable_offset) as usize);
        }
        assert_eq!(first.index, self.unstable_offset + self.unstable.len() as u64, "gap in the log");
        self.unstable.extend(ents);
    }

    pub(crate) fn unstable_entries(&self) -> &[Entry] {
        &self.unstable
    }

    /// The driver has persisted entries up to `index` at `term`.
    pub(crate) fn stable_to(&mut self, index: u64, term: u64) {
        if index < self.unstable_offset {
            return;
        }
        let i = (index - self.unstable_offset) as usize;
        if self.unstable.get(i).map(|e| e.term) == Some(term) {
            self.unstable.drain(..=i);
            self.unstable_offset = index + 1;
        }
    }

    /// Last index that is both committed and durable here: what may be applied.
    fn applicable_to(&self) -> u64 {
        self.committed.min(self.unstable_offset - 1)
    }

    pub(crate) fn has_next_committed(&self) -> bool {
        self.applicable_to() > self.applied
    }

    /// Committed entries not yet handed to the application, up to `max_bytes` (at least one).
    pub(crate) fn next_committed(&self, max_bytes: u64) -> Vec<Entry> {
        let hi = self.applicable_to();
        if hi <= self.applied {
            return Vec::new();
        }
        self.store
            .entries(self.applied + 1, hi + 1, max_bytes)
            .expect("committed, durable entries are in the stable log")
    }

    pub(crate) fn applied_to(&mut self, index: u64) {
        assert!(index <= self.committed, "applied {index} beyond committed {}", self.committed);
        assert!(index >= self.applied, "applied index went back from {} to {index}", self.applied);
        self.applied = index;
    }

    pub(crate) fn commit_to(&mut self, index: u64) {
        if index > self.committed {
            assert!(index <= self.last_index(), "commit {index} beyond the last index");
            self.committed = index;
        }
    }
}

pub(crate) fn entries_size(ents: &[Entry]) -> u64 {
    ents.iter().map(|e| e.encoded_len() as u64).sum()
}
