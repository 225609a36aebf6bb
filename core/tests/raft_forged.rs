//! Messages no honest member sends — forged, from outside the configuration, or lying about
//! terms and indexes — are refused at `RawNode::step` and change nothing: no panic, no term
//! adopted, no leader change, no entry appended or committed.

mod support;

use keel_core::pb::keelpb::{ConfChange, EntryType, Snapshot, SnapshotMetadata};
use keel_core::raft::{Config, Entry, Message, MessageType, ProposeError, StateRole};
use prost::Message as _;
use support::Network;

fn cfg() -> Config {
    let mut c = Config::new(1, 0);
    c.proposal_check = Some(keel_core::state_machine::entry_decodes);
    c.snapshot_check = Some(keel_core::state_machine::snapshot_matches);
    c
}

fn cluster() -> Network {
    let mut net = Network::new(3, cfg());
    net.node_mut(1).campaign();
    net.stabilize();
    net.propose(1, "a").unwrap();
    net.stabilize();
    assert_eq!(net.node(1).role(), StateRole::Leader);
    net
}

fn snapshot_of(net: &Network) -> Vec<(u64, StateRole, u64, u64, u64, u64)> {
    net.ids()
        .into_iter()
        .map(|id| {
            let n = net.node(id);
            (n.term(), n.role(), n.leader(), n.last_index(), n.committed(), n.vote())
        })
        .collect()
}

fn msg(t: MessageType, from: u64, to: u64, term: u64) -> Message {
    Message { msg_type: t as i32, from, to, term, ..Default::default() }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, data: "forged".into(), ..Default::default() }
}

