//! An in-memory cluster of real Raft nodes for tests: every node's durable state is its
//! `MemStorage` (only what a `Ready` persisted reaches it), messages sit in one queue until
//! delivered, and a crash drops everything else. One stable `describe_*` family prints it all.
#![allow(dead_code)]

use bytes::Bytes;
use keel_core::raft::{
    ConfChange, ConfChangeType, ConfState, Config, Entry, EntryType, MemStorage, Message, MessageType,
    RawNode, Ready, StateRole, Storage,
};
use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet};

pub struct Node {
    pub raw: RawNode<MemStorage>,
    /// Entries applied, in order (the "state machine").
    pub applied: Vec<Entry>,
}

pub struct Network {
    pub cfg_template: Config,
    pub nodes: BTreeMap<u64, Option<Node>>,
    /// Durable state of crashed nodes.
    pub disks: BTreeMap<u64, MemStorage>,
    pub queue: Vec<Message>,
    /// Directed links that drop messages.
    pub cut: BTreeSet<(u64, u64)>,
    /// Every (term, leader) ever observed, for election safety.
    pub leaders: BTreeMap<u64, u64>,
    pub seed: u64,
    restarts: u64,
}

pub fn describe_entry(e: &Entry) -> String {
    let kind = if e.entry_type == EntryType::EntryConfChange as i32 {
        let cc = ConfChange::decode(e.data.clone()).map(|cc| describe_cc(&cc)).unwrap_or_else(|_| "?".into());
        return format!("{}/{} {cc}", e.term, e.index);
    } else {
        "EntryNormal"
    };
    format!("{}/{} {kind} {:?}", e.term, e.index, String::from_utf8_lossy(&e.data))
}

fn describe_cc(cc: &ConfChange) -> String {
    let t = match ConfChangeType::try_from(cc.change_type) {
        Ok(ConfChangeType::AddNode) => "v",
        Ok(ConfChangeType::AddLearnerNode) => "l",
        Ok(ConfChangeType::RemoveNode) => "r",
        Ok(ConfChangeType::UpdateNode) => "u",
        Err(_) => "?",
    };
    format!("{t}{}", cc.node_id)
}

pub fn describe_message(m: &Message) -> String {
    let t = MessageType::try_from(m.msg_type).map(|t| format!("{t:?}")).unwrap_or_else(|_| "?".into());
    let mut s = format!("{}->{} {} Term:{} Log:{}/{}", m.from, m.to, t, m.term, m.log_term, m.index);
    if m.reject {
        s += &format!(" Rejected (Hint: {})", m.reject_hint);
    }
    if m.commit > 0 {
        s += &format!(" Commit:{}", m.commit);
    }
    if !m.entries.is_empty() {
        s += &format!(" Entries:[{}]", m.entries.iter().map(describe_entry).collect::<Vec<_>>().join(", "));
    }
    if !m.context.is_empty() {
        s += &format!(" Context:{:?}", String::from_utf8_lossy(&m.context));
    }
    if let Some(snap) = &m.snapshot {
        let md = snap.metadata.clone().unwrap_or_default();
        s += &format!(
            " Snapshot: Index:{} Term:{} ConfState:{:?}",
            md.index,
            md.term,
            md.conf_state.unwrap_or_default().voters
        );
    }
    s
}

pub fn describe_ready(id: u64, rd: &Ready) -> Vec<String> {
    let mut out = vec![format!("Ready MustSync={}:", rd.must_sync)];
    if let Some(ss) = &rd.soft_state {
        out.push(format!("Lead:{} State:{:?}", ss.lead, ss.role));
    }
    if let Some(hs) = &rd.hard_state {
        out.push(format!("HardState Term:{} Vote:{} Commit:{}", hs.term, hs.vote, hs.commit));
    }
    if !rd.entries.is_empty() {
        out.push("Entries:".into());
        out.extend(rd.entries.iter().map(|e| format!("  {}", describe_entry(e))));
    }
    if let Some(snap) = &rd.snapshot {
        let md = snap.metadata.clone().unwrap_or_default();
        out.push(format!("Snapshot Index:{} Term:{}", md.index, md.term));
    }
    if !rd.committed_entries.is_empty() {
        out.push("CommittedEntries:".into());
        out.extend(rd.committed_entries.iter().map(|e| format!("  {}", describe_entry(e))));
    }
    if !rd.messages.is_empty() {
        out.push("Messages:".into());
        out.extend(rd.messages.iter().map(|m| format!("  {}", describe_message(m))));
    }
    if !rd.persisted_messages.is_empty() {
        out.push("Messages (after persistence):".into());
        out.extend(rd.persisted_messages.iter().map(|m| format!("  {}", describe_message(m))));
    }
    for rs in &rd.read_states {
        out.push(format!("ReadState Index:{} Ctx:{:?}", rs.index, String::from_utf8_lossy(&rs.request_ctx)));
    }
    out.into_iter().map(|l| format!("{id}: {l}")).collect()
}

