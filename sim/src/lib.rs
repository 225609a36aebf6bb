//! Deterministic simulation of Keel: the real core and the real `Ready` handling and WAL code,
//! driven over a simulated disk from one seed.
//!
//! Two simulators. [`run_single_node`]: proposals, ticks, Ready handling and crashes (losing or
//! tearing unsynced writes, flipping bits in them) interleaved by a seeded PRNG, with the
//! invariant that no acknowledged write is ever lost checked after every recovery.
//! [`cluster::Cluster`]: N members over a simulated network with partitions, pauses, clock
//! drift and steps, crashes and membership changes; clients on a register (checked for
//! linearizability), on multi-key txns and ranges, on leases, and watchers, the latter checked
//! against a [`model`] of the committed log ([`workload`]). Every run is a function of its
//! seed: a failure prints the seed, and `KEEL_SIM_SEED=<seed>` replays it exactly.

use bytes_helpers::*;
use keel_core::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use keel_core::pb::keelpb::request::Op;
use keel_core::pb::keelpb::Request;
use keel_core::raft::{Config, StateRole};
use keel_core::state_machine::{Applied, WriteResponse};
use prost::Message as _;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use runtime::backend::{CrashFault, Dir as _, SimDisk};
use runtime::ready::{handle_ready, maybe_checkpoint};
use runtime::recover::{recover, Identity, Recovered};
use runtime::wal::WalOptions;
use std::collections::HashMap;

pub mod cluster;
pub mod model;
pub mod workload;

mod bytes_helpers {
    pub fn b(s: &str) -> prost::bytes::Bytes {
        prost::bytes::Bytes::copy_from_slice(s.as_bytes())
    }
}

/// A put the node acknowledged: at `revision`, `key` had `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedPut {
    pub key: String,
    pub value: String,
    pub revision: i64,
}

/// What one seeded run did, for determinism checks and reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunSummary {
    pub crashes: u32,
    pub acked_puts: usize,
    pub acked_deletes: usize,
    pub torn_recoveries: u32,
    /// Saves of the state machine's image (each releases WAL segments it covers).
    pub checkpoints: u32,
    pub final_revision: i64,
    /// A digest of every observable event, equal for equal seeds.
    pub trace_digest: u64,
}

fn identity() -> Identity {
    let member = keel_core::pb::etcdserverpb::Member {
        id: 1,
        name: "sim".into(),
        peer_ur_ls: vec!["http://sim:2380".into()],
        ..Default::default()
    };
    Identity { name: "sim".into(), member_id: 1, cluster_id: 7, initial_members: vec![member] }
}

fn digest(acc: &mut u64, x: u64) {
    // FNV-1a over the event stream: cheap, stable across runs and platforms.
    for byte in x.to_le_bytes() {
        *acc ^= byte as u64;
        *acc = acc.wrapping_mul(0x100000001b3);
    }
}

