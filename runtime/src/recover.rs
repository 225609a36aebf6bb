//! Starting a node from its WAL: a fresh data directory is bootstrapped with the initial
//! cluster (or, for a member joining a running cluster, left empty for the leader to fill), an
//! existing one is replayed. Shared by the tokio driver and the simulator.

use crate::backend::Dir;
use crate::btree::PageFile;
use crate::image::{Image, ImageError};
use crate::ready::Storage;
use crate::wal::{Wal, WalError, WalOptions};
use keel_core::membership::Membership;
use keel_core::pb::etcdserverpb::Member;
use keel_core::pb::keelpb::{ConfChange, EntryType, WalMetadata};
use keel_core::raft::{bootstrap, Config, MemStorage, RawNode, Snapshot};
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
    /// The members a new cluster starts with: a fresh data directory's log begins with one
    /// configuration entry per member. Empty for a member joining a running cluster
    /// (`--initial-cluster-state existing`): its log starts empty and the leader replicates
    /// the cluster's log (or its snapshot) to it, configuration included.
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
    let started = std::time::Instant::now();
    let image = Image::open(image_file)?;
    let (mut wal, replayed) = Wal::open(wal_dir, wal_options)?;
    let wal_ms = started.elapsed().as_millis() as u64;
    let loaded = image.load(lease_config)?;
    tracing::info!(
        wal_ms,
        image_ms = started.elapsed().as_millis() as u64 - wal_ms,
        wal_entries = replayed.entries.len(),
        image_index = loaded.as_ref().map_or(0, |l| l.meta.index),
        "read the WAL and the state image"
    );
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
            let (hs, entries) = match members.is_empty() {
                true => Default::default(),
                false => bootstrap(&members),
            };
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
    // The configuration as of the image, then as changed by conf changes committed after it,
    // checked by the same rules as when they are applied (a refused change changes nothing).
    // Those after the known commit index may still be replaced by a new leader, so they count
    // only once committed (and applied) again.
    let mut membership = Membership::default();
    if let Some(l) = &loaded {
        store.apply_snapshot(Snapshot { metadata: Some(l.meta.clone()), data: Default::default() });
        membership = l.sm.membership().clone();
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
        let _ = membership.apply(&cc);
    }
    store.set_conf_state(membership.conf_state());
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
