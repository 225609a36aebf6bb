//! Planted bugs, for proving that the simulator catches real mistakes (issue #6). Compiled only
//! with the `planted-bugs` feature, which only tests enable, and off until a test turns one on.
//! Each is a realistic fault: the code path stays, one safety check goes.

use std::sync::atomic::{AtomicU32, Ordering};

/// A leader commits an entry of an earlier term by counting replicas (Raft §5.4.2, Figure 8).
pub const COMMIT_OLD_TERM_BY_COUNT: u32 = 1;
/// The WAL is written but not synced before entries are acknowledged.
pub const ACK_BEFORE_FSYNC: u32 = 2;
/// A leader answers ReadIndex at once with its local commit index: no heartbeat round
/// confirming it still leads, and no wait for an entry of its own term to commit (§6.4).
pub const READ_WITHOUT_QUORUM: u32 = 4;
/// A new term or vote is written to the WAL but not synced before the vote (or anything else)
/// is sent: only new entries force a sync.
pub const VOTE_NOT_SYNCED: u32 = 8;

static ACTIVE: AtomicU32 = AtomicU32::new(0);

/// Turns on exactly the given bugs (0 = none).
pub fn set(bugs: u32) {
    ACTIVE.store(bugs, Ordering::SeqCst);
}

pub fn active(bug: u32) -> bool {
    ACTIVE.load(Ordering::Relaxed) & bug != 0
}
