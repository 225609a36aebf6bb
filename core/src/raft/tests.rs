//! Unit tests of the single-voter node's contract with its driver.

use super::*;
use bytes::Bytes;

fn sole_voter_storage(id: u64) -> MemStorage {
    let (hs, entries) = bootstrap(&[(id, b"member".to_vec())]);
    let mut s = MemStorage::new();
    s.append(&entries);
    s.set_hard_state(hs);
    s.set_conf_state(ConfState { voters: vec![id], learners: vec![] });
    s
}

/// Does what a driver does with one Ready: persist, apply (return what was applied), advance.
fn drive(node: &mut RawNode<MemStorage>) -> (Ready, Vec<u64>) {
    let rd = node.ready();
    node.store_mut().append(&rd.entries);
    if let Some(hs) = &rd.hard_state {
        node.store_mut().set_hard_state(*hs);
    }
    let applied = rd.committed_entries.iter().map(|e| e.index).collect();
    let copy = Ready {
        soft_state: rd.soft_state,
        hard_state: rd.hard_state,
        entries: rd.entries.clone(),
        committed_entries: rd.committed_entries.clone(),
        read_states: rd.read_states.clone(),
        ..Default::default()
    };
    node.advance(rd);
    (copy, applied)
}

/// A bootstrapped sole voter, elected and with everything applied.
fn leader() -> RawNode<MemStorage> {
    leader_with(Config::new(1, 7))
}

fn leader_with(cfg: Config) -> RawNode<MemStorage> {
    let mut node = RawNode::new(&cfg, sole_voter_storage(1));
    drive_all(&mut node);
    node.tick();
    assert_eq!(node.role(), StateRole::Leader);
    drive_all(&mut node);
    node
}

fn drive_all(node: &mut RawNode<MemStorage>) -> Vec<u64> {
    let mut applied = Vec::new();
    while node.has_ready() {
        applied.extend(drive(node).1);
    }
    applied
}

#[test]
fn bootstrapped_sole_voter_leads_at_term_two_like_etcd() {
    let mut node = RawNode::new(&Config::new(1, 7), sole_voter_storage(1));
    assert_eq!(node.term(), 1);
    assert_eq!(node.role(), StateRole::Follower);
    // The bootstrap entry is committed already; it must be applied before anyone campaigns
    // (no election under a configuration that is not yet in force).
    node.tick();
    assert_eq!(node.role(), StateRole::Follower);
    assert_eq!(drive_all(&mut node), vec![1]);
    node.tick();
    assert_eq!(node.role(), StateRole::Leader);
    assert_eq!(node.term(), 2);
    let (rd, applied) = drive(&mut node);
    assert_eq!(rd.hard_state.as_ref().map(|h| (h.term, h.vote)), Some((2, 1)));
    assert_eq!(rd.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), vec![(2, 2)]);
    assert!(applied.is_empty());
    // The new leader's empty entry commits once it is durable.
    assert_eq!(drive_all(&mut node), vec![2]);
    assert_eq!(node.committed(), 2);
    assert!(!node.has_ready());
}

#[test]
fn entries_commit_only_after_they_are_persisted() {
    let mut node = leader();
    node.propose(Bytes::from_static(b"x")).unwrap();
    assert_eq!(node.last_index(), 3);
    let rd = node.ready();
    assert_eq!(rd.entries.len(), 1);
    assert!(rd.committed_entries.is_empty(), "an entry must not be applied before it is durable");
    assert_eq!(node.committed(), 2);
    node.store_mut().append(&rd.entries.clone());
    node.advance(rd);
    assert_eq!(node.committed(), 3);
    assert_eq!(drive_all(&mut node), vec![3]);
}

#[test]
fn many_proposals_share_one_ready() {
    let mut node = leader();
    for i in 0..100u8 {
        node.propose(Bytes::from(vec![i])).unwrap();
    }
    let (rd, _) = drive(&mut node);
    assert_eq!(rd.entries.len(), 100, "one Ready (one WAL sync) carries the whole batch");
    assert_eq!(drive_all(&mut node).len(), 100);
}

#[test]
fn follower_drops_proposals_and_reads() {
    let mut node = RawNode::new(&Config::new(1, 7), sole_voter_storage(1));
    assert_eq!(node.propose(Bytes::from_static(b"x")), Err(ProposeError::NotLeader));
    assert_eq!(node.read_index(Bytes::from_static(b"r")), Err(ProposeError::NotLeader));
}

