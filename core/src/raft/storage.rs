use super::errors::StorageError;
use crate::pb::keelpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata,
};
use prost::Message as _;

/// The stable log as the core reads it. Implementations return what has been persisted (by the
/// driver, following `Ready`); the core never writes through this trait.
pub trait Storage {
    fn initial_state(&self) -> (HardState, ConfState);
    /// Entries in `[lo, hi)`: at least one if any exist, then as many as fit in `max_bytes`.
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    /// The term of the entry at `index`; also known for `first_index() - 1` (the snapshot's).
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// Index of the first entry held (one past the last compacted index).
    fn first_index(&self) -> u64;
    /// Index of the last entry held (`first_index() - 1` when empty).
    fn last_index(&self) -> u64;
    /// The latest snapshot, for a follower too far behind to catch up from the log.
    /// `Err(SnapshotTemporarilyUnavailable)` makes the leader try again later.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// An in-memory stable log: what the runtime rebuilds from the WAL on start and appends to after
/// each persisted `Ready`; also the storage of the simulator and the tests.
///
/// Invariants: `entries[i].index == offset + i`; `offset - 1 == snapshot.metadata.index`.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index of the first entry in `entries`; the entry before it is compacted away.
    offset: u64,
    entries: Vec<Entry>,
    /// The state machine as of `offset - 1` (metadata only until the application stores data).
    snapshot: Snapshot,
}

impl MemStorage {
    pub fn new() -> Self {
        MemStorage {
            offset: 1,
            snapshot: Snapshot { metadata: Some(SnapshotMetadata::default()), data: Default::default() },
            ..Default::default()
        }
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    fn snapshot_index(&self) -> u64 {
        self.offset - 1
    }

    fn snapshot_term(&self) -> u64 {
        self.snapshot.metadata.as_ref().map_or(0, |m| m.term)
    }

    /// Appends persisted entries, replacing any suffix they conflict with (Raft's log matching:
    /// a new entry at an existing index supersedes it and everything after it).
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        if first.index + ents.len() as u64 <= self.offset {
            return; // All of it is already compacted into the snapshot.
        }
        let ents =
            if first.index < self.offset { &ents[(self.offset - first.index) as usize..] } else { ents };
        let first = ents[0].index;
        assert!(
            first <= self.offset + self.entries.len() as u64,
            "append at {first} leaves a gap after {}",
            self.last_index()
        );
        self.entries.truncate((first - self.offset) as usize);
        for (i, e) in ents.iter().enumerate() {
            assert_eq!(e.index, first + i as u64, "appended entries must be contiguous");
        }
        self.entries.extend_from_slice(ents);
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, snap: Snapshot) {
        let meta = snap.metadata.clone().expect("a snapshot has metadata");
        assert!(
            meta.index >= self.snapshot_index(),
            "snapshot {} older than {}",
            meta.index,
            self.snapshot_index()
        );
        self.offset = meta.index + 1;
        self.entries.clear();
        self.conf_state = meta.conf_state.clone().unwrap_or_default();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.snapshot = snap;
    }

    /// Records the application's snapshot at `index` (which must be applied) and discards the
    /// log up to it. `data` is the state machine's serialized state.
    pub fn compact(&mut self, index: u64, conf_state: ConfState, data: bytes::Bytes) {
        if index <= self.snapshot_index() {
            return;
        }
        assert!(index <= self.last_index(), "compact at {index} beyond the last index {}", self.last_index());
        let term = self.term(index).expect("a held entry has a term");
        let drop = (index + 1 - self.offset) as usize;
        self.entries.drain(..drop);
        self.offset = index + 1;
        self.snapshot =
            Snapshot { metadata: Some(SnapshotMetadata { conf_state: Some(conf_state), index, term }), data };
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> (HardState, ConfState) {
        (self.hard_state, self.conf_state.clone())
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        if lo < self.offset {
            return Err(StorageError::Compacted(lo));
        }
        if hi > self.last_index() + 1 {
            return Err(StorageError::Unavailable(hi - 1));
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for e in &self.entries[(lo - self.offset) as usize..(hi - self.offset) as usize] {
            bytes += e.encoded_len() as u64;
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index == self.snapshot_index() {
            return Ok(self.snapshot_term());
        }
        if index < self.offset {
            return Err(StorageError::Compacted(index));
        }
        self.entries
            .get((index - self.offset) as usize)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable(index))
    }

    fn first_index(&self) -> u64 {
        self.offset
    }

    fn last_index(&self) -> u64 {
        self.offset + self.entries.len() as u64 - 1
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

/// The log a new cluster starts from, as etcd starts it: one configuration entry per initial
/// member at term 1, all committed. `members` pairs each member id with its encoded record.
/// The first election then happens at term 2, as on etcd.
pub fn bootstrap(members: &[(u64, Vec<u8>)]) -> (HardState, Vec<Entry>) {
    let entries: Vec<Entry> = members
        .iter()
        .enumerate()
        .map(|(i, (id, context))| Entry {
            term: 1,
            index: i as u64 + 1,
            entry_type: EntryType::EntryConfChange as i32,
            data: ConfChange {
                change_type: ConfChangeType::AddNode as i32,
                node_id: *id,
                context: context.clone().into(),
                ..Default::default()
            }
            .encode_to_vec()
            .into(),
        })
        .collect();
    let hs = HardState { term: 1, vote: 0, commit: entries.len() as u64 };
    (hs, entries)
}