impl Network {
    /// `n` voters (ids 1..=n) with an empty log and the same configuration.
    pub fn new(n: u64, cfg: Config) -> Self {
        let mut net = Network {
            cfg_template: cfg,
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            queue: Vec::new(),
            cut: BTreeSet::new(),
            leaders: BTreeMap::new(),
            seed: 0,
            restarts: 0,
        };
        let voters: Vec<u64> = (1..=n).collect();
        for id in 1..=n {
            net.add_node(id, ConfState { voters: voters.clone(), learners: vec![] });
        }
        net
    }

    /// A node joining with the given configuration and an empty log.
    pub fn add_node(&mut self, id: u64, cs: ConfState) {
        let mut store = MemStorage::new();
        store.set_conf_state(cs);
        self.disks.insert(id, store);
        self.start(id);
    }

    fn config(&self, id: u64) -> Config {
        let mut cfg = self.cfg_template.clone();
        cfg.id = id;
        cfg.seed = self.seed.wrapping_mul(1_000_003).wrapping_add(id * 7919 + self.restarts);
        cfg
    }

    fn start(&mut self, id: u64) {
        let store = self.disks.remove(&id).expect("a disk to start from");
        let raw = RawNode::new(&self.config(id), store);
        self.nodes.insert(id, Some(Node { raw, applied: Vec::new() }));
    }

    pub fn node(&self, id: u64) -> &RawNode<MemStorage> {
        &self.nodes[&id].as_ref().expect("node is up").raw
    }

