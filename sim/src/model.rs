//! A deliberately dumb model of etcd's key-value semantics, replayed over the committed log, and
//! the checks of what clients saw against it.
//!
//! # Why the log, and what is checked
//!
//! The simulator sees every entry any member applies, and already asserts that all members
//! apply the same entry at each index. Replaying that committed log, in index order, over an
//! independent model (a map of key histories, not Keel's MVCC store) gives the ground truth:
//! the revision every write made, the state at every revision, the events of every revision.
//! Against it the simulator checks, black-box, what clients and watchers were told:
//!
//! * every acknowledged write and txn: its reply (branch taken, ranges read inside it, keys
//!   deleted, error) and its `header.revision` are what the model computes for its entry;
//! * every read: its keys are the model's state at the revision its header reports;
//! * real time agrees with revision order: if op A completed before op B was invoked, then
//!   rev(A) <= rev(B), strictly if B changed something (etcd's linearizability in revisions);
//! * a request refused at once never reaches the log;
//! * every member's store holds the model's history at every revision it still keeps;
//! * a lease revoke (a client's or an expiry's) deletes all the lease's keys in one revision,
//!   and nothing else does (the model deletes them there and only there);
//! * a watcher receives exactly the model's events in its range from its start revision, in
//!   order, without duplicates or gaps, each revision whole in one response; a progress
//!   notification never runs ahead of what it sent; a watch is canceled as compacted only when
//!   it needed a revision a committed compaction removed.
//!
//! An operation of unknown outcome (its client gave up) needs no guessing: the log says whether
//! it happened, and its effects are in the model like any other entry's.

use keel_core::pb::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, response_op, Compare, DeleteRangeRequest, PutRequest, TxnRequest,
};
use keel_core::pb::keelpb::request::Op;
use keel_core::pb::keelpb::Request;
use keel_core::pb::mvccpb::{event::EventType, Event, KeyValue};
use keel_core::state_machine::{ApplyError, WriteResponse};
use prost::bytes::Bytes;
use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What one op inside a txn (or a plain write) returned, as the model computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Range(Vec<KeyValue>),
    Put,
    Delete(i64),
}

/// What the model says one request did when its entry was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A put, delete or txn: the header revision its reply carries, whether it changed anything,
    /// and its results (a txn's branch and ops; a put or delete is a one-op success).
    Kv {
        revision: i64,
        changed: bool,
        succeeded: bool,
        results: Vec<OpResult>,
    },
    /// A request the state machine refuses (an unknown lease, a compaction out of range).
    Error,
    LeaseGrant,
    /// A revoke that took: the revision its keys were deleted at (unchanged if it had none).
    LeaseRevoke {
        revision: i64,
        keys: usize,
    },
    Compaction,
    Other,
}

/// The model's state and history.
#[derive(Default)]
pub struct Model {
    revision: i64,
    compacted: i64,
    /// Every version of every key, ascending by revision; `None` is a deletion.
    keys: BTreeMap<Bytes, Vec<(i64, Option<KeyValue>)>>,
    /// Live leases and the keys attached to each.
    leases: BTreeMap<i64, BTreeSet<Bytes>>,
    /// The events of each revision, in order (prev_kv filled).
    events: BTreeMap<i64, Vec<Event>>,
    /// Revisions a committed compaction compacted at.
    compactions: BTreeSet<i64>,
    /// What each request did, by request id: the first application (a repeated id applies
    /// nothing).
    pub outcomes: HashMap<u64, Outcome>,
}

/// etcd's range rule, written again on purpose rather than taken from `keel_core::mvcc::range`:
/// the model is the oracle, so a mistake there must show up as a difference, not be shared.
fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

