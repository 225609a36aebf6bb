//! The MVCC store against a dumb model: the full key-value map at every revision. Random
//! sequences of puts and deletes, then every range shape at every revision must agree.

use bytes::Bytes;
use keel_core::mvcc::{MvccError, Store};
use keel_core::pb::etcdserverpb::{compare, request_op, CompactionRequest, Compare, RequestOp, TxnRequest};
use keel_core::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use keel_core::pb::mvccpb::{event::EventType, Event, KeyValue};
use proptest::prelude::*;
use std::collections::BTreeMap;

type Snapshot = BTreeMap<Vec<u8>, KeyValue>;

/// `history[r]` is the whole store at revision `r` (index 0 unused, 1 = empty).
struct Model {
    history: Vec<Snapshot>,
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

impl Model {
    fn new() -> Self {
        Model { history: vec![Snapshot::new(), Snapshot::new()] }
    }
    fn rev(&self) -> i64 {
        self.history.len() as i64 - 1
    }
    /// Puts several keys in one revision (a txn); returns the revision.
    fn put_all(&mut self, kvs: &[(Vec<u8>, Vec<u8>)]) -> i64 {
        let rev = self.rev() + 1;
        let mut next = self.history.last().unwrap().clone();
        for (key, value) in kvs {
            let prev = next.get(&key[..]).cloned();
            next.insert(
                key.clone(),
                KeyValue {
                    key: Bytes::copy_from_slice(key),
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    value: Bytes::copy_from_slice(value),
                    lease: 0,
                },
            );
        }
        self.history.push(next);
        rev
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> i64 {
        self.put_all(&[(key.to_vec(), value.to_vec())])
    }

    fn delete(&mut self, key: &[u8], end: &[u8]) -> (i64, Vec<KeyValue>) {
        let cur = self.history.last().unwrap().clone();
        let doomed: Vec<KeyValue> = cur.values().filter(|kv| in_range(&kv.key, key, end)).cloned().collect();
        if doomed.is_empty() {
            return (0, doomed);
        }
        let mut next = cur;
        for kv in &doomed {
            next.remove(&kv.key[..]);
        }
        self.history.push(next);
        (doomed.len() as i64, doomed)
    }
    fn range(&self, key: &[u8], end: &[u8], rev: i64) -> Vec<KeyValue> {
        self.history[rev as usize].values().filter(|kv| in_range(&kv.key, key, end)).cloned().collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>, Vec<u8>),
    /// A txn of puts (distinct keys), guarded by a compare on a key's existence.
    Txn(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>),
    /// Compact at this fraction of the current revision.
    Compact(u8),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c', 0xff]), 1..4)
}

fn end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![Just(vec![]), Just(vec![0]), key()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (key(), end()).prop_map(|(k, e)| Op::Delete(k, e)),
        1 => (key(), prop::collection::vec((key(), prop::collection::vec(any::<u8>(), 0..3)), 1..4)).prop_map(|(g, ops)| Op::Txn(g, ops)),
        1 => any::<u8>().prop_map(Op::Compact),
    ]
}

/// The events a put makes, per the model: the new value, and the old one as prev_kv.
fn put_event(model: &Model, k: &[u8], rev: i64) -> Event {
    let prev = model.history[rev as usize - 1].get(k).cloned();
    Event { r#type: EventType::Put as i32, kv: model.history[rev as usize].get(k).cloned(), prev_kv: prev }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("KEEL_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128)))]

    #[test]
    fn ranges_txns_and_events_match_the_model(ops in prop::collection::vec(op(), 1..40), probes in prop::collection::vec((key(), end()), 1..12)) {
        let mut store = Store::new();
        let mut model = Model::new();
        let mut compacted = 0i64;
        for op in &ops {
            match op {
                Op::Put(k, v) => {
                    let r = store.put(&PutRequest { key: Bytes::copy_from_slice(k), value: Bytes::copy_from_slice(v), prev_kv: true, ..Default::default() }).unwrap();
                    let prev = model.range(k, &[], model.rev()).pop();
                    let rev = model.put(k, v);
                    prop_assert_eq!(r.header.unwrap().revision, rev);
                    prop_assert_eq!(r.prev_kv, prev);
                    prop_assert_eq!(store.take_events(), vec![put_event(&model, k, rev)]);
                }
                Op::Delete(k, e) => {
                    let r = store.delete_range(&DeleteRangeRequest { key: Bytes::copy_from_slice(k), range_end: Bytes::copy_from_slice(e), prev_kv: true }).unwrap();
                    let (deleted, prev) = model.delete(k, e);
                    prop_assert_eq!(r.deleted, deleted);
                    prop_assert_eq!(&r.prev_kvs, &prev);
                    prop_assert_eq!(r.header.unwrap().revision, model.rev());
                    let want: Vec<Event> = prev
                        .into_iter()
                        .map(|p| Event {
                            r#type: EventType::Delete as i32,
                            kv: Some(KeyValue { key: p.key.clone(), mod_revision: model.rev(), ..Default::default() }),
                            prev_kv: Some(p),
                        })
                        .collect();
                    prop_assert_eq!(store.take_events(), if deleted > 0 { want } else { vec![] });
                }
                Op::Txn(guard, puts) => {
                    let mut seen = std::collections::BTreeSet::new();
                    let puts: Vec<(Vec<u8>, Vec<u8>)> = puts.iter().filter(|(k, _)| seen.insert(k.clone())).cloned().collect();
                    let success = puts
                        .iter()
                        .map(|(k, v)| RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest { key: Bytes::copy_from_slice(k), value: Bytes::copy_from_slice(v), ..Default::default() })),
                        })
                        .collect();
                    // Compare: the guard key does not exist (version 0).
                    let cmp = Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Version as i32,
                        key: Bytes::copy_from_slice(guard),
                        target_union: Some(compare::TargetUnion::Version(0)),
                        range_end: Bytes::new(),
                    };
                    let r = store.txn(&TxnRequest { compare: vec![cmp], success, failure: vec![] }).unwrap();
                    let absent = model.range(guard, &[], model.rev()).is_empty();
                    prop_assert_eq!(r.succeeded, absent);
                    if absent {
                        let rev = model.put_all(&puts);
                        prop_assert_eq!(r.header.unwrap().revision, rev);
                        let events = store.take_events();
                        prop_assert_eq!(events.len(), puts.len(), "one event per op, in op order");
                        for (e, (k, _)) in events.iter().zip(&puts) {
                            prop_assert_eq!(&e.kv.as_ref().unwrap().key[..], &k[..]);
                            prop_assert_eq!(e.kv.as_ref(), model.history[rev as usize].get(k));
                            prop_assert_eq!(e.prev_kv.as_ref(), model.history[rev as usize - 1].get(k));
                        }
                    } else {
                        prop_assert!(store.take_events().is_empty());
                    }
                }
                Op::Compact(f) => {
                    let target = (model.rev() * (*f as i64) / 255).max(1);
                    let r = store.compact(&CompactionRequest { revision: target, physical: f % 2 == 0 });
                    if target <= compacted {
                        prop_assert_eq!(r.unwrap_err(), MvccError::Compacted);
                    } else {
                        prop_assert!(r.is_ok());
                        compacted = target;
                    }
                }
            }
            prop_assert_eq!(store.revision(), model.rev());
        }
        for rev in 1..compacted {
            let req = RangeRequest { key: Bytes::from_static(b"a"), revision: rev, ..Default::default() };
            prop_assert_eq!(store.range(&req).unwrap_err(), MvccError::Compacted);
        }
        for rev in std::iter::once(0).chain(compacted.max(1)..=model.rev()) {
            for (k, e) in &probes {
                let req = RangeRequest { key: Bytes::copy_from_slice(k), range_end: Bytes::copy_from_slice(e), revision: rev, ..Default::default() };
                let got = store.range(&req).unwrap();
                let want = model.range(k, e, if rev == 0 { model.rev() } else { rev });
                prop_assert_eq!(got.count, want.len() as i64);
                prop_assert_eq!(&got.kvs, &want);
                prop_assert_eq!(got.header.unwrap().revision, model.rev(), "header revision is the current one");
                let limited = store.range(&RangeRequest { limit: 1, ..req.clone() }).unwrap();
                prop_assert_eq!(limited.kvs.len(), want.len().min(1));
                prop_assert_eq!(limited.more, want.len() > 1);
                prop_assert_eq!(limited.count, want.len() as i64);
            }
        }
        let future = RangeRequest { key: Bytes::from_static(b"a"), revision: model.rev() + 1, ..Default::default() };
        prop_assert_eq!(store.range(&future).unwrap_err(), MvccError::FutureRev);
    }
}

#[test]
fn empty_store_is_at_revision_one_and_noop_delete_keeps_it() {
    let mut store = Store::new();
    assert_eq!(store.revision(), 1);
    let r = store
        .delete_range(&DeleteRangeRequest { key: Bytes::from_static(b"x"), ..Default::default() })
        .unwrap();
    assert_eq!((r.deleted, store.revision()), (0, 1));
}

#[test]
fn ignore_value_on_a_missing_key_is_key_not_found() {
    let mut store = Store::new();
    let req = PutRequest { key: Bytes::from_static(b"x"), ignore_value: true, ..Default::default() };
    assert_eq!(store.put(&req).unwrap_err(), MvccError::KeyNotFound);
    assert_eq!(store.revision(), 1, "a failed put makes no revision");
}
