//! One test per safety claim of the Raft paper (Figure 3), each a scenario built to stress it,
//! named after the section that states it. The random-schedule property tests check the same
//! claims on arbitrary schedules; these show each one where it matters most.

mod support;

use keel_core::raft::{Config, Entry, Message, MessageType, StateRole};
use support::Network;

fn cfg() -> Config {
    let mut c = Config::new(1, 0);
    c.pre_vote = false;
    c.check_quorum = false;
    c
}

fn elect(net: &mut Network, id: u64) {
    net.node_mut(id).campaign();
    net.stabilize();
    assert_eq!(
        net.node(id).role(),
        StateRole::Leader,
        "{id} should have won:\n{}",
        net.describe_status().join("\n")
    );
}

/// Processes `id`'s Readies and delivers what they send, except messages `drop` rejects.
fn pump(net: &mut Network, ids: &[u64], drop: impl Fn(&Message) -> bool) {
    for _ in 0..50 {
        let mut moved = false;
        for &id in ids {
            moved |= !net.process_ready(id).is_empty();
        }
        let msgs = std::mem::take(&mut net.queue);
        moved |= !msgs.is_empty();
        for m in msgs {
            if !drop(&m) {
                if std::env::var_os("PUMP_DEBUG").is_some() {
                    eprintln!("deliver {}", support::describe_message(&m));
                }
                net.deliver_one(m);
            }
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn election_safety_5_2_at_most_one_leader_per_term() {
    let mut net = Network::new(5, cfg());
    // Two candidates at once in the same term split the votes; neither may win twice over.
    net.node_mut(1).campaign();
    net.node_mut(2).campaign();
    net.stabilize();
    assert!(net.up_ids().iter().filter(|&&i| net.node(i).role() == StateRole::Leader).count() <= 1);
    // A minority partition cannot elect; the majority can; healing leaves one leader per term.
    // (Whoever led before is put in the minority, where it stays a stale leader.)
    let old = net.leader().unwrap_or(1);
    let minority_candidate = if old == 1 { 2 } else { 1 };
    let mut minority = vec![old, minority_candidate];
    minority.dedup();
    let majority: Vec<u64> = (1..=5).filter(|i| !minority.contains(i)).collect();
    net.partition(&[minority.clone(), majority.clone()]);
    net.node_mut(minority_candidate).campaign();
    net.node_mut(majority[0]).campaign();
    net.stabilize();
    assert_ne!(net.node(minority_candidate).role(), StateRole::Leader, "a minority cannot elect a leader");
    assert_eq!(net.node(majority[0]).role(), StateRole::Leader, "a majority can");
    net.heal();
    net.node_mut(minority_candidate).campaign();
    net.stabilize();
    // `Network` asserts on every Ready that no term ever has two leaders.
    assert!(net.leaders.len() >= 2, "several terms had leaders: {:?}", net.leaders);
}

#[test]
fn leader_append_only_5_3_a_stale_leader_cannot_overwrite_the_current_one() {
    let mut net = Network::new(3, cfg());
    elect(&mut net, 1);
    net.isolate(1);
    elect(&mut net, 2);
    net.propose(2, "new").unwrap();
    net.stabilize();
    let before = net.describe_log(2);
    // The deposed leader's append (older term) reaches the new leader directly.
    let stale = Message {
        msg_type: MessageType::MsgApp as i32,
        from: 1,
        to: 2,
        term: 1,
        index: 1,
        log_term: 1,
        entries: vec![Entry { term: 1, index: 2, data: "old".into(), ..Default::default() }],
        commit: 1,
        ..Default::default()
    };
    net.heal();
    net.deliver_one(stale);
    net.stabilize();
    assert_eq!(net.node(2).role(), StateRole::Leader);
    assert_eq!(net.describe_log(2), before, "a leader never overwrites or deletes its entries");
}

#[test]
fn log_matching_5_3_divergent_logs_converge_to_the_leaders() {
    let mut net = Network::new(3, cfg());
    elect(&mut net, 1);
    net.isolate(1);
    for i in 0..5 {
        net.propose(1, &format!("lost{i}")).unwrap();
    }
    net.stabilize();
    elect(&mut net, 2);
    net.propose(2, "kept").unwrap();
    net.stabilize();
    net.heal();
    net.tick(2, 1);
    net.stabilize();
    net.check_safety();
    assert_eq!(net.describe_log(1), net.describe_log(2), "same index and term implies identical prefixes");
    assert!(
        !net.describe_log(1).iter().any(|e| e.contains("lost")),
        "uncommitted entries of the old term are gone"
    );
}

#[test]
fn leader_completeness_5_4_1_a_stale_log_cannot_win_an_election() {
    let mut net = Network::new(3, cfg());
    elect(&mut net, 1);
    net.isolate(3);
    net.propose(1, "committed").unwrap();
    net.stabilize();
    assert_eq!(net.node(2).committed(), net.node(1).committed());
    net.crash(1);
    net.heal();
    // Node 3 missed the committed entry: node 2 must refuse it its vote (§5.4.1).
    net.node_mut(3).campaign();
    net.stabilize();
    assert_ne!(net.node(3).role(), StateRole::Leader, "a candidate lacking a committed entry won");
    elect(&mut net, 2);
    assert!(net.describe_log(2).iter().any(|e| e.contains("committed")));
}

/// Figure 8, in three nodes: the leader of term 3 replicates an entry of term 1 to a majority
/// and must still not commit it by counting replicas; it is committed only together with an
/// entry of the leader's own term (§5.4.2).
#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed_5_4_2() {
    let mut c = cfg();
    c.msg_bytes_max = 1; // One entry per append, so each can be delivered on its own.
    let mut net = Network::new(3, c);
    elect(&mut net, 1); // term 1; 1/1 committed everywhere
    net.isolate(1);
    net.propose(1, "old-term").unwrap(); // 1/2 on node 1 only
    net.stabilize();
    net.crash(1);
    net.heal();
    // Node 2 wins term 2 with node 3's vote, but its own entry never reaches anyone.
    net.node_mut(2).campaign();
    pump(&mut net, &[2, 3], |m| m.msg_type == MessageType::MsgApp as i32);
    assert_eq!(net.node(2).role(), StateRole::Leader);
    net.crash(2);
    // Node 1 returns; its first campaign (term 2) fails, node 3 having voted in term 2; the
    // second (term 3) wins, since 1's log (1/2) is more up to date than 3's (1/1).
    net.restart(1);
    net.node_mut(1).campaign();
    pump(&mut net, &[1, 3], |_| false);
    net.node_mut(1).campaign();
    // Let the term-1 entry reach node 3, but not the term-3 entry after it (the first append
    // carrying index 3 is a probe that node 3 rejects; later ones are dropped).
    let seen = std::cell::Cell::new(0);
    pump(&mut net, &[1, 3], |m| {
        let carries_3 =
            m.to == 3 && m.msg_type == MessageType::MsgApp as i32 && m.entries.iter().any(|e| e.index == 3);
        if carries_3 {
            seen.set(seen.get() + 1);
        }
        carries_3 && seen.get() > 1
    });
    assert_eq!((net.node(1).role(), net.node(1).term()), (StateRole::Leader, 3));
    assert_eq!(net.node(3).term_at(2), Some(1), "node 3 now holds the term-1 entry: a majority has it");
    assert_eq!(net.node(1).progress()[&3].matched, 2);
    assert_eq!(
        net.node(1).committed(),
        1,
        "an entry of an earlier term is never committed by counting replicas"
    );
    // Once the term-3 entry is on a majority, both commit.
    net.tick(1, 1);
    net.stabilize();
    assert_eq!(net.node(1).committed(), 3);
    assert_eq!(net.node(3).committed(), 3);
}

/// Ticks every node until a leader of the highest term exists.
fn await_leader(net: &mut Network) -> u64 {
    for _ in 0..500 {
        for id in net.up_ids() {
            net.tick(id, 1);
        }
        net.stabilize();
        let max_term = net.up_ids().iter().map(|&i| net.node(i).term()).max().unwrap();
        if let Some(l) = net
            .up_ids()
            .into_iter()
            .find(|&i| net.node(i).role() == StateRole::Leader && net.node(i).term() == max_term)
        {
            return l;
        }
    }
    panic!("no leader emerged:\n{}", net.describe_status().join("\n"));
}

#[test]
fn state_machine_safety_5_4_3_every_node_applies_the_same_entry_at_each_index() {
    let mut c = cfg();
    c.check_quorum = true;
    c.pre_vote = true;
    let mut net = Network::new(5, c);
    let mut leader = await_leader(&mut net);
    for round in 0..6u64 {
        net.propose(leader, &format!("r{round}-a")).unwrap();
        // The leader reaches only some followers before it is cut off; whatever it committed
        // must survive, and whatever it did not may be lost, but never applied differently.
        let ups = net.up_ids();
        pump(&mut net, &ups, |m| m.from == leader && m.to % 2 == round % 2);
        net.isolate(leader);
        let old = leader;
        let others: Vec<u64> = net.up_ids().into_iter().filter(|&i| i != old).collect();
        for _ in 0..100 {
            for &id in &others {
                net.tick(id, 1);
            }
            net.stabilize();
            if others.iter().any(|&i| net.node(i).role() == StateRole::Leader) {
                break;
            }
        }
        net.heal();
        leader = await_leader(&mut net);
        net.propose(leader, &format!("r{round}-b")).unwrap();
        net.stabilize();
        net.check_safety();
    }
    for _ in 0..3 {
        net.tick(leader, 1);
        net.stabilize();
    }
    let applied: Vec<Vec<Entry>> =
        net.up_ids().iter().map(|id| net.nodes[id].as_ref().unwrap().applied.clone()).collect();
    let shortest = applied.iter().map(Vec::len).min().unwrap();
    for a in &applied {
        assert_eq!(&a[..shortest], &applied[0][..shortest], "applied sequences are prefixes of one another");
    }
    assert!(
        shortest > 6,
        "the scenario committed entries ({shortest}):\n{}",
        net.describe_status().join("\n")
    );
}
