//! Starting a node from its WAL: a fresh data directory is bootstrapped with the initial
//! cluster, an existing one is replayed. Shared by the tokio driver and the simulator.

use crate::backend::Dir;
use crate::wal::{Wal, WalError, WalOptions};
use keel_core::pb::etcdserverpb::Member;
use keel_core::pb::keelpb::{ConfChange, ConfChangeType, EntryType, WalMetadata};
use keel_core::raft::{bootstrap, ConfState, Config, MemStorage, RawNode};
use keel_core::state_machine::StateMachine;
use prost::Message as _;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RecoverError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(
        "data directory belongs to member {found_member:x} of cluster {found_cluster:x}, \
         but the flags describe member {want_member:x} of cluster {want_cluster:x}"
    )]
    IdentityMismatch { found_member: u64, found_cluster: u64, want_member: u64, want_cluster: u64 },
    #[error("wal has log entries but no metadata record: not a Keel data directory")]
    NoMetadata,
    #[error("wal starts after a snapshot at index {index}, but there is no state image to start from")]
    SnapshotWithoutImage { index: u64 },
}

/// Who this node is and which cluster it starts (used only for a fresh data directory).
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub initial_members: Vec<Member>,
}

pub struct Recovered<D: Dir> {
    pub node: RawNode<MemStorage>,
    pub wal: Wal<D>,
    pub sm: StateMachine,
    /// Whether the data directory was new.
    pub fresh: bool,
}

/// Opens (or bootstraps) the node whose WAL lives on `backend`. `seed` feeds Raft's PRNG.
pub fn recover<D: Dir>(
    wal_dir: D,
    wal_options: WalOptions,
    id: &Identity,
    raft: Config,
    lease_config: keel_core::lease::LessorConfig,
) -> Result<Recovered<D>, RecoverError> {
    let (mut wal, replayed) = Wal::open(wal_dir, wal_options)?;
    if let Some(snap) = &replayed.snapshot {
        // Nothing writes snapshot points until the state machine has a durable image.
        return Err(RecoverError::SnapshotWithoutImage { index: snap.index });
    }
    let fresh = replayed.metadata.is_none();
    let (hard_state, entries) = match &replayed.metadata {
        None if !replayed.entries.is_empty() => return Err(RecoverError::NoMetadata),
        None => {
            let members: Vec<(u64, Vec<u8>)> =
                id.initial_members.iter().map(|m| (m.id, m.encode_to_vec())).collect();
            let (hs, entries) = bootstrap(&members);
            wal.append_metadata(&WalMetadata {
                member_id: id.member_id,
                cluster_id: id.cluster_id,
                name: id.name.clone(),
            });
            wal.append_entries(&entries);
            wal.append_hard_state(&hs);
            wal.flush(true)?;
            (hs, entries)
        }
        Some(md) => {
            if md.member_id != id.member_id || md.cluster_id != id.cluster_id {
                return Err(RecoverError::IdentityMismatch {
                    found_member: md.member_id,
                    found_cluster: md.cluster_id,
                    want_member: id.member_id,
                    want_cluster: id.cluster_id,
                });
            }
            (replayed.hard_state, replayed.entries)
        }
    };
    let mut store = MemStorage::new();
    store.append(&entries);
    // The configuration as of the known commit index: conf changes after it may still be
    // replaced by a new leader, so they count only once committed (and applied) again.
    let mut voters: Vec<u64> = Vec::new();
    let committed = hard_state.commit;
    for e in
        entries.iter().filter(|e| e.entry_type == EntryType::EntryConfChange as i32 && e.index <= committed)
    {
        let cc = ConfChange::decode(e.data.clone()).expect("a conf change entry in the WAL decodes");
        match ConfChangeType::try_from(cc.change_type) {
            Ok(ConfChangeType::AddNode) if !voters.contains(&cc.node_id) => voters.push(cc.node_id),
            Ok(ConfChangeType::RemoveNode) => voters.retain(|v| *v != cc.node_id),
            _ => {}
        }
    }
    store.set_conf_state(ConfState { voters, learners: Vec::new() });
    // The commit index may lag what is durable (it is synced lazily); it never exceeds it.
    let mut hs = hard_state;
    hs.commit = hs.commit.min(store_last(&store));
    store.set_hard_state(hs);
    let node = RawNode::new(&raft, store);
    Ok(Recovered { node, wal, sm: StateMachine::new(lease_config), fresh })
}

fn store_last(store: &MemStorage) -> u64 {
    use keel_core::raft::Storage;
    store.last_index()
}
