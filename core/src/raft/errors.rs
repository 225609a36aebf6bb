use thiserror::Error;

/// Errors of the storage the core reads. The core has no I/O error: a backend that fails to
/// read reports `Unavailable` and the driver decides what that means.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    #[error("log compacted: index {0} is before the first available entry")]
    Compacted(u64),
    #[error("log entries unavailable: index {0} is beyond the last entry")]
    Unavailable(u64),
}

/// Why a proposal or read was not accepted. The caller answers its client with etcd's
/// matching error (`no leader`, `too many requests`, ...).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProposeError {
    #[error("raft proposal dropped: this node is not the leader")]
    NotLeader,
    #[error("raft proposal dropped: uncommitted log is over its byte bound")]
    UncommittedLimit,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StepError {
    #[error("message from peer {0}: multi-voter replication is not implemented yet (issue #3)")]
    PeerMessagesUnsupported(u64),
}
