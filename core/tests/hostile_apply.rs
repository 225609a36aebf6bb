//! Whatever a committed entry holds — bytes of any kind, or requests no client port would let
//! through (empty keys, ranges backwards, nested txns, duplicate keys, negative revisions and
//! leases, unknown enum values) — applying it never panics, and two members applying the same
//! log stay equal. `KEEL_PROPTEST_CASES` sets the cases (default 256).

use keel_core::pb::etcdserverpb::{
    compare, request_op, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use keel_core::pb::keelpb::{request::Op, ConfChange, Entry, EntryType, Request};
use keel_core::state_machine::StateMachine;
use proptest::prelude::*;
use prost::Message as _;

fn cases() -> u32 {
    std::env::var("KEEL_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![]),
        Just(vec![0]),
        prop::collection::vec(prop::sample::select(b"abc\0\xff".to_vec()), 0..3)
    ]
}

fn leaf() -> impl Strategy<Value = request_op::Request> {
    prop_oneof![
        (key(), key(), any::<i64>(), any::<i64>(), any::<i32>(), any::<i32>(), any::<bool>(), any::<bool>())
            .prop_map(|(k, e, limit, revision, sort_order, sort_target, keys_only, count_only)| {
                request_op::Request::RequestRange(RangeRequest {
                    key: k.into(),
                    range_end: e.into(),
                    limit,
                    revision: revision % 20,
                    sort_order,
                    sort_target,
                    keys_only,
                    count_only,
                    ..Default::default()
                })
            }),
        (key(), key(), any::<i64>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(k, v, lease, pk, iv, il)| {
                request_op::Request::RequestPut(PutRequest {
                    key: k.into(),
                    value: v.into(),
                    lease: lease % 4,
                    prev_kv: pk,
                    ignore_value: iv,
                    ignore_lease: il,
                })
            }
        ),
        (key(), key(), any::<bool>()).prop_map(|(k, e, pk)| {
            request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: e.into(),
                prev_kv: pk,
            })
        }),
    ]
}

fn compare_s() -> impl Strategy<Value = Compare> {
    (key(), key(), any::<i32>(), any::<i32>(), any::<i64>()).prop_map(|(k, e, result, target, n)| Compare {
        key: k.into(),
        range_end: e.into(),
        result: result % 6,
        target: target % 6,
        target_union: Some(compare::TargetUnion::Version(n % 5)),
    })
}

fn leaf_op() -> impl Strategy<Value = RequestOp> {
    prop_oneof![Just(RequestOp::default()), leaf().prop_map(|r| RequestOp { request: Some(r) })]
}

fn txn() -> impl Strategy<Value = TxnRequest> {
    let flat = (
        prop::collection::vec(compare_s(), 0..3),
        prop::collection::vec(leaf_op(), 0..4),
        prop::collection::vec(leaf_op(), 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest { compare, success, failure });
    flat.prop_recursive(4, 16, 3, |inner| {
        (
            prop::collection::vec(compare_s(), 0..2),
            prop::collection::vec(
                inner.prop_map(|t| RequestOp { request: Some(request_op::Request::RequestTxn(t)) }),
                0..3,
            ),
            prop::collection::vec(leaf_op(), 0..2),
        )
            .prop_map(|(compare, success, failure)| TxnRequest { compare, success, failure })
    })
}

fn op() -> impl Strategy<Value = Option<Op>> {
    prop_oneof![
        Just(None),
        leaf().prop_map(|r| Some(match r {
            // A range is no log record (reads do not go through the log): its keys are deleted.
            request_op::Request::RequestRange(r) => {
                Op::DeleteRange(DeleteRangeRequest {
                    key: r.key,
                    range_end: r.range_end,
                    prev_kv: r.keys_only,
                })
            }
            request_op::Request::RequestPut(p) => Op::Put(p),
            request_op::Request::RequestDeleteRange(d) => Op::DeleteRange(d),
            request_op::Request::RequestTxn(t) => Op::Txn(t),
        })),
        txn().prop_map(|t| Some(Op::Txn(t))),
        (any::<i64>(), any::<bool>())
            .prop_map(|(r, physical)| Some(Op::Compaction(CompactionRequest { revision: r % 30, physical }))),
        (any::<i64>(), any::<i64>())
            .prop_map(|(id, ttl)| Some(Op::LeaseGrant(LeaseGrantRequest { id: id % 4, ttl }))),
        any::<i64>().prop_map(|id| Some(Op::LeaseRevoke(LeaseRevokeRequest { id: id % 4 }))),
    ]
}

/// One entry's bytes: a request (sometimes a repeated id), a conf change of any type, or noise.
fn entry_data() -> impl Strategy<Value = (EntryType, Vec<u8>)> {
    prop_oneof![
        8 => (any::<u8>(), op()).prop_map(|(id, op)| (EntryType::EntryNormal, Request { id: id as u64 % 8, op }.encode_to_vec())),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| (EntryType::EntryNormal, b)),
        1 => (any::<i32>(), any::<u64>(), prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(t, id, ctx)| {
            (EntryType::EntryConfChange, ConfChange { change_type: t % 6, node_id: id % 4, context: ctx.into(), ..Default::default() }.encode_to_vec())
        }),
        1 => prop::collection::vec(any::<u8>(), 0..32).prop_map(|b| (EntryType::EntryConfChange, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn any_committed_log_applies_without_panic_and_alike(log in prop::collection::vec(entry_data(), 1..40)) {
        let mut a = StateMachine::default();
        let mut b = StateMachine::default();
        for (i, (t, data)) in log.into_iter().enumerate() {
            let e = Entry { index: 1 + i as u64, term: 1, entry_type: t as i32, data: data.into() };
            let ra = format!("{:?}", a.apply(&e, 1000 * i as u64));
            let rb = format!("{:?}", b.apply(&e, 1000 * i as u64));
            prop_assert_eq!(ra, rb);
        }
        prop_assert_eq!(a.store.revision(), b.store.revision());
        prop_assert_eq!(a.store.hash_kv(0).unwrap(), b.store.hash_kv(0).unwrap());
        prop_assert_eq!(a.members().cloned().collect::<Vec<_>>(), b.members().cloned().collect::<Vec<_>>());
        a.lessor.check_invariants().unwrap();
    }
}
