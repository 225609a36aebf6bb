//! Micro-benchmark: commit throughput of a 3-node cluster of real Raft nodes in memory (no
//! disk, no network: the protocol's own cost), and how many entries each append carries, to show
//! that batching and pipelining work. Run: `cargo bench -p keel-core --bench raft_throughput`.
//! `KEEL_BENCH_ENTRIES` sets the entries per configuration (default 200000).

// A benchmark measures wall time; the clock ban is for the library, not for its measurement.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

#[path = "../tests/support/mod.rs"]
mod support;

use keel_core::raft::{Config, MessageType, StateRole};
use std::time::Instant;
use support::Network;

fn run(batch: usize, total: usize, payload: usize) -> (f64, f64, usize) {
    let mut cfg = Config::new(1, 0);
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    let mut net = Network::new(3, cfg);
    net.node_mut(1).campaign();
    net.stabilize();
    assert_eq!(net.node(1).role(), StateRole::Leader);
    let data = "x".repeat(payload);
    let (mut apps, mut app_entries) = (0usize, 0usize);
    let start = Instant::now();
    let mut proposed = 0;
    while proposed < total {
        for _ in 0..batch {
            net.propose(1, &data).expect("leader accepts");
        }
        proposed += batch;
        // One round: every node handles its Ready, then every message is delivered.
        loop {
            let mut moved = false;
            for id in [1, 2, 3] {
                moved |= !net.process_ready(id).is_empty();
            }
            for m in &net.queue {
                if m.msg_type == MessageType::MsgApp as i32 && !m.entries.is_empty() {
                    apps += 1;
                    app_entries += m.entries.len();
                }
            }
            if net.queue.is_empty() && !moved {
                break;
            }
            net.deliver(None);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert!(net.node(3).applied() >= total as u64, "everything committed and applied");
    (total as f64 / secs, app_entries as f64 / apps.max(1) as f64, apps)
}

fn main() {
    let total: usize =
        std::env::var("KEEL_BENCH_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    println!("3-node in-memory Raft, {total} entries of 64 bytes per row");
    println!("{:>10} {:>18} {:>20} {:>12}", "batch", "entries/s", "entries per MsgApp", "MsgApps");
    for batch in [1, 10, 100, 1000] {
        let (rate, per_msg, msgs) = run(batch, total, 64);
        println!("{batch:>10} {rate:>18.0} {per_msg:>20.1} {msgs:>12}");
    }
}
