//! `keelctl`: a drop-in for etcdctl 3.5 — the same commands, flags and output formats, byte
//! for byte, so scripts written for etcdctl work unchanged against Keel or etcd.
//!
//! The printers are pure functions from responses to text ([`output`]); `main` parses flags,
//! makes the call and prints. Today: `put`, `get`, `del` with the simple and json formats.
//! Watch, txn, lease, member, endpoint, snapshot and the rest follow their server features.

pub mod output;
