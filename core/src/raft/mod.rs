//! Raft consensus, sans-IO, in the shape of etcd-io/raft's `RawNode`: leader election with
//! pre-vote and check-quorum, pipelined log replication with per-follower progress and bounded
//! in-flight windows, snapshots, ReadIndex reads, leadership transfer and single-server
//! membership changes (learners included).
//!
//! Membership changes are single-server changes (thesis §4.1) with two safety conditions the
//! leader enforces: at most one change is pending (appended but not applied) at a time, and a
//! leader proposes one only after committing an entry of its own term. A change takes effect
//! when applied ([`RawNode::apply_conf_change`]).

mod errors;
mod log;
mod progress;
mod protocol;
mod raw_node;
mod read_only;
mod storage;

pub use errors::{ProposeError, StepError, StorageError};
pub use progress::{Progress, ProgressState};
pub use protocol::{Config, StateRole, INDEX_MAX, TERM_MAX};
pub use raw_node::{RawNode, ReadState, Ready, SoftState};
pub use storage::{bootstrap, MemStorage, Storage};

pub use crate::pb::keelpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot,
    SnapshotMetadata,
};

#[cfg(test)]
mod tests;