impl Model {
    pub fn new() -> Self {
        Model { revision: 1, ..Default::default() }
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    /// The live leases, by id, with their attached keys.
    pub fn leases(&self) -> &BTreeMap<i64, BTreeSet<Bytes>> {
        &self.leases
    }

    pub fn compactions(&self) -> &BTreeSet<i64> {
        &self.compactions
    }

    fn live(&self, key: &[u8], at: i64) -> Option<&KeyValue> {
        let h = self.keys.get(key)?;
        h.iter().rev().find(|(r, _)| *r <= at).and_then(|(_, kv)| kv.as_ref())
    }

    /// The live keys in `[key, end)` (etcd's range rules) at revision `at`, in key order.
    pub fn range_at(&self, key: &[u8], end: &[u8], at: i64) -> Vec<KeyValue> {
        self.keys.keys().filter(|k| in_range(k, key, end)).filter_map(|k| self.live(k, at).cloned()).collect()
    }

    /// The events of revision `rev` on keys in `[key, end)`, as a watcher with `prev_kv` gets them.
    pub fn events_at(&self, rev: i64, key: &[u8], end: &[u8], prev_kv: bool) -> Vec<Event> {
        let Some(evs) = self.events.get(&rev) else { return Vec::new() };
        evs.iter()
            .filter(|e| in_range(&e.kv.as_ref().expect("an event has a kv").key, key, end))
            .map(|e| Event { prev_kv: if prev_kv { e.prev_kv.clone() } else { None }, ..e.clone() })
            .collect()
    }

    /// The revisions in `[from, to]` with events on keys in `[key, end)`.
    pub fn event_revisions(&self, from: i64, to: i64, key: &[u8], end: &[u8]) -> Vec<i64> {
        if from > to {
            return Vec::new();
        }
        self.events
            .range(from..=to)
            .filter(|(r, evs)| {
                evs.iter().any(|e| in_range(&e.kv.as_ref().unwrap().key, key, end) && !self.optional(**r, e))
            })
            .map(|(r, _)| *r)
            .collect()
    }

    /// Whether a watcher may not get event `e` of revision `rev`: a compaction at exactly `rev`
    /// keeps the revision readable but removes its tombstones (as etcd's does), so a watcher
    /// that reads it from history after the compaction sees its puts and not its deletes.
    pub fn optional(&self, rev: i64, e: &Event) -> bool {
        e.r#type == EventType::Delete as i32 && self.compactions.contains(&rev)
    }

    /// Applies one committed normal entry's data (empty for a leader's empty entry).
    pub fn apply(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let request = Request::decode(data).expect("a committed entry decodes");
        if request.id != 0 && self.outcomes.contains_key(&request.id) {
            return; // a repeated proposal applies nothing
        }
        let outcome = match request.op {
            Some(Op::Put(p)) => {
                self.txn(&TxnRequest { compare: vec![], success: vec![request_op_put(p)], failure: vec![] })
            }
            Some(Op::DeleteRange(d)) => self.txn(&TxnRequest {
                compare: vec![],
                success: vec![request_op_delete(d)],
                failure: vec![],
            }),
            Some(Op::Txn(t)) => self.txn(&t),
            Some(Op::LeaseGrant(g)) => match self.leases.entry(g.id) {
                std::collections::btree_map::Entry::Occupied(_) => Outcome::Error,
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(BTreeSet::new());
                    Outcome::LeaseGrant
                }
            },
            Some(Op::LeaseRevoke(r)) => match self.leases.remove(&r.id) {
                None => Outcome::Error,
                Some(keys) => {
                    let main = self.revision + 1;
                    let mut evs = Vec::new();
                    for k in &keys {
                        let prev = self.live(k, self.revision).cloned().expect("an attached key is live");
                        evs.push(self.record_delete(k, prev, main));
                    }
                    if !evs.is_empty() {
                        self.revision = main;
                        self.events.insert(main, evs);
                    }
                    Outcome::LeaseRevoke { revision: self.revision, keys: keys.len() }
                }
            },
            Some(Op::Compaction(c)) => {
                if c.revision <= self.compacted || c.revision > self.revision {
                    Outcome::Error
                } else {
                    self.compacted = c.revision;
                    self.compactions.insert(c.revision);
                    Outcome::Compaction
                }
            }
            Some(Op::LeaseCheckpoint(_)) | Some(Op::MemberAttributes(_)) | None => Outcome::Other,
            // A NOSPACE alarm would make the state machine refuse writes the model applies.
            Some(Op::Alarm(_)) => panic!("the model knows no alarms, and the sim raises none"),
        };
        if request.id != 0 {
            self.outcomes.insert(request.id, outcome);
        }
    }

