//! The client request path past the gRPC layer: any bytes decoded as a client request (as tonic
//! decodes it), wrapped in the log record, decoded again as apply decodes it, and applied by
//! two replicas after a few writes of their own; also any bytes as a committed entry itself.
//! Nothing may panic, the second decode must give what the first did, and the replicas must
//! stay equal.
#![no_main]

use bytes::Bytes;
use keel_core::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, TxnRequest};
use keel_core::pb::keelpb::{request::Op, Entry, EntryType, Request};
use keel_core::state_machine::StateMachine;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fn entry(index: u64, entry_type: EntryType, data: Vec<u8>) -> Entry {
    Entry { index, term: 1, entry_type: entry_type as i32, data: data.into() }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    let body = Bytes::copy_from_slice(body);
    let op = match kind % 4 {
        0 => TxnRequest::decode(body.clone()).ok().map(Op::Txn),
        1 => PutRequest::decode(body.clone()).ok().map(Op::Put),
        2 => DeleteRangeRequest::decode(body.clone()).ok().map(Op::DeleteRange),
        _ => None,
    };
    let mut log = Vec::new();
    for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
        let put = PutRequest { key: k.into(), value: "v".into(), ..Default::default() };
        log.push(entry(1 + i as u64, EntryType::EntryNormal, Request { id: 100 + i as u64, op: Some(Op::Put(put)) }.encode_to_vec()));
    }
    if let Some(op) = op {
        let record = Request { id: 7, op: Some(op) };
        let bytes = record.encode_to_vec();
        let again = Request::decode(&bytes[..]).expect("a decoded request's record decodes as apply decodes it");
        assert_eq!(again, record);
        log.push(entry(4, EntryType::EntryNormal, bytes));
    } else {
        let t = if kind & 0x80 != 0 { EntryType::EntryConfChange } else { EntryType::EntryNormal };
        log.push(entry(4, t, body.to_vec()));
    }
    let (mut a, mut b) = (StateMachine::default(), StateMachine::default());
    for e in &log {
        let ra = format!("{:?}", a.apply(e, 0));
        let rb = format!("{:?}", b.apply(e, 0));
        assert_eq!(ra, rb);
    }
    assert_eq!(a.store.revision(), b.store.revision());
    assert_eq!(a.store.hash_kv(0).ok(), b.store.hash_kv(0).ok());
});