    pub fn node_mut(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        &mut self.nodes.get_mut(&id).unwrap().as_mut().expect("node is up").raw
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.is_some())
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn up_ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.is_some()).map(|(id, _)| *id).collect()
    }

    /// Crash: everything not persisted (unstable entries, queued output, the state machine) is
    /// gone; messages already sent stay in flight.
    pub fn crash(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id).and_then(|n| n.take()) {
            self.disks.insert(id, node.raw.store().clone());
        }
    }

    pub fn restart(&mut self, id: u64) {
        if !self.is_up(id) {
            self.restarts += 1;
            self.start(id);
        }
    }

    /// Handles one Ready of `id` as a driver would; returns its description.
    pub fn process_ready(&mut self, id: u64) -> Vec<String> {
        let Some(Some(node)) = self.nodes.get_mut(&id) else { return Vec::new() };
        if !node.raw.has_ready() {
            return Vec::new();
        }
        let rd = node.raw.ready();
        let desc = describe_ready(id, &rd);
        self.queue.extend(rd.messages.iter().cloned());
        if let Some(snap) = &rd.snapshot {
            node.raw.store_mut().apply_snapshot(snap.clone());
            node.applied.clear();
        }
        node.raw.store_mut().append(&rd.entries);
        if let Some(hs) = rd.hard_state {
            node.raw.store_mut().set_hard_state(hs);
        }
        self.queue.extend(rd.persisted_messages.iter().cloned());
        for e in &rd.committed_entries {
            if e.entry_type == EntryType::EntryConfChange as i32 {
                let cc = ConfChange::decode(e.data.clone()).expect("conf change decodes");
                let cs = node.raw.apply_conf_change(&cc);
                node.raw.store_mut().set_conf_state(cs);
            }
            node.applied.push(e.clone());
        }
        node.raw.advance(rd);
        if node.raw.role() == StateRole::Leader {
            let (term, lead) = (node.raw.term(), id);
            let prev = *self.leaders.entry(term).or_insert(lead);
            assert_eq!(prev, lead, "election safety (§5.2): two leaders in term {term}: {prev} and {lead}");
        }
        desc
    }

    /// Delivers queued messages (to `to` only, if given) and returns their descriptions.
    pub fn deliver(&mut self, to: Option<u64>) -> Vec<String> {
        let (now, keep): (Vec<Message>, Vec<Message>) =
            std::mem::take(&mut self.queue).into_iter().partition(|m| to.is_none_or(|t| m.to == t));
        self.queue = keep;
        let mut out = Vec::new();
        for m in now {
            out.extend(self.deliver_one(m));
        }
        out
    }

    pub fn deliver_one(&mut self, m: Message) -> Vec<String> {
        if self.cut.contains(&(m.from, m.to)) {
            return vec![format!("dropped: {}", describe_message(&m))];
        }
        let desc = describe_message(&m);
        match self.nodes.get_mut(&m.to) {
            Some(Some(node)) => {
                let _ = node.raw.step(m);
                vec![desc]
            }
            _ => vec![format!("dropped (down): {desc}")],
        }
    }

    /// Processes Readies and delivers messages until nothing moves.
    pub fn stabilize(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let mut moved = false;
            for id in self.up_ids() {
                let d = self.process_ready(id);
                moved |= !d.is_empty();
                out.extend(d);
            }
            if !self.queue.is_empty() {
                moved = true;
                out.extend(self.deliver(None));
            }
            if !moved {
                return out;
            }
        }
        panic!("the network did not stabilize");
    }

    pub fn isolate(&mut self, id: u64) {
        for other in self.ids() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    /// Splits the cluster into groups that cannot talk to each other.
    pub fn partition(&mut self, groups: &[Vec<u64>]) {
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for &x in a {
                        for &y in b {
                            self.cut.insert((x, y));
                        }
                    }
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn tick(&mut self, id: u64, n: u32) {
        for _ in 0..n {
            if self.is_up(id) {
                self.node_mut(id).tick();
            }
        }
    }

    pub fn propose(&mut self, id: u64, data: &str) -> Result<(), keel_core::raft::ProposeError> {
        self.node_mut(id).propose(Bytes::copy_from_slice(data.as_bytes()))
    }

    pub fn leader(&self) -> Option<u64> {
        self.up_ids().into_iter().find(|&id| self.node(id).role() == StateRole::Leader)
    }

    pub fn describe_status(&self) -> Vec<String> {
        self.ids()
            .into_iter()
            .map(|id| match &self.nodes[&id] {
                None => format!("{id}: down"),
                Some(n) => {
                    let r = &n.raw;
                    format!(
                        "{id}: {:?} Term:{} Vote:{} Lead:{} Commit:{} Applied:{} Last:{} Voters:{:?} Learners:{:?}",
                        r.role(),
                        r.term(),
                        r.vote(),
                        r.leader(),
                        r.committed(),
                        r.applied(),
                        r.last_index(),
                        r.conf_state().voters,
                        r.conf_state().learners
                    )
                }
            })
            .collect()
    }

    pub fn describe_log(&self, id: u64) -> Vec<String> {
        let r = self.node(id);
        let first = r.first_index();
        r.entries(first, r.last_index() + 1).iter().map(describe_entry).collect()
    }

    /// The safety properties that can be checked on a snapshot of the cluster:
    /// log matching (§5.3) over every pair of nodes, and state machine safety (§5.4.3):
    /// every node's applied entries are a prefix of every other's, or vice versa.
    pub fn check_safety(&self) {
        let ups = self.up_ids();
        for (i, &a) in ups.iter().enumerate() {
            for &b in &ups[i + 1..] {
                let (ra, rb) = (self.node(a), self.node(b));
                let lo = ra.first_index().max(rb.first_index());
                let hi = ra.last_index().min(rb.last_index());
                // Log matching: find the highest index with equal terms; everything before it
                // must be identical.
                let mut top = 0;
                for idx in (lo..=hi).rev() {
                    if ra.term_at(idx).is_some() && ra.term_at(idx) == rb.term_at(idx) {
                        top = idx;
                        break;
                    }
                }
                if top >= lo {
                    assert_eq!(
                        ra.entries(lo, top + 1),
                        rb.entries(lo, top + 1),
                        "log matching (§5.3): nodes {a} and {b} agree on the term at {top} but not on the entries before it"
                    );
                }
                let (aa, ab) =
                    (&self.nodes[&a].as_ref().unwrap().applied, &self.nodes[&b].as_ref().unwrap().applied);
                for (ea, eb) in aa.iter().zip(ab.iter()) {
                    if ea.index == eb.index {
                        assert_eq!(ea, eb, "state machine safety (§5.4.3): nodes {a} and {b} applied different entries at {}", ea.index);
                    }
                }
            }
        }
    }
}

pub fn conf_change(kind: &str, node: u64) -> ConfChange {
    let change_type = match kind {
        "add" | "v" => ConfChangeType::AddNode,
        "add-learner" | "l" => ConfChangeType::AddLearnerNode,
        "remove" | "r" => ConfChangeType::RemoveNode,
        other => panic!("unknown conf change {other}"),
    };
    ConfChange { change_type: change_type as i32, node_id: node, context: Bytes::new(), ..Default::default() }
}

/// The storage the tests read directly (first index, terms) for a node that is up.
pub fn term_at(store: &MemStorage, idx: u64) -> Option<u64> {
    store.term(idx).ok()
}
