//! The MVCC store against a dumb model: the full key-value map at every revision. Random
//! sequences of puts and deletes, then every range shape at every revision must agree.

use bytes::Bytes;
use keel_core::mvcc::{MvccError, Store};
use keel_core::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use keel_core::pb::mvccpb::KeyValue;
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
    fn put(&mut self, key: &[u8], value: &[u8]) -> i64 {
        let rev = self.rev() + 1;
        let mut next = self.history.last().unwrap().clone();
        let prev = next.get(key).cloned();
        next.insert(
            key.to_vec(),
            KeyValue {
                key: Bytes::copy_from_slice(key),
                create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                mod_revision: rev,
                version: prev.as_ref().map_or(1, |p| p.version + 1),
                value: Bytes::copy_from_slice(value),
                lease: 0,
            },
        );
        self.history.push(next);
        rev
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
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("KEEL_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128)))]

    #[test]
    fn ranges_at_every_revision_match_the_model(ops in prop::collection::vec(op(), 1..40), probes in prop::collection::vec((key(), end()), 1..12)) {
        let mut store = Store::new();
        let mut model = Model::new();
        for op in &ops {
            match op {
                Op::Put(k, v) => {
                    let r = store.put(&PutRequest { key: Bytes::copy_from_slice(k), value: Bytes::copy_from_slice(v), prev_kv: true, ..Default::default() }).unwrap();
                    let prev = model.range(k, &[], model.rev()).pop();
                    let rev = model.put(k, v);
                    prop_assert_eq!(r.header.unwrap().revision, rev);
                    prop_assert_eq!(r.prev_kv, prev);
                }
                Op::Delete(k, e) => {
                    let r = store.delete_range(&DeleteRangeRequest { key: Bytes::copy_from_slice(k), range_end: Bytes::copy_from_slice(e), prev_kv: true }).unwrap();
                    let (deleted, prev) = model.delete(k, e);
                    prop_assert_eq!(r.deleted, deleted);
                    prop_assert_eq!(r.prev_kvs, prev);
                    prop_assert_eq!(r.header.unwrap().revision, model.rev());
                }
            }
            prop_assert_eq!(store.revision(), model.rev());
        }
        for rev in 0..=model.rev() {
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
