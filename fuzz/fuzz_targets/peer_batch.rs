//! The peer path: any bytes decoded as a batch of Raft messages (as the peer port decodes it)
//! and stepped into the members of a three-member cluster with a leader, each Ready handled
//! (persist, apply configuration changes, advance). Nothing may panic; what `step` refuses must
//! change nothing.
#![no_main]

use keel_core::pb::keelpb::{ConfChange, ConfState, EntryType, MessageBatch};
use keel_core::raft::{Config, MemStorage, Message, RawNode, StateRole};
use keel_core::state_machine::entry_decodes;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use std::collections::BTreeMap;

fn node(id: u64) -> RawNode<MemStorage> {
    let mut store = MemStorage::new();
    store.set_conf_state(ConfState { voters: vec![1, 2, 3], learners: vec![] });
    let mut cfg = Config::new(id, id);
    cfg.proposal_check = Some(entry_decodes);
    cfg.snapshot_check = Some(keel_core::state_machine::snapshot_matches);
    RawNode::new(&cfg, store)
}

/// Handles one node's Ready; returns the messages it sends.
fn process(n: &mut RawNode<MemStorage>) -> Vec<Message> {
    let mut out = Vec::new();
    while n.has_ready() {
        let rd = n.ready();
        out.extend(rd.messages.iter().cloned());
        if let Some(snap) = &rd.snapshot {
            n.store_mut().apply_snapshot(snap.clone());
        }
        n.store_mut().append(&rd.entries);
        if let Some(hs) = rd.hard_state {
            n.store_mut().set_hard_state(hs);
        }
        out.extend(rd.persisted_messages.iter().cloned());
        for e in &rd.committed_entries {
            if e.entry_type == EntryType::EntryConfChange as i32 {
                if let Ok(cc) = ConfChange::decode(e.data.clone()) {
                    let cs = n.apply_conf_change(&cc);
                    n.store_mut().set_conf_state(cs);
                }
            }
        }
        n.advance(rd);
    }
    out
}

/// Delivers messages until the cluster is quiet (bounded).
fn settle(nodes: &mut BTreeMap<u64, RawNode<MemStorage>>, mut queue: Vec<Message>) {
    for _ in 0..50 {
        for id in [1, 2, 3] {
            let n = nodes.get_mut(&id).unwrap();
            queue.extend(process(n));
        }
        if queue.is_empty() {
            return;
        }
        for m in std::mem::take(&mut queue) {
            if let Some(n) = nodes.get_mut(&m.to) {
                let _ = n.step(m);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = MessageBatch::decode(data) else { return };
    let mut nodes: BTreeMap<u64, RawNode<MemStorage>> = (1..=3).map(|id| (id, node(id))).collect();
    nodes.get_mut(&1).unwrap().campaign();
    settle(&mut nodes, Vec::new());
    assert_eq!(nodes[&1].role(), StateRole::Leader);
    for m in batch.messages.into_iter().take(64) {
        let Some(n) = nodes.get_mut(&m.to) else { continue };
        let before = (n.term(), n.role(), n.leader(), n.last_index(), n.committed());
        if n.step(m).is_err() {
            let after = (n.term(), n.role(), n.leader(), n.last_index(), n.committed());
            assert_eq!(before, after, "a refused message changed the node");
        }
        settle(&mut nodes, Vec::new());
    }
});
