//! Saving and loading the state machine's image with many keys: how long a restart spends
//! reading it back, split into the B-tree scan and the rebuild of the in-memory store.
//!
//! `cargo bench -p runtime --bench image`; `KEEL_BENCH_KEYS` (default 1000000) keys of 16
//! bytes with 100-byte values, one version each.

use bytes::Bytes;
use keel_core::pb::etcdserverpb::PutRequest;
use keel_core::pb::keelpb::{request::Op, ConfState, Entry, Request};
use keel_core::state_machine::StateMachine;
use prost::Message as _;
use runtime::backend::FileBackend;
use runtime::image::Image;
use std::ops::Bound;
use std::time::Instant;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn main() {
    let n: u64 = std::env::var("KEEL_BENCH_KEYS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let base = std::env::var("KEEL_BENCH_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    let dir = tempfile::tempdir_in(base).unwrap();
    let path = dir.path().join("db");
    {
        let mut sm = StateMachine::default();
        let value = Bytes::from(vec![b'v'; 100]);
        let start = Instant::now();
        for i in 1..=n {
            let put = PutRequest {
                key: Bytes::from(format!("key/{i:011}")),
                value: value.clone(),
                ..Default::default()
            };
            let data = Request { id: i, op: Some(Op::Put(put)) }.encode_to_vec();
            sm.apply(&Entry { index: i, term: 1, entry_type: 0, data: data.into() }, 0);
        }
        println!("applied {n} puts in {:.2} s; RSS {:.0} MiB", start.elapsed().as_secs_f64(), rss_mib());
        let image = Image::open(FileBackend::open(&path).unwrap()).unwrap();
        let start = Instant::now();
        image.save(&mut sm, 1, ConfState { voters: vec![1], learners: vec![] }).unwrap();
        println!(
            "saved the image in {:.2} s; file {:.0} MiB",
            start.elapsed().as_secs_f64(),
            image.file_bytes() as f64 / 1048576.0
        );
    }
    let rss_before = rss_mib();
    let start = Instant::now();
    let image = Image::open(FileBackend::open(&path).unwrap()).unwrap();
    let mut records = 0u64;
    image.with_db(|db| {
        for item in db.range(Bound::Unbounded, Bound::Unbounded) {
            item.unwrap();
            records += 1;
        }
    });
    let scan = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let loaded = image.load(Default::default()).unwrap().unwrap();
    let load = start.elapsed().as_secs_f64();
    assert_eq!(loaded.sm.store.revision() as u64, n + 1);
    println!("B-tree scan of {records} records: {scan:.3} s");
    println!(
        "load (scan + decode + rebuild): {load:.3} s; RSS {:.0} MiB before, {:.0} MiB after",
        rss_before,
        rss_mib()
    );
}
