//! Keel's B-tree against redb, side by side on real files in a temporary directory.
//!
//! `cargo bench -p runtime --bench btree`; `KEEL_BENCH_KEYS` (default 200000) sets the number
//! of keys. Random 16-byte keys with 100-byte values are put in batches of 1000 per commit
//! (each commit durable), then read back one at a time in another random order; then each file
//! is reopened. Then nine keys in ten are deleted and each file is shrunk: Keel with
//! `Db::shrink_step` (256 pages a step) until done, redb with `Database::compact`.

use redb::{ReadableDatabase, TableDefinition};
use runtime::backend::FileBackend;
use runtime::btree::Db;
use std::path::Path;
use std::time::{Duration, Instant};

const BATCH: usize = 1000;
const VALUE_BYTES: usize = 100;
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn keys(n: usize, seed: u64) -> Vec<[u8; 16]> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let mut k = [0; 16];
            k[..8].copy_from_slice(&rng.next().to_be_bytes());
            k[8..].copy_from_slice(&rng.next().to_be_bytes());
            k
        })
        .collect()
}

fn shuffled(keys: &[[u8; 16]], seed: u64) -> Vec<[u8; 16]> {
    let mut out = keys.to_vec();
    let mut rng = Rng(seed);
    for i in (1..out.len()).rev() {
        out.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    out
}

struct Figures {
    put: Duration,
    get: Duration,
    reopen: Duration,
    file_bytes: u64,
    /// Bytes below the high-water mark (Keel only).
    used_bytes: u64,
}

fn keel(dir: &Path, keys: &[[u8; 16]], reads: &[[u8; 16]]) -> Figures {
    let path = dir.join("keel.db");
    let value = [7u8; VALUE_BYTES];
    let mut db = Db::open(FileBackend::open(&path).unwrap()).unwrap();
    let start = Instant::now();
    for batch in keys.chunks(BATCH) {
        let mut tx = db.begin_write().unwrap();
        for k in batch {
            tx.put(k, &value).unwrap();
        }
        tx.commit().unwrap();
    }
    let put = start.elapsed();
    let start = Instant::now();
    for k in reads {
        assert_eq!(db.get(k).unwrap().expect("present").len(), VALUE_BYTES);
    }
    let get = start.elapsed();
    let stats = db.stats();
    eprintln!("keel stats: {stats:?}");
    drop(db);
    let start = Instant::now();
    let db = Db::open(FileBackend::open(&path).unwrap()).unwrap();
    let reopen = start.elapsed();
    assert_eq!(db.stats().key_count, keys.len() as u64);
    let used_bytes = db.stats().page_count * runtime::btree::PAGE_BYTES as u64;
    Figures { put, get, reopen, file_bytes: std::fs::metadata(&path).unwrap().len(), used_bytes }
}

fn redb(dir: &Path, keys: &[[u8; 16]], reads: &[[u8; 16]]) -> Figures {
    let path = dir.join("redb.db");
    let value = [7u8; VALUE_BYTES];
    let db = redb::Database::create(&path).unwrap();
    let start = Instant::now();
    for batch in keys.chunks(BATCH) {
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(TABLE).unwrap();
            for k in batch {
                table.insert(&k[..], &value[..]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let put = start.elapsed();
    let start = Instant::now();
    {
        let tx = db.begin_read().unwrap();
        let table = tx.open_table(TABLE).unwrap();
        for k in reads {
            assert_eq!(table.get(&k[..]).unwrap().expect("present").value().len(), VALUE_BYTES);
        }
    }
    let get = start.elapsed();
    drop(db);
    let start = Instant::now();
    let db = redb::Database::create(&path).unwrap();
    let reopen = start.elapsed();
    drop(db);
    Figures { put, get, reopen, file_bytes: std::fs::metadata(&path).unwrap().len(), used_bytes: 0 }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let n: usize = std::env::var("KEEL_BENCH_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let keys = keys(n, 0x9e37_79b9_7f4a_7c15);
    let reads = shuffled(&keys, 42);
    let dir = tempfile::tempdir().unwrap();
    println!("{n} random 16-byte keys, {VALUE_BYTES}-byte values, {BATCH} puts per durable commit");
    let k = keel(dir.path(), &keys, &reads);
    let r = redb(dir.path(), &keys, &reads);
    let ops = |d: Duration| n as f64 / d.as_secs_f64();
    println!("{:<22} {:>14} {:>14} {:>12}", "", "keel", "redb", "keel/redb");
    let row = |what: &str, a: f64, b: f64, unit: &str| {
        println!("{what:<22} {:>10.2} {unit:<3} {:>10.2} {unit:<3} {:>12.2}", a, b, a / b);
    };
    row("put (batched)", ops(k.put), ops(r.put), "/s");
    row("get (random)", ops(k.get), ops(r.get), "/s");
    row("reopen", k.reopen.as_secs_f64() * 1e3, r.reopen.as_secs_f64() * 1e3, "ms");
    row("file size", k.file_bytes as f64 / 1048576.0, r.file_bytes as f64 / 1048576.0, "MiB");
    println!(
        "keel pages in use: {:.2} MiB (the file grows ahead in chunks)",
        k.used_bytes as f64 / 1048576.0
    );
    let ks = keel_shrink(dir.path(), &keys);
    let rs = redb_compact(dir.path(), &keys);
    println!("after deleting 9 keys in 10 ({} left):", n.div_ceil(10));
    row("file before shrink", ks.before as f64 / 1048576.0, rs.before as f64 / 1048576.0, "MiB");
    row("file after shrink", ks.after as f64 / 1048576.0, rs.after as f64 / 1048576.0, "MiB");
    row("shrink time", ks.took.as_secs_f64() * 1e3, rs.took.as_secs_f64() * 1e3, "ms");
    println!("keel shrink: {} steps", ks.steps);
}

struct Shrunk {
    before: u64,
    after: u64,
    took: Duration,
    steps: usize,
}

/// The keys to delete: all but every tenth.
fn doomed(keys: &[[u8; 16]]) -> impl Iterator<Item = &[u8; 16]> {
    keys.iter().enumerate().filter(|(i, _)| i % 10 != 0).map(|(_, k)| k)
}

fn keel_shrink(dir: &Path, keys: &[[u8; 16]]) -> Shrunk {
    let path = dir.join("keel.db");
    let mut db = Db::open(FileBackend::open(&path).unwrap()).unwrap();
    let doomed: Vec<_> = doomed(keys).collect();
    for batch in doomed.chunks(BATCH) {
        let mut tx = db.begin_write().unwrap();
        for k in batch {
            assert!(tx.delete(&k[..]).unwrap());
        }
        tx.commit().unwrap();
    }
    let before = std::fs::metadata(&path).unwrap().len();
    let start = Instant::now();
    let mut steps = 0;
    while !db.shrink_step(256).unwrap().done {
        steps += 1;
    }
    let took = start.elapsed();
    db.check_invariants().unwrap();
    Shrunk { before, after: std::fs::metadata(&path).unwrap().len(), took, steps: steps + 1 }
}

fn redb_compact(dir: &Path, keys: &[[u8; 16]]) -> Shrunk {
    let path = dir.join("redb.db");
    let mut db = redb::Database::create(&path).unwrap();
    let doomed: Vec<_> = doomed(keys).collect();
    for batch in doomed.chunks(BATCH) {
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(TABLE).unwrap();
            for k in batch {
                assert!(table.remove(&k[..]).unwrap().is_some());
            }
        }
        tx.commit().unwrap();
    }
    let before = std::fs::metadata(&path).unwrap().len();
    let start = Instant::now();
    let mut steps = 0;
    while db.compact().unwrap() {
        steps += 1;
    }
    let took = start.elapsed();
    Shrunk { before, after: std::fs::metadata(&path).unwrap().len(), took, steps }
}