#[test]
fn read_index_waits_for_an_entry_of_the_leaders_term() {
    let mut node = RawNode::new(&Config::new(1, 7), sole_voter_storage(1));
    drive_all(&mut node);
    node.tick();
    node.read_index(Bytes::from_static(b"early")).unwrap();
    let (rd, _) = drive(&mut node);
    assert!(rd.read_states.is_empty(), "no read point before the term's first entry commits");
    let (rd, _) = drive(&mut node);
    assert_eq!(rd.read_states, vec![ReadState { index: 2, request_ctx: Bytes::from_static(b"early") }]);
    node.read_index(Bytes::from_static(b"late")).unwrap();
    let (rd, _) = drive(&mut node);
    assert_eq!(rd.read_states, vec![ReadState { index: 2, request_ctx: Bytes::from_static(b"late") }]);
}

#[test]
fn uncommitted_bytes_are_bounded() {
    let mut cfg = Config::new(1, 7);
    cfg.uncommitted_bytes_max = 64;
    let mut node = leader_with(cfg);
    node.propose(Bytes::from(vec![0; 40])).unwrap();
    assert_eq!(node.propose(Bytes::from(vec![0; 40])), Err(ProposeError::UncommittedLimit));
    drive_all(&mut node);
    node.propose(Bytes::from(vec![0; 40])).expect("room again once the first entry committed");
}

#[test]
fn restart_commits_and_applies_durable_entries_with_a_lagging_commit_index() {
    let mut node = leader();
    node.propose(Bytes::from_static(b"a")).unwrap();
    node.propose(Bytes::from_static(b"b")).unwrap();
    let rd = node.ready();
    node.store_mut().append(&rd.entries.clone());
    // Crash here: the entries are durable, the commit index that covers them is not.
    let mut store = node.store().clone();
    let hs = *store.hard_state();
    assert_eq!(hs.commit, 2);
    store.set_hard_state(hs);
    let mut node = RawNode::new(&Config::new(1, 8), store);
    assert_eq!(drive_all(&mut node), vec![1, 2], "what was known committed applies at once");
    node.tick();
    assert_eq!(node.term(), 3);
    assert_eq!(drive_all(&mut node), vec![3, 4, 5], "the rest commits with the new term's entry");
}

#[test]
#[should_panic(expected = "ready() called before advance()")]
fn ready_twice_without_advance_is_misuse() {
    let mut node = RawNode::new(&Config::new(1, 7), sole_voter_storage(1));
    node.tick();
    let _a = node.ready();
    let _b = node.ready();
}

#[test]
#[should_panic(expected = "advance() of a Ready not handed out last")]
fn advancing_a_stale_ready_is_misuse() {
    let mut node = RawNode::new(&Config::new(1, 7), sole_voter_storage(1));
    node.tick();
    let a = node.ready();
    node.advance(Ready::default());
    drop(a);
}

/// Applies every committed configuration change as a driver does; returns the last state.
fn drive_conf(node: &mut RawNode<MemStorage>) -> ConfState {
    while node.has_ready() {
        let rd = node.ready();
        node.store_mut().append(&rd.entries);
        if let Some(hs) = &rd.hard_state {
            node.store_mut().set_hard_state(*hs);
        }
        for e in rd.committed_entries.iter().filter(|e| e.entry_type == EntryType::EntryConfChange as i32) {
            let cc = <ConfChange as prost::Message>::decode(e.data.clone()).unwrap();
            let cs = node.apply_conf_change(&cc);
            node.store_mut().set_conf_state(cs);
        }
        node.advance(rd);
    }
    node.conf_state()
}

/// etcd's promotion is an AddNode for a learner: it becomes a voter (and stops being a learner);
/// an UpdateNode (new peer URLs) leaves Raft's configuration as it is.
#[test]
fn promote_is_add_node_of_a_learner_and_update_changes_nothing() {
    let mut node = leader();
    let cc = |t: ConfChangeType| ConfChange { change_type: t as i32, node_id: 2, ..Default::default() };
    node.propose_conf_change(&cc(ConfChangeType::AddLearnerNode)).unwrap();
    assert_eq!(drive_conf(&mut node), ConfState { voters: vec![1], learners: vec![2] });
    assert!(node.progress()[&2].is_learner);
    node.propose_conf_change(&cc(ConfChangeType::UpdateNode)).unwrap();
    assert_eq!(drive_conf(&mut node), ConfState { voters: vec![1], learners: vec![2] });
    node.propose_conf_change(&cc(ConfChangeType::AddNode)).unwrap();
    // Two voters, one of which never answers: the promotion commits under the old config (1
    // voter), and from then on node 1 alone can commit nothing.
    assert_eq!(drive_conf(&mut node), ConfState { voters: vec![1, 2], learners: vec![] });
    assert!(!node.progress()[&2].is_learner);
}
