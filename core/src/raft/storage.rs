use super::errors::StorageError;
use crate::pb::keelpb::{ConfChange, ConfChangeType, Entry, EntryType, HardState};
use prost::Message as _;

/// The voters and learners a log's configuration entries have established.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfState {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// The stable log as the core reads it. Implementations return what has been persisted (by the
/// driver, following `Ready`); the core never writes through this trait.
pub trait Storage {
    fn initial_state(&self) -> (HardState, ConfState);
    /// Entries in `[lo, hi)`, at least one if any exist, then up to `max_bytes` in all.
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>, StorageError>;
    fn term(&self, index: u64) -> Result<u64, StorageError>;
    /// Index of the first entry held (one past the last compacted index).
    fn first_index(&self) -> u64;
    /// Index of the last entry held (`first_index() - 1` when empty).
    fn last_index(&self) -> u64;
}

/// An in-memory stable log: what the runtime rebuilds from the WAL on start and appends to after
/// each persisted `Ready`.
///
/// Invariant: `entries[i].index == offset + i` and entries are contiguous.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index of the first entry in `entries`; the entry before it is compacted away.
    offset: u64,
    /// Term of the entry at `offset - 1` (0 before any compaction).
    compacted_term: u64,
    entries: Vec<Entry>,
}

impl MemStorage {
    pub fn new() -> Self {
        MemStorage { offset: 1, ..Default::default() }
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

    /// Appends persisted entries, replacing any suffix they conflict with (Raft's log matching:
    /// a new entry at an existing index supersedes it and everything after it).
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        assert!(
            first.index >= self.offset,
            "append at {} before the first held index {}",
            first.index,
            self.offset
        );
        assert!(
            first.index <= self.offset + self.entries.len() as u64,
            "append at {} leaves a gap after {}",
            first.index,
            self.last_index()
        );
        self.entries.truncate((first.index - self.offset) as usize);
        for (i, e) in ents.iter().enumerate() {
            assert_eq!(e.index, first.index + i as u64, "appended entries must be contiguous");
        }
        self.entries.extend_from_slice(ents);
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
        if index == self.offset - 1 {
            return Ok(self.compacted_term);
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
            }
            .encode_to_vec()
            .into(),
        })
        .collect();
    let hs = HardState { term: 1, vote: 0, commit: entries.len() as u64 };
    (hs, entries)
}
