//! The WAL against the disk it writes to, side by side in one run.
//!
//! `cargo bench -p runtime --bench wal`. First the raw rate of the disk: 4 KiB `pwrite` +
//! `fdatasync` in a loop on a preallocated file. Then Keel's WAL on the same directory:
//! batches of 1, 16 and 256 entries of 128 bytes (one `flush(true)` — one `fdatasync` — per
//! batch), as group commit forms them under load. `KEEL_BENCH_SECONDS` (default 3) per case.

use bytes::Bytes;
use keel_core::pb::keelpb::{Entry, HardState};
use runtime::backend::{Backend, FileBackend, FsDir};
use runtime::wal::{Wal, WalOptions};
use std::time::{Duration, Instant};

fn seconds() -> Duration {
    Duration::from_secs(std::env::var("KEEL_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3))
}

fn raw_fdatasync(dir: &std::path::Path) -> f64 {
    let mut f = FileBackend::open(&dir.join("raw")).unwrap();
    f.set_len(64 << 20).unwrap();
    f.sync().unwrap();
    let page = vec![7u8; 4096];
    let (start, mut n, mut offset) = (Instant::now(), 0u64, 0u64);
    while start.elapsed() < seconds() {
        f.write_at(offset, &page).unwrap();
        f.sync().unwrap();
        offset = (offset + 4096) % (64 << 20);
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn wal(dir: &std::path::Path, batch: u64) -> (f64, f64) {
    let wal_dir = dir.join(format!("wal-{batch}"));
    let (mut wal, _) = Wal::open(FsDir::open(&wal_dir).unwrap(), WalOptions::default()).unwrap();
    let data = Bytes::from(vec![b'x'; 128]);
    let (start, mut syncs, mut index) = (Instant::now(), 0u64, 0u64);
    while start.elapsed() < seconds() {
        let entries: Vec<Entry> = (0..batch)
            .map(|i| Entry { index: index + i + 1, term: 1, entry_type: 0, data: data.clone() })
            .collect();
        index += batch;
        wal.append_entries(&entries);
        wal.append_hard_state(&HardState { term: 1, vote: 1, commit: index });
        wal.flush(true).unwrap();
        syncs += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    (syncs as f64 / secs, index as f64 / secs)
}

fn main() {
    let base = std::env::var("KEEL_BENCH_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    let dir = tempfile::tempdir_in(base).unwrap();
    println!("directory: {}", dir.path().display());
    let raw = raw_fdatasync(dir.path());
    println!("{:<34} {:>12.0} syncs/s", "raw 4 KiB pwrite + fdatasync", raw);
    for batch in [1, 16, 256] {
        let (syncs, entries) = wal(dir.path(), batch);
        println!(
            "{:<34} {:>12.0} syncs/s {:>12.0} entries/s  ({:.2} of the raw sync rate)",
            format!("wal, {batch} x 128 B entries per sync"),
            syncs,
            entries,
            syncs / raw
        );
    }
}
