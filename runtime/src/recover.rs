//! Starting a node from its WAL: a fresh data directory is bootstrapped with the initial
//! cluster, an existing one is replayed. Shared by the tokio driver and the simulator.

use crate::backend::Dir;
use crate::btree::PageFile;
use crate::image::{Image, ImageError};
use crate::ready::Storage;
use crate::wal::{Wal, WalError, WalOptions};
use keel_core::pb::etcdserverpb::Member;
use keel_core::pb::keelpb::{ConfChange, ConfChangeType, EntryType, WalMetadata};
use keel_core::raft::{bootstrap, ConfState, Config, MemStorage, RawNode, Snapshot};
use keel_core::state_machine::StateMachine;
use prost::Message as _;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RecoverError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(
        "data directory belongs to member {found_member:x} of cluster {found_cluster:x}, \
         but the flags describe member {want_member:x} of cluster {want_cluster:x}"
    )]
    IdentityMismatch { found_member: u64, found_cluster: u64, want_member: u64, want_cluster: u64 },
    #[error(
        "wal has no metadata record but there are log entries or a state image: not a Keel data directory"
    )]
    NoMetadata,
    #[error("wal starts after index {wal}, but the state image only reaches index {image}")]
    ImageBehindWal { wal: u64, image: u64 },
}

/// Who this node is and which cluster it starts (used only for a fresh data directory).
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub initial_members: Vec<Member>,
}

pub struct Recovered<D: Dir, F: PageFile> {
    pub node: RawNode<MemStorage>,
    pub storage: Storage<D, F>,
    pub sm: StateMachine,
    /// Whether the data directory was new.
    pub fresh: bool,
}

/// Opens (or bootstraps) the node whose WAL lives on `backend`. `seed` feeds Raft's PRNG.
pub fn recover<D: Dir, F: PageFile>(
    wal_dir: D,
    wal_options: WalOptions,
    image_file: F,
    id: &Identity,
    raft: Config,
    lease_config: keel_core::lease::LessorConfig,
) -> Result<Recovered<D, F>, RecoverError> {
    let image = Image::open(image_file)?;
    let (mut wal, replayed) = Wal::open(wal_dir, wal_options)?;
    let loaded = image.load(lease_config)?;
    let image_index = loaded.as_ref().map_or(0, |l| l.meta.index);
    let wal_start = replayed.snapshot.as_ref().map_or(0, |s| s.index);
    if image_index < wal_start {
        // The WAL records a starting point only once the image reaching it is durable.
        return Err(RecoverError::ImageBehindWal { wal: wal_start, image: image_index });
    }
    let fresh = replayed.metadata.is_none();
    let (hard_state, entries) = match &replayed.metadata {
        None if !replayed.entries.is_empty() || loaded.is_some() => return Err(RecoverError::NoMetadata),
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
    // The configuration as of the image, then as changed by conf changes committed after it.
    // Those after the known commit index may still be replaced by a new leader, so they count
    // only once committed (and applied) again.
    let mut voters: Vec<u64> = Vec::new();
    let mut learners: Vec<u64> = Vec::new();
    if let Some(l) = &loaded {
        store.apply_snapshot(Snapshot { metadata: Some(l.meta.clone()), data: Default::default() });
        let cs = l.meta.conf_state.clone().unwrap_or_default();
        voters = cs.voters;
        learners = cs.learners;
    }
    let entries: Vec<_> = entries.into_iter().filter(|e| e.index > image_index).collect();
    if let Some(first) = entries.first() {
        if first.index != image_index + 1 {
            return Err(RecoverError::ImageBehindWal { wal: first.index - 1, image: image_index });
        }
    }
    store.append(&entries);
    let committed = hard_state.commit;
    for e in
        entries.iter().filter(|e| e.entry_type == EntryType::EntryConfChange as i32 && e.index <= committed)
    {
        let cc = ConfChange::decode(e.data.clone()).expect("a conf change entry in the WAL decodes");
        match ConfChangeType::try_from(cc.change_type) {
            Ok(ConfChangeType::AddNode) => {
                learners.retain(|v| *v != cc.node_id);
                if !voters.contains(&cc.node_id) {
                    voters.push(cc.node_id)
                }
            }
            Ok(ConfChangeType::AddLearnerNode) if !learners.contains(&cc.node_id) => {
                learners.push(cc.node_id)
            }
            Ok(ConfChangeType::RemoveNode) => {
                voters.retain(|v| *v != cc.node_id);
                learners.retain(|v| *v != cc.node_id);
            }
            _ => {}
        }
    }
    store.set_conf_state(ConfState { voters, learners });
    // The commit index may lag what is durable (it is synced lazily); it never exceeds it, and
    // never falls below what the image has applied.
    let mut hs = hard_state;
    hs.commit = hs.commit.min(store_last(&store)).max(image_index);
    hs.term = hs.term.max(loaded.as_ref().map_or(0, |l| l.meta.term));
    store.set_hard_state(hs);
    let node = RawNode::new(&raft, store);
    let sm = match loaded {
        Some(l) => l.sm,
        None => StateMachine::new(lease_config),
    };
    Ok(Recovered { node, storage: Storage { wal, image }, sm, fresh })
}

fn store_last(store: &MemStorage) -> u64 {
    use keel_core::raft::Storage;
    store.last_index()
}
