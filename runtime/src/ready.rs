//! The handling of one `Ready`, and the leader's lease duties on a tick and a keep-alive, shared
//! by the tokio driver and the simulator.

use crate::backend::Dir;
use crate::btree::PageFile;
use crate::image::{Image, ImageError, SaveJob};
use crate::wal::{Wal, WalError};
use keel_core::lease::{
    LeaseError, CHECKPOINT_LIMIT, DEFAULT_CHECKPOINT_INTERVAL_MS, EXPIRED_LIMIT, EXPIRY_POLL_INTERVAL_MS,
};
use keel_core::pb::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use keel_core::pb::keelpb::request::Op;
use keel_core::pb::keelpb::{MessageType, SnapshotMetadata};
use keel_core::raft::{MemStorage, Message, RawNode, ReadState, SoftState, StateRole, Storage as _};
use keel_core::state_machine::{Applied, StateMachine};
use thiserror::Error;

/// A storage failure while handling a Ready. The node must stop: memory and disk no longer
/// agree.
#[derive(Debug, Error)]
pub enum ReadyError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// A member's durable storage: its log and its state machine's image.
pub struct Storage<D: Dir, F: PageFile> {
    pub wal: Wal<D>,
    pub image: Image<F>,
}

/// What one `Ready` produced for the driver to act on.
#[derive(Debug, Default)]
pub struct ReadyOutcome {
    /// Each applied entry's index and effect, in log order.
    pub applied: Vec<(u64, Applied)>,
    pub read_states: Vec<ReadState>,
    pub soft_state: Option<SoftState>,
    /// Whether this Ready synced the WAL (for group-commit accounting).
    pub synced: bool,
    /// The index of a leader's snapshot that replaced the state machine, if one did.
    pub installed: Option<u64>,
}

