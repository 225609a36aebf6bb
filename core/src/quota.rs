//! The backend quota's arithmetic: what a write is expected to add to the database, as etcd
//! estimates it before letting the write through (`--quota-backend-bytes`).
//!
//! As etcd 3.5.1 does (checked against its binary): a put, a transaction or a lease grant is
//! let through only while the database plus the request's cost stays below the quota, even
//! when the cost is 0 (a read-only transaction is refused once the database has reached it).
//! While a NOSPACE alarm is raised, every member's state machine refuses each write whose cost
//! is above 0, whatever the size: reads, deletes, compaction and lease revokes still work.

use crate::pb::etcdserverpb::{request_op, PutRequest, TxnRequest};

/// Bytes a stored key-value pair costs on top of its key and value (the index entries and
/// the record's framing).
pub const KV_OVERHEAD_BYTES: u64 = 256;
/// Bytes a new lease costs.
pub const LEASE_OVERHEAD_BYTES: u64 = 64;

/// etcd's quota when `--quota-backend-bytes` is 0: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// Above this etcd warns that the quota exceeds what it supports: 8 GiB.
pub const MAX_QUOTA_BYTES: u64 = 8 << 30;

/// What one put is expected to add.
pub fn put_cost(put: &PutRequest) -> u64 {
    KV_OVERHEAD_BYTES + put.key.len() as u64 + put.value.len() as u64
}

/// What a transaction is expected to add: the dearer of its two branches (only one runs),
/// each the sum of its own puts. As etcd 3.5 counts it, a nested transaction costs nothing, so
/// a transaction whose puts are all nested passes the quota and the NOSPACE alarm alike.
pub fn txn_cost(txn: &TxnRequest) -> u64 {
    let branch = |ops: &[crate::pb::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => put_cost(p),
                _ => 0,
            })
            .sum()
    };
    branch(&txn.success).max(branch(&txn.failure))
}

/// The quota `--quota-backend-bytes` sets, as etcd reads it: 0 is the default (2 GiB), a
/// negative value turns the quota off (`None`).
pub fn quota_bytes(flag: i64) -> Option<u64> {
    match flag {
        f if f < 0 => None,
        0 => Some(DEFAULT_QUOTA_BYTES),
        f => Some(f as u64),
    }
}

/// Whether a put, transaction or lease grant of `cost` may go ahead on a database of
/// `size_bytes` under `quota`.
pub fn available(size_bytes: u64, cost: u64, quota: Option<u64>) -> bool {
    match quota {
        None => true,
        Some(q) => size_bytes.saturating_add(cost) < q,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{DeleteRangeRequest, RangeRequest, RequestOp};
    use bytes::Bytes;

    fn put(k: &str, v: usize) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from(k.to_string()),
                value: vec![0; v].into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn reads_and_deletes_cost_nothing_puts_do() {
        let read = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: "a".into(),
                ..Default::default()
            })),
        };
        let del = RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: "a".into(),
                ..Default::default()
            })),
        };
        let txn = |success: Vec<RequestOp>, failure: Vec<RequestOp>| TxnRequest {
            success,
            failure,
            ..Default::default()
        };
        assert_eq!(txn_cost(&txn(vec![read.clone(), del.clone()], vec![del.clone()])), 0);
        assert_eq!(txn_cost(&txn(vec![read.clone()], vec![put("k", 10)])), KV_OVERHEAD_BYTES + 11);
        // The dearer branch: two small puts here, one large one there.
        assert_eq!(
            txn_cost(&txn(vec![put("a", 1), put("b", 1)], vec![put("c", 1000)])),
            KV_OVERHEAD_BYTES + 1001
        );
        assert_eq!(
            txn_cost(&txn(vec![put("a", 1), put("b", 1)], vec![put("c", 10)])),
            2 * (KV_OVERHEAD_BYTES + 2)
        );
        let nested =
            RequestOp { request: Some(request_op::Request::RequestTxn(txn(vec![put("n", 0)], vec![]))) };
        // etcd 3.5 counts only a branch's own puts: a nested transaction costs nothing.
        assert_eq!(txn_cost(&txn(vec![nested], vec![])), 0);
    }

    #[test]
    fn quota_flag_and_availability() {
        assert_eq!(quota_bytes(0), Some(DEFAULT_QUOTA_BYTES));
        assert_eq!(quota_bytes(-5), None);
        assert_eq!(quota_bytes(1 << 20), Some(1 << 20));
        assert!(available(u64::MAX, 1, None));
        assert!(!available(1000, 0, Some(1000)), "at the quota, even a read-only txn is refused");
        assert!(available(999, 0, Some(1000)));
        assert!(available(500, 499, Some(1000)));
        assert!(!available(500, 500, Some(1000)));
        assert!(!available(u64::MAX, 1, Some(1000)));
    }
}
