//! Property tests over random schedules: messages dropped, duplicated and reordered, partitions,
//! crashes that lose unpersisted state, restarts, proposals and ticks, all chosen by proptest.
//! After every step the five safety properties of the Raft paper (Figure 3) must hold; once the
//! faults heal, a stable majority must make progress.
//! `KEEL_PROPTEST_CASES` sets the number of schedules (default 64).

mod support;

use keel_core::raft::{Config, Entry, StateRole};
use proptest::prelude::*;
use std::collections::BTreeMap;
use support::Network;

#[derive(Debug, Clone)]
enum Action {
    Tick(u64, u32),
    Process(u64),
    Deliver(usize),
    DeliverAll,
    Drop(usize),
    Duplicate(usize),
    Propose(u64),
    Partition(u8),
    Heal,
    Crash(u64),
    Restart(u64),
}

fn action(n: u64) -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (1..=n, 1..4u32).prop_map(|(i, t)| Action::Tick(i, t)),
        8 => (1..=n).prop_map(Action::Process),
        8 => any::<usize>().prop_map(Action::Deliver),
        3 => Just(Action::DeliverAll),
        2 => any::<usize>().prop_map(Action::Drop),
        1 => any::<usize>().prop_map(Action::Duplicate),
        4 => (1..=n).prop_map(Action::Propose),
        1 => any::<u8>().prop_map(Action::Partition),
        1 => Just(Action::Heal),
        1 => (1..=n).prop_map(Action::Crash),
        2 => (1..=n).prop_map(Action::Restart),
    ]
}

/// What the checks remember across steps.
#[derive(Default)]
struct Observer {
    /// Every committed entry seen applied anywhere, by index.
    committed: BTreeMap<u64, Entry>,
    /// (leader, term) -> the leader's log as last seen while it led in that term.
    leader_logs: BTreeMap<(u64, u64), Vec<Entry>>,
}

impl Observer {
    fn check(&mut self, net: &Network) {
        // Log matching (§5.3) and state machine safety (§5.4.3), pairwise.
        net.check_safety();
        for id in net.up_ids() {
            let node = net.nodes[&id].as_ref().unwrap();
            for e in &node.applied {
                // State machine safety: no two nodes apply different entries at one index.
                let prev = self.committed.entry(e.index).or_insert_with(|| e.clone());
                assert_eq!(prev, e, "state machine safety (§5.4.3): index {} applied differently", e.index);
            }
        }
        for id in net.up_ids() {
            let r = net.node(id);
            if r.role() != StateRole::Leader {
                continue;
            }
            let log = r.entries(r.first_index(), r.last_index() + 1);
            // Leader append-only (§5.3): while it leads in a term, a leader never overwrites or
            // deletes its entries.
            if let Some(before) = self.leader_logs.get(&(id, r.term())) {
                for e in before.iter().filter(|e| e.index >= r.first_index()) {
                    assert_eq!(
                        r.term_at(e.index),
                        Some(e.term),
                        "leader append-only (§5.3): leader {id} changed entry {}",
                        e.index
                    );
                }
            }
            // Leader completeness (§5.4): a leader holds every entry committed before its term.
            for (idx, e) in self.committed.range(r.first_index()..) {
                if e.term < r.term() {
                    let held = r.entries(*idx, *idx + 1);
                    assert_eq!(
                        held.first(),
                        Some(e),
                        "leader completeness (§5.4): leader {id} of term {} lacks committed entry {idx}",
                        r.term()
                    );
                }
            }
            self.leader_logs.insert((id, r.term()), log);
        }
    }
}

fn config(pre_vote: bool, check_quorum: bool) -> Config {
    let mut cfg = Config::new(1, 0);
    cfg.election_ticks = 5;
    cfg.pre_vote = pre_vote;
    cfg.check_quorum = check_quorum;
    cfg.inflight_msgs_max = 4;
    cfg.msg_bytes_max = 64;
    cfg
}

fn run(n: u64, seed: u64, pre_vote: bool, check_quorum: bool, actions: &[Action]) {
    let mut net = Network::new(n, config(pre_vote, check_quorum));
    net.seed = seed;
    let mut obs = Observer::default();
    let mut proposals = 0u32;
    for a in actions {
        match a {
            Action::Tick(i, t) => net.tick(*i, *t),
            Action::Process(i) => {
                net.process_ready(*i);
            }
            Action::Deliver(k) if !net.queue.is_empty() => {
                let m = net.queue.remove(k % net.queue.len());
                net.deliver_one(m);
            }
            Action::DeliverAll => {
                net.deliver(None);
            }
            Action::Drop(k) if !net.queue.is_empty() => {
                let len = net.queue.len();
                net.queue.remove(k % len);
            }
            Action::Duplicate(k) if !net.queue.is_empty() => {
                let m = net.queue[k % net.queue.len()].clone();
                net.deliver_one(m);
            }
            Action::Propose(i) if net.is_up(*i) => {
                proposals += 1;
                let _ = net.propose(*i, &format!("p{proposals}"));
            }
            Action::Partition(mask) => {
                let (a, b): (Vec<u64>, Vec<u64>) = (1..=n).partition(|id| mask & (1 << (id - 1)) != 0);
                net.heal();
                net.partition(&[a, b]);
            }
            Action::Heal => net.heal(),
            Action::Crash(i) => net.crash(*i),
            Action::Restart(i) => net.restart(*i),
            _ => {}
        }
        obs.check(&net);
    }
    // Liveness: heal everything, restart everyone; a leader emerges and commits a new entry
    // on every node.
    net.heal();
    for id in 1..=n {
        net.restart(id);
    }
    let mut committed_everywhere = false;
    for _round in 0..200 {
        net.stabilize();
        obs.check(&net);
        if let Some(l) = net.leader() {
            if net.node(l).role() == StateRole::Leader && net.propose(l, "final").is_ok() {
                for _ in 0..50 {
                    net.stabilize();
                    for id in 1..=n {
                        net.tick(id, 1);
                    }
                }
                net.stabilize();
                obs.check(&net);
                let last = net.node(l).last_index();
                committed_everywhere = (1..=n).all(|id| net.node(id).applied() >= last);
                if committed_everywhere {
                    break;
                }
            }
        }
        for id in 1..=n {
            net.tick(id, 1);
        }
    }
    assert!(
        committed_everywhere,
        "liveness: healed cluster did not commit a new entry on every node\n{}",
        net.describe_status().join("\n")
    );
}

fn cases() -> u32 {
    std::env::var("KEEL_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn safety_and_liveness_three_nodes(seed in any::<u64>(), pre_vote in any::<bool>(), cq in any::<bool>(), actions in prop::collection::vec(action(3), 0..300)) {
        run(3, seed, pre_vote, cq, &actions);
    }

    #[test]
    fn safety_and_liveness_five_nodes(seed in any::<u64>(), pre_vote in any::<bool>(), cq in any::<bool>(), actions in prop::collection::vec(action(5), 0..300)) {
        run(5, seed, pre_vote, cq, &actions);
    }
}