/// Runs `steps` random steps from `seed`. Panics (with the seed in the message) if an
/// acknowledged write is lost or recovery fails.
pub fn run_single_node(seed: u64, steps: u32) -> RunSummary {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut disk = SimDisk::new("wal");
    let wal_options = WalOptions { segment_bytes: rng.random_range(4096..=65536) };
    let snapshot_count = [5, 50, 1 << 30][rng.random_range(0..3)];
    let mut summary = RunSummary { trace_digest: 0xcbf29ce484222325, ..Default::default() };
    let mut acked: Vec<AckedPut> = Vec::new();
    let mut next_key = 0u32;
    let mut step = 0;
    while step < steps {
        let image_file = disk.open("db").expect("sim open");
        disk.sync().expect("sim dir sync");
        let Recovered { mut node, storage: mut wal, mut sm, .. } = recover(
            disk.clone(),
            wal_options,
            image_file,
            &identity(),
            Config::new(1, rng.random()),
            Default::default(),
        )
        .unwrap_or_else(|e| panic!("seed {seed}: recovery failed at step {step}: {e}"));
        // Bring the node up: elect, apply everything durable.
        let mut pending: HashMap<u64, Op> = HashMap::new();
        let mut next_id = 1u64;
        let mut check_done = false;
        loop {
            step += 1;
            if step >= steps {
                break;
            }
            if node.role() == StateRole::Leader && !check_done && !node.has_ready() {
                check_acked(seed, &sm.store, &acked);
                check_done = true;
            }
            match rng.random_range(0..100) {
                0..=9 => node.tick(),
                10..=49 if node.role() == StateRole::Leader => {
                    for _ in 0..rng.random_range(1..6) {
                        let op = if rng.random_bool(0.85) || next_key == 0 {
                            next_key += 1;
                            let k = format!("k{}", rng.random_range(0..next_key.min(50)));
                            Op::Put(PutRequest {
                                key: b(&k),
                                value: b(&format!("v{step}")),
                                ..Default::default()
                            })
                        } else {
                            let k = format!("k{}", rng.random_range(0..next_key.min(50)));
                            Op::DeleteRange(DeleteRangeRequest { key: b(&k), ..Default::default() })
                        };
                        // Unique across restarts: the term is in the high bits, as in the driver.
                        let id = (node.term() << 40) | next_id;
                        next_id += 1;
                        let data = Request { id, op: Some(op.clone()) }.encode_to_vec();
                        if node.propose(data.into()).is_ok() {
                            pending.insert(id, op);
                        }
                    }
                }
                50..=94 if node.has_ready() => {
                    let outcome = handle_ready(&mut node, &mut wal, &mut sm, step as u64, &mut |_| {})
                        .unwrap_or_else(|e| panic!("seed {seed}: storage failed: {e}"));
                    if maybe_checkpoint(&mut node, &mut wal, &mut sm, snapshot_count)
                        .unwrap_or_else(|e| panic!("seed {seed}: checkpoint failed: {e}"))
                    {
                        summary.checkpoints += 1;
                    }
                    for (index, effect) in outcome.applied {
                        digest(&mut summary.trace_digest, index);
                        let Applied::Write { request_id, result, .. } = effect else { continue };
                        let Some(op) = pending.remove(&request_id) else { continue };
                        match (op, result) {
                            (Op::Put(p), Ok(WriteResponse::Put(r))) => {
                                let revision = r.header.expect("header").revision;
                                digest(&mut summary.trace_digest, revision as u64);
                                acked.push(AckedPut {
                                    key: String::from_utf8(p.key.to_vec()).unwrap(),
                                    value: String::from_utf8(p.value.to_vec()).unwrap(),
                                    revision,
                                });
                                summary.acked_puts += 1;
                            }
                            (Op::DeleteRange(_), Ok(WriteResponse::DeleteRange(_))) => {
                                summary.acked_deletes += 1
                            }
                            (op, result) => panic!("seed {seed}: {op:?} answered {result:?}"),
                        }
                    }
                }
                95..=99 => {
                    // Crash: everything in memory is gone; the disk keeps what was synced and,
                    // of the rest, what the fault leaves.
                    let live = wal.wal.dir().clone();
                    let mut damaged = false;
                    disk = live.crash(&mut |_, unsynced| {
                        let fault = draw_fault(&mut rng, unsynced);
                        damaged |= !matches!(fault, CrashFault::LoseUnsynced);
                        fault
                    });
                    summary.torn_recoveries += damaged as u32;
                    summary.crashes += 1;
                    digest(&mut summary.trace_digest, 0xdead);
                    break;
                }
                _ => {}
            }
        }
        if step >= steps {
            // Finish the run as a restart would: elect, apply everything durable, then check.
            // (A lost, unsynced commit index means durable entries commit again only once the
            // leader commits an entry of its new term.)
            for _ in 0..1000 {
                if node.role() == StateRole::Leader {
                    break;
                }
                node.tick();
                while node.has_ready() {
                    handle_ready(&mut node, &mut wal, &mut sm, step as u64, &mut |_| {}).unwrap();
                }
            }
            assert_eq!(node.role(), StateRole::Leader, "seed {seed}: no leader after 1000 ticks");
            while node.has_ready() {
                handle_ready(&mut node, &mut wal, &mut sm, step as u64, &mut |_| {}).unwrap();
            }
            summary.final_revision = sm.store.revision();
            check_acked(seed, &sm.store, &acked);
            break;
        }
    }
    summary
}

/// What survives of a file's `unsynced` bytes in a crash, drawn from `rng`: nothing, a torn
/// prefix (at a sector boundary or any byte), a torn prefix with a flipped bit, or any subset
/// of sectors (a disk that reordered its writes).
pub fn draw_fault(rng: &mut SmallRng, unsynced: usize) -> CrashFault {
    match rng.random_range(0..5) {
        0 => CrashFault::LoseUnsynced,
        1 => CrashFault::Torn { keep: rng.random_range(0..=unsynced) },
        2 => {
            let sectors = unsynced / runtime::backend::SECTOR_BYTES;
            CrashFault::Torn { keep: rng.random_range(0..=sectors) * runtime::backend::SECTOR_BYTES }
        }
        3 => CrashFault::TornFlipped {
            keep: rng.random_range(0..=unsynced),
            bit: rng.random_range(0..1 << 30),
        },
        _ => CrashFault::Scrambled { seed: rng.random() },
    }
}

/// Every acknowledged put is visible at the revision it was acknowledged with.
fn check_acked(seed: u64, store: &keel_core::mvcc::Store, acked: &[AckedPut]) {
    for a in acked {
        let req = RangeRequest { key: b(&a.key), revision: a.revision, ..Default::default() };
        let got =
            store.range(&req).unwrap_or_else(|e| panic!("seed {seed}: read of acknowledged {a:?}: {e}"));
        let kv = got.kvs.first().unwrap_or_else(|| panic!("seed {seed}: acknowledged write lost: {a:?}"));
        assert_eq!(
            (String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision),
            (a.value.clone(), a.revision),
            "seed {seed}: acknowledged write changed"
        );
    }
}
