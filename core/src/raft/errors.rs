use thiserror::Error;

/// Errors of the storage the core reads. The core has no I/O error: a backend that fails to
/// read reports `Unavailable` and the driver decides what that means.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    #[error("log compacted: index {0} is before the first available entry")]
    Compacted(u64),
    #[error("log entries unavailable: index {0} is beyond the last entry")]
    Unavailable(u64),
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
}

/// Why a proposal, read or local message was not accepted. The caller answers its client with
/// etcd's matching error (`no leader`, `too many requests`, `leader changed`, ...).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProposeError {
    #[error("raft proposal dropped: no leader to take it")]
    NotLeader,
    #[error("raft proposal dropped: uncommitted log is over its byte bound")]
    UncommittedLimit,
    #[error("raft proposal dropped: leadership transfer in progress")]
    TransferInProgress,
    #[error("raft proposal dropped: a configuration change is already pending")]
    ConfChangePending,
    #[error("raft proposal dropped: this node is not in the configuration")]
    NotMember,
    /// A peer's message that no honest member sends: refused before it reaches the protocol.
    #[error("raft message refused: {0}")]
    BadMessage(&'static str),
}

/// `step` refuses a message only for the proposal reasons above.
pub type StepError = ProposeError;