/// Handles the node's next `Ready`, in the order its contract requires: send what needs nothing
/// durable, persist (one write, one sync for the whole batch), send what needed persistence,
/// apply committed entries, advance. Returns what was applied so the driver can answer clients.
///
/// A WAL error leaves the node un-advanced; the driver must stop, since memory and disk no
/// longer agree.
pub fn handle_ready<D: Dir, F: PageFile>(
    node: &mut RawNode<MemStorage>,
    storage: &mut Storage<D, F>,
    sm: &mut StateMachine,
    now_ms: u64,
    send: &mut dyn FnMut(Message),
) -> Result<ReadyOutcome, ReadyError> {
    let mut rd = node.ready();
    for m in rd.messages.drain(..) {
        send(with_snapshot_data(m, &storage.image)?);
    }

    // A leader's snapshot replaces the state machine: its image is made durable, then the WAL
    // records the new starting point, before anything after it is appended.
    let mut installed = None;
    if let Some(snap) = &rd.snapshot {
        let meta = snap.metadata.clone().expect("a snapshot has metadata");
        let loaded = storage.image.install(&snap.data, &meta, *sm.lessor.config())?;
        storage.wal.append_snapshot(&meta);
        installed = Some(meta.index);
        *sm = loaded.sm;
    }
    let wal = &mut storage.wal;
    if let Some(hs) = &rd.hard_state {
        wal.append_hard_state(hs);
    }
    wal.append_entries(&rd.entries);
    #[cfg(feature = "planted-bugs")]
    let sync = rd.must_sync && !keel_core::planted::active(keel_core::planted::ACK_BEFORE_FSYNC);
    #[cfg(not(feature = "planted-bugs"))]
    let sync = rd.must_sync;
    wal.flush(sync)?;
    if let Some(snap) = &rd.snapshot {
        // Memory keeps the metadata only; the data is the image, read from disk when needed.
        let mut snap = snap.clone();
        snap.data = Default::default();
        node.store_mut().apply_snapshot(snap);
    }
    node.store_mut().append(&rd.entries);
    if let Some(hs) = &rd.hard_state {
        node.store_mut().set_hard_state(*hs);
    }

    for m in rd.persisted_messages.drain(..) {
        send(with_snapshot_data(m, &storage.image)?);
    }

    let mut applied = Vec::with_capacity(rd.committed_entries.len());
    for entry in &rd.committed_entries {
        let effect = sm.apply(entry, now_ms);
        match &effect {
            Applied::Write { request_id: 0, result: Err(e), .. } => {
                tracing::warn!(index = entry.index, error = %e, "committed entry refused at apply")
            }
            Applied::ConfChange { result: Err(e), .. } => {
                tracing::warn!(index = entry.index, error = %e, "committed configuration change refused at apply")
            }
            _ => {}
        }
        // A change the member table refused changes nothing in Raft either.
        if let Applied::ConfChange { change, result: Ok(()) } = &effect {
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
        installed,
    };
    node.advance(rd);
    Ok(outcome)
}

/// A snapshot message leaves with the image's data: memory keeps only the snapshot's metadata.
/// The image may be newer than the log's snapshot point (a save finished and the log is not yet
/// compacted to it); the message then carries the image's own point, which is committed too.
fn with_snapshot_data<F: PageFile>(mut m: Message, image: &Image<F>) -> Result<Message, ImageError> {
    if m.msg_type == MessageType::MsgSnap as i32 {
        let snap = m.snapshot.as_mut().expect("MsgSnap carries a snapshot");
        let index = snap.metadata.as_ref().map_or(0, |md| md.index);
        let (data, meta) = image.full()?;
        assert!(
            meta.index >= index,
            "the image ({}) is behind the log's snapshot point ({index})",
            meta.index
        );
        snap.data = data;
        snap.metadata = Some(meta);
    }
    Ok(m)
}

/// The first half of a checkpoint: once `snapshot_count` entries have been applied since the
/// image's index, takes what the next save writes (see [`SaveJob::take`]). The job can be
/// written anywhere ([`Image::apply`]); then [`finish_checkpoint`] follows.
pub fn begin_checkpoint(
    node: &RawNode<MemStorage>,
    sm: &mut StateMachine,
    image_index: u64,
    snapshot_count: u64,
) -> Option<SaveJob> {
    let applied = sm.applied_index();
    if applied < image_index + snapshot_count.max(1) {
        return None;
    }
    let term = node.store().term(applied).expect("an applied entry is in the log");
    let conf_state = node.store().initial_state().1;
    Some(SaveJob::take(sm, term, conf_state))
}

/// The second half, once the image at `meta` is durable: the WAL records the new starting point
/// and releases what it covers, and the in-memory log is compacted to it (a follower that needs
/// older entries gets the image). A point older than one already recorded (a leader's snapshot
/// was installed meanwhile) changes nothing.
pub fn finish_checkpoint<D: Dir>(
    node: &mut RawNode<MemStorage>,
    wal: &mut Wal<D>,
    meta: &SnapshotMetadata,
) -> Result<(), ReadyError> {
    if meta.index < node.store().first_index() {
        return Ok(());
    }
    wal.append_snapshot(meta);
    wal.flush(true)?;
    wal.release(meta.index)?;
    let conf_state = meta.conf_state.clone().unwrap_or_default();
    node.store_mut().compact(meta.index, conf_state, Default::default());
    Ok(())
}

/// A whole checkpoint, in line: begin, save the image, finish. Returns whether it saved. The
/// simulator uses it as is; the node task runs the save on another thread.
pub fn maybe_checkpoint<D: Dir, F: PageFile>(
    node: &mut RawNode<MemStorage>,
    storage: &mut Storage<D, F>,
    sm: &mut StateMachine,
    snapshot_count: u64,
) -> Result<bool, ReadyError> {
    let Some(job) = begin_checkpoint(node, sm, storage.image.index(), snapshot_count) else {
        return Ok(false);
    };
    let meta = job.meta.clone();
    if !storage.image.apply(job)? {
        return Ok(false);
    }
    finish_checkpoint(node, &mut storage.wal, &meta)?;
    Ok(true)
}

/// The leader's side of leases, called on every tick with this member's monotonic clock: take
/// over expiry once caught up with the log (every earlier grant and checkpoint applied), let go
/// on losing leadership, and every [`EXPIRY_POLL_INTERVAL_MS`] return what to propose: a revoke
/// for each expired lease and one checkpoint request for the remaining TTLs that are due.
/// `extend_ms` (the election timeout) is what a new leader adds to every lease. Shared by the
/// node task and the simulator, so that both drive the lessor the same way.
pub fn drive_leases(
    node: &RawNode<MemStorage>,
    sm: &mut StateMachine,
    now_ms: u64,
    extend_ms: u64,
    last_poll_ms: &mut u64,
) -> Vec<Op> {
    if node.role() != StateRole::Leader {
        if sm.lessor.is_leader() {
            sm.lessor.demote();
        }
        return Vec::new();
    }
    if !sm.lessor.is_leader() {
        if node.applied() < node.committed() {
            return Vec::new();
        }
        sm.lessor.promote(now_ms, extend_ms);
    }
    if now_ms < *last_poll_ms + EXPIRY_POLL_INTERVAL_MS {
        return Vec::new();
    }
    *last_poll_ms = now_ms;
    let mut ops: Vec<Op> = sm
        .lessor
        .expired(now_ms, EXPIRED_LIMIT)
        .into_iter()
        .map(|id| Op::LeaseRevoke(LeaseRevokeRequest { id }))
        .collect();
    let due = sm.lessor.checkpoints_due(now_ms, DEFAULT_CHECKPOINT_INTERVAL_MS, CHECKPOINT_LIMIT);
    if !due.is_empty() {
        let checkpoints =
            due.into_iter().map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl }).collect();
        ops.push(Op::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints }));
    }
    ops
}

/// A keep-alive of lease `id` at `now_ms`: renewed only by the leader. A lessor still promoted
/// on a member that has just stepped down (it demotes on its next tick) must not renew: the new
/// leader would never hear of it. Shared by the node task and the simulator.
pub fn renew_lease(
    node: &RawNode<MemStorage>,
    sm: &mut StateMachine,
    id: i64,
    now_ms: u64,
) -> Result<i64, LeaseError> {
    if node.role() != StateRole::Leader {
        if sm.lessor.is_leader() {
            sm.lessor.demote();
        }
        return Err(LeaseError::NotLeader);
    }
    sm.lessor.renew(id, now_ms)
}
