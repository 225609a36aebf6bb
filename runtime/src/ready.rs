//! The handling of one `Ready`, shared by the tokio driver and the simulator.

use crate::backend::Dir;
use crate::wal::{Wal, WalError};
use keel_core::raft::{MemStorage, Message, RawNode, ReadState, SoftState};
use keel_core::state_machine::{Applied, StateMachine};

/// What one `Ready` produced for the driver to act on.
#[derive(Debug, Default)]
pub struct ReadyOutcome {
    /// Each applied entry's index and effect, in log order.
    pub applied: Vec<(u64, Applied)>,
    pub read_states: Vec<ReadState>,
    pub soft_state: Option<SoftState>,
    /// Whether this Ready synced the WAL (for group-commit accounting).
    pub synced: bool,
}

/// Handles the node's next `Ready`, in the order its contract requires: send what needs nothing
/// durable, persist (one write, one sync for the whole batch), send what needed persistence,
/// apply committed entries, advance. Returns what was applied so the driver can answer clients.
///
/// A WAL error leaves the node un-advanced; the driver must stop, since memory and disk no
/// longer agree.
pub fn handle_ready<D: Dir>(
    node: &mut RawNode<MemStorage>,
    wal: &mut Wal<D>,
    sm: &mut StateMachine,
    now_ms: u64,
    send: &mut dyn FnMut(Message),
) -> Result<ReadyOutcome, WalError> {
    let mut rd = node.ready();
    for m in rd.messages.drain(..) {
        send(m);
    }

    // Snapshots arrive only from a leader over the peer transport; installing one (and keeping
    // it in the WAL) comes with the storage engine (#5) and the cluster server (#7).
    assert!(rd.snapshot.is_none(), "snapshot installation is not supported by this runtime yet");
    if let Some(hs) = &rd.hard_state {
        wal.append_hard_state(hs);
    }
    wal.append_entries(&rd.entries);
    #[cfg(feature = "planted-bugs")]
    let sync = rd.must_sync && !keel_core::planted::active(keel_core::planted::ACK_BEFORE_FSYNC);
    #[cfg(not(feature = "planted-bugs"))]
    let sync = rd.must_sync;
    wal.flush(sync)?;
    node.store_mut().append(&rd.entries);
    if let Some(hs) = &rd.hard_state {
        node.store_mut().set_hard_state(*hs);
    }

    for m in rd.persisted_messages.drain(..) {
        send(m);
    }

    let mut applied = Vec::with_capacity(rd.committed_entries.len());
    for entry in &rd.committed_entries {
        let effect = sm.apply(entry, now_ms);
        if let Applied::ConfChange { change } = &effect {
            let cs = node.apply_conf_change(change);
            node.store_mut().set_conf_state(cs);
        }
        applied.push((entry.index, effect));
    }
    let outcome = ReadyOutcome {
        applied,
        read_states: std::mem::take(&mut rd.read_states),
        soft_state: rd.soft_state,
        synced: rd.must_sync,
    };
    node.advance(rd);
    Ok(outcome)
}