#[test]
fn forged_messages_are_refused_and_change_nothing() {
    let mut net = cluster();
    let before = snapshot_of(&net);
    let (term, last) = (net.node(1).term(), net.node(1).last_index());
    let huge = u64::MAX;
    let forged: Vec<(u64, Message, &str)> = vec![
        // From an id outside the configuration, whatever it says.
        (2, msg(MessageType::MsgHeartbeat, 99, 2, term + 5), "sender not in"),
        (1, Message { entries: vec![entry(0, 0)], ..msg(MessageType::MsgProp, 99, 1, 0) }, "sender not in"),
        (2, msg(MessageType::MsgTimeoutNow, 99, 2, term), "sender not in"),
        // Terms that would overflow a member's `term + 1`.
        (2, msg(MessageType::MsgHeartbeat, 3, 2, huge), "term out of range"),
        (1, msg(MessageType::MsgVote, 3, 1, huge), "term out of range"),
        // For another member; with no sender; local-only types.
        (2, msg(MessageType::MsgHeartbeat, 1, 3, term), "another node"),
        (2, msg(MessageType::MsgHeartbeat, 0, 2, term), "without a sender"),
        (1, msg(MessageType::MsgTransferLeader, 2, 1, term), "local message"),
        (1, msg(MessageType::MsgHup, 2, 1, term), "local message"),
        (1, msg(MessageType::MsgSnapStatus, 2, 1, term), "local message"),
        (1, Message { msg_type: 99, ..msg(MessageType::MsgApp, 2, 1, term) }, "unknown message type"),
        // A forwarded proposal or read that carries a term (it would move the receiver's term).
        (
            2,
            Message {
                entries: vec![Entry { data: vec![].into(), ..Default::default() }],
                ..msg(MessageType::MsgProp, 1, 2, term + 9)
            },
            "with a term",
        ),
        (
            1,
            Message { entries: vec![Entry::default()], ..msg(MessageType::MsgReadIndex, 2, 1, term + 9) },
            "with a term",
        ),
        // Votes without a term (they would be answered with term 0).
        (1, msg(MessageType::MsgPreVote, 2, 1, 0), "without a term"),
        (1, msg(MessageType::MsgVoteResp, 2, 1, 0), "without a term"),
        // A leader's acknowledgement past the end of its log, or a hint there.
        (1, Message { index: last + 1000, ..msg(MessageType::MsgAppResp, 2, 1, term) }, "past the end"),
        (
            1,
            Message {
                reject: true,
                index: last,
                reject_hint: huge,
                ..msg(MessageType::MsgAppResp, 2, 1, term)
            },
            "index out of range",
        ),
        // Appends whose entries do not follow their index, or whose terms are out of order.
        (
            2,
            Message { index: huge, entries: vec![entry(0, term)], ..msg(MessageType::MsgApp, 1, 2, term) },
            "index out of range",
        ),
        (
            2,
            Message { index: 1, entries: vec![entry(5, term)], ..msg(MessageType::MsgApp, 1, 2, term) },
            "not contiguous",
        ),
        (
            2,
            Message {
                index: 1,
                log_term: 1,
                entries: vec![entry(2, term + 1)],
                ..msg(MessageType::MsgApp, 1, 2, term)
            },
            "term order",
        ),
        (2, Message { index: 1, log_term: term + 1, ..msg(MessageType::MsgApp, 1, 2, term) }, "later term"),
        (
            2,
            Message {
                entries: vec![Entry { entry_type: 7, index: 1, term, ..Default::default() }],
                ..msg(MessageType::MsgApp, 1, 2, term)
            },
            "unknown type",
        ),
        // A snapshot without metadata, or one that claims a later term than its message.
        (
            2,
            Message { snapshot: Some(Snapshot::default()), ..msg(MessageType::MsgSnap, 1, 2, term) },
            "without metadata",
        ),
        (
            2,
            Message {
                snapshot: Some(Snapshot {
                    metadata: Some(SnapshotMetadata { index: 10, term: term + 1, ..Default::default() }),
                    ..Default::default()
                }),
                ..msg(MessageType::MsgSnap, 1, 2, term)
            },
            "out of range",
        ),
        // Indexes past any reachable one (`index + 1` would overflow further on).
        (
            2,
            Message {
                index: keel_core::raft::INDEX_MAX,
                log_term: 1,
                entries: vec![entry(keel_core::raft::INDEX_MAX + 1, term)],
                ..msg(MessageType::MsgApp, 1, 2, term)
            },
            "index out of range",
        ),
        (2, Message { index: huge - 1, ..msg(MessageType::MsgHeartbeat, 1, 2, term) }, "index out of range"),
        (
            2,
            Message {
                snapshot: Some(Snapshot {
                    metadata: Some(SnapshotMetadata { index: huge, term, ..Default::default() }),
                    ..Default::default()
                }),
                ..msg(MessageType::MsgSnap, 1, 2, term)
            },
            "out of range",
        ),
        // A snapshot whose data is not the state its metadata names (it would replace the
        // member's state with another point of the log).
        (
            2,
            Message {
                snapshot: Some(Snapshot {
                    metadata: Some(SnapshotMetadata { index: 100, term, ..Default::default() }),
                    data: vec![0x0a, 0x02, 0x08, 0x05].into(), // a state record at index 5
                }),
                ..msg(MessageType::MsgSnap, 1, 2, term)
            },
            "not the state its metadata names",
        ),
        // A proposal without entries, or whose entries the state machine could not decode (a
        // request of garbage bytes, a configuration change of an unknown type).
        (1, msg(MessageType::MsgProp, 2, 1, 0), "without entries"),
        (
            1,
            Message {
                entries: vec![Entry { data: vec![0xff; 9].into(), ..Default::default() }],
                ..msg(MessageType::MsgProp, 2, 1, 0)
            },
            "does not decode",
        ),
        (
            1,
            Message {
                entries: vec![Entry {
                    entry_type: EntryType::EntryConfChange as i32,
                    data: ConfChange { change_type: 99, node_id: 5, ..Default::default() }
                        .encode_to_vec()
                        .into(),
                    ..Default::default()
                }],
                ..msg(MessageType::MsgProp, 2, 1, 0)
            },
            "does not decode",
        ),
    ];
    for (to, m, why) in forged {
        let shown = format!("{m:?}");
        match net.node_mut(to).step(m) {
            Err(ProposeError::BadMessage(reason)) => assert!(reason.contains(why), "{shown}: {reason}"),
            other => panic!("{shown} was not refused: {other:?}"),
        }
        net.stabilize();
        assert_eq!(snapshot_of(&net), before, "{shown} changed the cluster");
    }
    // The cluster goes on as before.
    net.propose(1, "b").unwrap();
    net.stabilize();
    assert_eq!(net.node(3).committed(), last + 1);
    net.check_safety();
}

/// A TimeoutNow from a member that is not the leader does not start an election.
#[test]
fn timeout_now_counts_only_from_the_leader() {
    let mut net = cluster();
    let before = snapshot_of(&net);
    let term = net.node(1).term();
    net.node_mut(2).step(msg(MessageType::MsgTimeoutNow, 3, 2, term)).unwrap();
    net.stabilize();
    assert_eq!(snapshot_of(&net), before);
}

/// A node that has no configuration yet (a member joining a running cluster) hears from the
/// leader it is about to learn of.
#[test]
fn a_joining_node_with_no_configuration_accepts_its_first_leader() {
    let mut net = cluster();
    net.add_node(4, Default::default());
    let term = net.node(1).term();
    net.node_mut(4).step(msg(MessageType::MsgHeartbeat, 1, 4, term)).unwrap();
    assert_eq!(net.node(4).leader(), 1);
}