    fn record_delete(&mut self, key: &Bytes, prev: KeyValue, main: i64) -> Event {
        self.keys.get_mut(key).expect("a live key has a history").push((main, None));
        self.detach(key);
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue { key: key.clone(), mod_revision: main, ..Default::default() }),
            prev_kv: Some(prev),
        }
    }

    fn detach(&mut self, key: &[u8]) {
        for keys in self.leases.values_mut() {
            keys.remove(key);
        }
    }

    fn compare(&self, c: &Compare) -> bool {
        assert!(c.range_end.is_empty(), "the model compares single keys");
        let target = CompareTarget::try_from(c.target).expect("a known target");
        let kv = match self.live(&c.key, self.revision) {
            Some(kv) => kv.clone(),
            // etcd compares a missing key as a zero-valued one, except on its value.
            None if target == CompareTarget::Value => return false,
            None => KeyValue::default(),
        };
        let ord = match c.target_union.as_ref().expect("a compare has a target") {
            TargetUnion::Value(v) => kv.value[..].cmp(&v[..]),
            TargetUnion::Version(v) => kv.version.cmp(v),
            TargetUnion::CreateRevision(v) => kv.create_revision.cmp(v),
            TargetUnion::ModRevision(v) => kv.mod_revision.cmp(v),
            TargetUnion::Lease(v) => kv.lease.cmp(v),
        };
        match CompareResult::try_from(c.result).expect("a known result") {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::NotEqual => ord.is_ne(),
            CompareResult::Greater => ord.is_gt(),
            CompareResult::Less => ord.is_lt(),
        }
    }

    /// A flat txn (no nested txns): compares against the state before it, then the chosen
    /// branch's ops in order, all at one revision, each seeing the ones before it. A put on a
    /// lease that does not exist fails the whole txn, before anything is written.
    fn txn(&mut self, t: &TxnRequest) -> Outcome {
        let succeeded = t.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded { &t.success } else { &t.failure };
        for op in ops {
            if let Some(request_op::Request::RequestPut(p)) = &op.request {
                if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                    return Outcome::Error;
                }
            }
        }
        let main = self.revision + 1;
        let mut evs: Vec<Event> = Vec::new();
        let mut results = Vec::new();
        for op in ops {
            let result = match op.request.as_ref().expect("an op") {
                request_op::Request::RequestRange(r) => {
                    assert_eq!(r.revision, 0, "the model reads the txn's own revision");
                    let at = if evs.is_empty() { self.revision } else { main };
                    OpResult::Range(self.range_at(&r.key, &r.range_end, at))
                }
                request_op::Request::RequestPut(p) => {
                    let prev = self.live(&p.key, main).cloned();
                    let kv = KeyValue {
                        key: p.key.clone(),
                        create_revision: prev.as_ref().map_or(main, |p| p.create_revision),
                        mod_revision: main,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        value: p.value.clone(),
                        lease: p.lease,
                    };
                    self.keys.entry(p.key.clone()).or_default().push((main, Some(kv.clone())));
                    self.detach(&p.key);
                    if p.lease != 0 {
                        self.leases.get_mut(&p.lease).expect("checked above").insert(p.key.clone());
                    }
                    evs.push(Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: prev });
                    OpResult::Put
                }
                request_op::Request::RequestDeleteRange(d) => {
                    let doomed = self.range_at(&d.key, &d.range_end, main);
                    for kv in &doomed {
                        let e = self.record_delete(&kv.key, kv.clone(), main);
                        evs.push(e);
                    }
                    OpResult::Delete(doomed.len() as i64)
                }
                request_op::Request::RequestTxn(_) => panic!("the model has no nested txns"),
            };
            results.push(result);
        }
        let changed = !evs.is_empty();
        if changed {
            self.revision = main;
            self.events.insert(main, evs);
        }
        Outcome::Kv { revision: self.revision, changed, succeeded, results }
    }
}

fn request_op_put(p: PutRequest) -> keel_core::pb::etcdserverpb::RequestOp {
    keel_core::pb::etcdserverpb::RequestOp { request: Some(request_op::Request::RequestPut(p)) }
}

fn request_op_delete(d: DeleteRangeRequest) -> keel_core::pb::etcdserverpb::RequestOp {
    keel_core::pb::etcdserverpb::RequestOp { request: Some(request_op::Request::RequestDeleteRange(d)) }
}

/// The model's view of a write's reply: its revision and results, or an error.
pub fn observed(result: &Result<WriteResponse, ApplyError>) -> Option<(i64, bool, Vec<OpResult>)> {
    let r = result.as_ref().ok()?;
    let revision = r.revision();
    Some(match r {
        WriteResponse::Put(_) => (revision, true, vec![OpResult::Put]),
        WriteResponse::DeleteRange(d) => (revision, true, vec![OpResult::Delete(d.deleted)]),
        WriteResponse::Txn(t) => {
            let results = t
                .responses
                .iter()
                .map(|r| match r.response.as_ref().expect("a response") {
                    response_op::Response::ResponseRange(r) => OpResult::Range(r.kvs.clone()),
                    response_op::Response::ResponsePut(_) => OpResult::Put,
                    response_op::Response::ResponseDeleteRange(d) => OpResult::Delete(d.deleted),
                    response_op::Response::ResponseTxn(_) => panic!("no nested txns are issued"),
                })
                .collect();
            (revision, t.succeeded, results)
        }
        _ => return None,
    })
}
