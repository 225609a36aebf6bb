//! Raft consensus, sans-IO, in the shape of etcd-io/raft's `RawNode`.
//!
//! This is the walking skeleton's module: a single voter, complete in its contract (hard state
//! and entries to persist, committed entries to apply, ReadIndex reads, seeded election timers),
//! so that the multi-voter protocol of issue #3 extends it without changing its users.

mod errors;
mod log;
mod raw_node;
mod state;
mod storage;

pub use errors::{ProposeError, StepError, StorageError};
pub use raw_node::{RawNode, ReadState, Ready, SoftState};
pub use state::{Config, StateRole};
pub use storage::{bootstrap, ConfState, MemStorage, Storage};

pub use crate::pb::keelpb::{ConfChange, ConfChangeType, Entry, EntryType, HardState, Message, MessageType};

#[cfg(test)]
mod tests;
