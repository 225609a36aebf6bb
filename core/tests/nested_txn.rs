//! Nested transactions decode as deep as etcd takes them, to the same bound on every path: the
//! gRPC request (a `TxnRequest`) and the log record that wraps it at apply (`keelpb.Request`).
//! Decoding, applying and dropping them fit in a tokio worker's stack (2 MiB), in a debug build.

use keel_core::pb::etcdserverpb::{request_op, Compare, RangeRequest, RequestOp, TxnRequest};
use keel_core::pb::keelpb::{request::Op, Entry, EntryType, Request};
use keel_core::pb::nested_txn::TXN_NESTING_MAX;
use keel_core::state_machine::{Applied, StateMachine};
use prost::Message as _;

/// A txn nested `depth` levels (the outermost counted), a Range innermost.
fn nested(depth: u32) -> TxnRequest {
    let mut t = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: "k".into(),
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    for _ in 1..depth {
        t = TxnRequest {
            compare: vec![Compare { key: "c".into(), ..Default::default() }],
            success: vec![RequestOp { request: Some(request_op::Request::RequestTxn(t)) }],
            ..Default::default()
        };
    }
    t
}

fn on_a_worker_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(2 << 20).spawn(f).unwrap().join().unwrap();
}

#[test]
fn nesting_decodes_and_applies_to_the_bound_on_every_path() {
    on_a_worker_stack(|| {
        let mut sm = StateMachine::default();
        for (i, depth) in [1, 49, 50, 51, 100, 128, TXN_NESTING_MAX].into_iter().enumerate() {
            let t = nested(depth);
            let bytes = t.encode_to_vec();
            assert_eq!(TxnRequest::decode(bytes.as_slice()).unwrap(), t, "depth {depth}");
            let record = Request { id: 1 + i as u64, op: Some(Op::Txn(t)) }.encode_to_vec();
            assert!(Request::decode(record.as_slice()).is_ok(), "depth {depth}");
            let entry = Entry {
                index: 1 + i as u64,
                term: 1,
                entry_type: EntryType::EntryNormal as i32,
                data: record.into(),
            };
            match sm.apply(&entry, 0) {
                Applied::Write { result: Ok(_), .. } => {}
                other => panic!("depth {depth}: {other:?}"),
            }
        }
    });
}

#[test]
fn deeper_than_the_bound_fails_alike_and_leaves_nothing_behind() {
    on_a_worker_stack(|| {
        let too_deep = nested(TXN_NESTING_MAX + 1);
        let e = TxnRequest::decode(too_deep.encode_to_vec().as_slice()).unwrap_err();
        assert!(e.to_string().contains(&format!("nested deeper than {TXN_NESTING_MAX}")), "{e}");
        let record = Request { id: 1, op: Some(Op::Txn(too_deep)) }.encode_to_vec();
        assert!(Request::decode(record.as_slice()).is_err());
        // At apply (a forged entry: Keel never proposes one) it is refused, and the member goes on.
        let mut sm = StateMachine::default();
        let entry =
            Entry { index: 1, term: 1, entry_type: EntryType::EntryNormal as i32, data: record.into() };
        assert!(matches!(sm.apply(&entry, 0), Applied::Write { request_id: 0, result: Err(_), .. }));
        // The failed decodes released their nesting count: the bound is whole again.
        let t = nested(TXN_NESTING_MAX);
        assert_eq!(TxnRequest::decode(t.encode_to_vec().as_slice()).unwrap(), t);
    });
}

/// The answer to a deeply nested txn decodes too (Keel's own clients read it; Go's clients do
/// with etcd), to the same bound.
#[test]
fn nested_answers_decode_to_the_bound() {
    use keel_core::pb::etcdserverpb::{response_op, RangeResponse, ResponseOp, TxnResponse};
    on_a_worker_stack(|| {
        let answer = |depth: u32| {
            let mut t = TxnResponse {
                succeeded: true,
                responses: vec![ResponseOp {
                    response: Some(response_op::Response::ResponseRange(RangeResponse {
                        count: 1,
                        ..Default::default()
                    })),
                }],
                ..Default::default()
            };
            for _ in 1..depth {
                t = TxnResponse {
                    succeeded: true,
                    responses: vec![ResponseOp { response: Some(response_op::Response::ResponseTxn(t)) }],
                    ..Default::default()
                };
            }
            t
        };
        for depth in [1, 50, 128, TXN_NESTING_MAX] {
            let t = answer(depth);
            assert_eq!(TxnResponse::decode(t.encode_to_vec().as_slice()).unwrap(), t, "depth {depth}");
        }
        assert!(TxnResponse::decode(answer(TXN_NESTING_MAX + 1).encode_to_vec().as_slice()).is_err());
    });
}
