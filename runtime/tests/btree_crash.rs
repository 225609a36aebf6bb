//! Crash tests of the B-tree on the simulated disk: crash at every sync point of a workload
//! with every kind of fault, reopen, and compare with a model; and damage durable pages on
//! purpose.
//!
//! `KEEL_CRASH_TXNS` (default 10) sets the workload's length, `KEEL_CRASH_SEED` its seed, and
//! `KEEL_CRASH_FULL=1` tears the writes at every sector boundary instead of a sample.

use runtime::backend::{Backend, CrashFault, Dir, SimBackend, SimDisk, SECTOR_BYTES};
use runtime::btree::{Db, DbError, Mmap, PageFile, PAGE_BYTES};
use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

const FILE: &str = "btree";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the sync hook checks a crashed disk against.
#[derive(Default)]
struct Expect {
    /// Set once the database exists: crashes before that are not part of the workload.
    armed: bool,
    /// The state of the last commit that returned.
    committed: Model,
    /// The state the commit in flight will produce.
    in_flight: Model,
    /// Syncs since the commit in flight began: 0 is the data sync, 1 the meta sync.
    syncs_in_commit: usize,
    /// Crash images checked, and how many of them held the in-flight commit.
    checked: usize,
    saw_in_flight: usize,
    seed: u64,
    /// The workload shrinks the file: each recovered file is also shrunk to the end.
    shrinking: bool,
}

/// A [`SimBackend`] that, before each sync, crashes a copy of its disk in every way under
/// test and checks what a restarted process would find.
struct CrashingBackend {
    inner: SimBackend,
    expect: Arc<Mutex<Expect>>,
    full: bool,
}

impl Backend for CrashingBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&mut self) -> io::Result<()> {
        let mut expect = self.expect.lock().unwrap();
        if expect.armed {
            crash_every_way(self.inner.disk(), &mut expect, self.full);
            expect.syncs_in_commit += 1;
        }
        drop(expect);
        self.inner.sync()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

impl PageFile for CrashingBackend {
    fn map(&self) -> io::Result<Option<Mmap>> {
        Ok(None)
    }
    fn try_lock_exclusive(&self) -> io::Result<bool> {
        Ok(true)
    }
}

/// The faults tried at one sync point, as functions of the unsynced byte count.
fn faults(unsynced: usize, full: bool) -> Vec<CrashFault> {
    let mut keeps = vec![0, 1, 777, SECTOR_BYTES, PAGE_BYTES - 1, PAGE_BYTES, PAGE_BYTES + SECTOR_BYTES];
    keeps.extend([
        unsynced / 2,
        unsynced / 2 + 3,
        unsynced.saturating_sub(SECTOR_BYTES),
        unsynced.saturating_sub(1),
        unsynced,
    ]);
    if full {
        keeps.extend((0..unsynced).step_by(SECTOR_BYTES));
    }
    keeps.retain(|k| *k <= unsynced);
    keeps.sort_unstable();
    keeps.dedup();
    let mut out = vec![CrashFault::LoseUnsynced];
    for &keep in &keeps {
        out.push(CrashFault::Torn { keep });
        if keep > 0 {
            for bit in [0, keep * 8 - 1, keep * 4 + 5] {
                out.push(CrashFault::TornFlipped { keep, bit });
            }
        }
    }
    out.extend((0..if full { 32 } else { 6 }).map(|seed| CrashFault::Scrambled { seed }));
    out
}

fn contents(db: &Db<SimBackend>) -> Result<Model, DbError> {
    db.range(Bound::Unbounded, Bound::Unbounded).collect()
}

fn crash_every_way(disk: &SimDisk, expect: &mut Expect, full: bool) {
    let unsynced = disk.unsynced_len(FILE);
    for fault in faults(unsynced, full) {
        let what = format!(
            "seed {} crash before sync {} of a commit, {unsynced} bytes unsynced, {fault:?}",
            expect.seed, expect.syncs_in_commit
        );
        let mut crashed = disk.crash(&mut |_, _| fault);
        let file = crashed.open(FILE).unwrap();
        let mut db = Db::open(file).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
        db.check_invariants().unwrap_or_else(|e| panic!("{what}: {e}"));
        let found = contents(&db).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(db.stats().key_count, found.len() as u64, "{what}");
        if found == expect.in_flight && found != expect.committed {
            assert_eq!(
                expect.syncs_in_commit, 1,
                "{what}: the commit is visible before its meta page is written"
            );
            expect.saw_in_flight += 1;
        } else {
            assert!(found == expect.committed, "{what}: neither the last commit nor the one in flight");
        }
        expect.checked += 1;
        if expect.shrinking {
            // A shrink cut short by a crash goes on from the recovered file.
            shrink_to_the_end(&mut db, 5, &found, &what);
        }
        // The recovered file takes further commits, reusing its free pages correctly.
        let mut tx = db.begin_write().unwrap();
        for i in 0..40u32 {
            tx.put(&i.to_be_bytes(), &[9; 300]).unwrap();
        }
        tx.delete(b"k0001").unwrap();
        tx.commit().unwrap_or_else(|e| panic!("{what}: commit after recovery: {e}"));
        db.check_invariants().unwrap_or_else(|e| panic!("{what}: after a commit on the recovered file: {e}"));
    }
}

/// Shrinks `db` until it is done, checking the invariants and the contents after every step.
fn shrink_to_the_end<F: PageFile>(db: &mut Db<F>, max_pages: usize, model: &Model, what: &str) -> usize {
    for step in 1..=10 + 4 * db.stats().page_count as usize {
        let p = db.shrink_step(max_pages).unwrap_or_else(|e| panic!("{what}: shrink step {step}: {e}"));
        db.check_invariants().unwrap_or_else(|e| panic!("{what}: after shrink step {step}: {e}"));
        if p.done {
            let found: Model =
                db.range(Bound::Unbounded, Bound::Unbounded).collect::<Result<_, _>>().unwrap();
            assert!(found == *model, "{what}: shrinking changed the contents");
            return step;
        }
    }
    panic!("{what}: shrinking did not finish: {:?}", db.stats());
}

fn random_key(rng: &mut Rng) -> Vec<u8> {
    let i = rng.below(300);
    let mut k = format!("k{i:04}").into_bytes();
    if matches!(i % 17, 0) {
        k.resize(600 + i as usize, b'x'); // long keys split branches sooner
    }
    k
}

fn random_value(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(20) {
        0 => 1025 + rng.below(12_000) as usize, // overflow pages
        1 => 0,
        _ => rng.below(300) as usize,
    };
    let b = rng.next() as u8;
    (0..len).map(|i| b.wrapping_add(i as u8)).collect()
}

#[test]
fn btree_a_crash_at_any_sync_leaves_the_last_commit_or_the_one_in_flight() {
    let txns = env_u64("KEEL_CRASH_TXNS", 10);
    let seed = env_u64("KEEL_CRASH_SEED", 0x5eed) | 1;
    let full = env_u64("KEEL_CRASH_FULL", 0) == 1;
    let expect = Arc::new(Mutex::new(Expect { seed, ..Expect::default() }));
    let inner = SimBackend::new(FILE);
    let mut db = Db::open(CrashingBackend { inner, expect: expect.clone(), full }).unwrap();
    expect.lock().unwrap().armed = true;
    let mut rng = Rng(seed);
    let mut model = Model::new();
    for txn in 0..txns {
        let mut tx = db.begin_write().unwrap();
        let ops = if txn % 4 == 3 { 5 } else { 20 + rng.below(150) };
        for _ in 0..ops {
            let k = random_key(&mut rng);
            if rng.below(4) == 0 {
                assert_eq!(tx.delete(&k).unwrap(), model.remove(&k).is_some());
            } else {
                let v = random_value(&mut rng);
                tx.put(&k, &v).unwrap();
                model.insert(k, v);
            }
        }
        {
            let mut e = expect.lock().unwrap();
            e.in_flight = model.clone();
            e.syncs_in_commit = 0;
        }
        tx.commit().unwrap();
        let mut e = expect.lock().unwrap();
        assert_eq!(e.syncs_in_commit, 2, "a commit syncs twice");
        e.committed = model.clone();
    }
    db.check_invariants().unwrap();
    let e = expect.lock().unwrap();
    eprintln!("checked {} crash images, {} held the commit in flight", e.checked, e.saw_in_flight);
    assert!(e.checked as u64 >= txns * 2 * 20);
    assert!(e.saw_in_flight > 0, "some crash after the meta write keeps the commit in flight");
}

#[test]
fn btree_a_crash_at_any_sync_of_a_shrink_keeps_exactly_the_contents() {
    let seed = env_u64("KEEL_CRASH_SEED", 0x5eed) | 1;
    let full = env_u64("KEEL_CRASH_FULL", 0) == 1;
    let expect = Arc::new(Mutex::new(Expect { seed, shrinking: true, ..Expect::default() }));
    let inner = SimBackend::new(FILE);
    let disk = inner.disk().clone();
    let mut db = Db::open(CrashingBackend { inner, expect: expect.clone(), full }).unwrap();
    let mut rng = Rng(seed);
    let mut model = Model::new();
    // Unchecked set-up: fill the file, then delete most keys, so that there is much to move.
    for _ in 0..4 {
        let mut tx = db.begin_write().unwrap();
        for _ in 0..400 {
            let mut k = random_key(&mut rng);
            k.extend_from_slice(&rng.below(10).to_be_bytes());
            let v = random_value(&mut rng);
            tx.put(&k, &v).unwrap();
            model.insert(k, v);
        }
        tx.commit().unwrap();
    }
    let mut tx = db.begin_write().unwrap();
    for k in model.keys().cloned().collect::<Vec<_>>() {
        if rng.below(5) != 0 {
            assert!(tx.delete(&k).unwrap());
            model.remove(&k);
        }
    }
    tx.commit().unwrap();
    let before = db.stats();
    {
        let mut e = expect.lock().unwrap();
        e.armed = true;
        e.committed = model.clone();
        e.in_flight = model.clone();
    }
    // Shrink steps (a crash at every sync of each), with a write transaction now and then.
    let (mut steps, mut moved) = (0, 0);
    loop {
        steps += 1;
        expect.lock().unwrap().syncs_in_commit = 0;
        let p = db.shrink_step(1 + rng.below(3) as usize).unwrap();
        db.check_invariants().unwrap();
        moved += p.moved_pages;
        if p.done {
            break;
        }
        assert!(steps < 400, "shrinking did not finish: {:?}", db.stats());
        if steps % 4 == 0 {
            let mut tx = db.begin_write().unwrap();
            for _ in 0..3 {
                let (k, v) = (random_key(&mut rng), random_value(&mut rng));
                tx.put(&k, &v).unwrap();
                model.insert(k, v);
            }
            let mut e = expect.lock().unwrap();
            e.in_flight = model.clone();
            e.syncs_in_commit = 0;
            drop(e);
            tx.commit().unwrap();
            let mut e = expect.lock().unwrap();
            e.committed = model.clone();
        }
    }
    let after = db.stats();
    assert_eq!(contents_of(&db).unwrap(), model);
    assert_eq!(after.file_bytes, disk.clone().open(FILE).unwrap().len());
    let e = expect.lock().unwrap();
    eprintln!(
        "{steps} shrink steps moved {moved} pages: {before:?} -> {after:?}; checked {} crash images",
        e.checked
    );
    assert!(after.file_pages * 3 < before.file_pages, "{before:?} -> {after:?}");
    assert!(e.checked >= steps * 20);
    assert!(moved >= 5, "the steps moved live pages, not only trimmed free ones");
}

fn contents_of<F: PageFile>(db: &Db<F>) -> Result<Model, DbError> {
    db.range(Bound::Unbounded, Bound::Unbounded).collect()
}

/// A database of `n` keys committed in two transactions, and the model after each.
fn two_commits(n: u32) -> (SimBackend, Model, Model) {
    let file = SimBackend::new(FILE);
    let mut db = Db::open(file.clone()).unwrap();
    let mut first = Model::new();
    let mut tx = db.begin_write().unwrap();
    for i in 0..n {
        let (k, v) = (format!("key{i:06}").into_bytes(), vec![i as u8; (i as usize * 31) % 1500]);
        tx.put(&k, &v).unwrap();
        first.insert(k, v);
    }
    tx.commit().unwrap();
    let mut second = first.clone();
    let mut tx = db.begin_write().unwrap();
    for i in (0..n).step_by(3) {
        let k = format!("key{i:06}").into_bytes();
        tx.put(&k, b"second").unwrap();
        second.insert(k, b"second".to_vec());
    }
    tx.commit().unwrap();
    (file, first, second)
}

fn flip(disk: &SimDisk, at: usize) {
    disk.with_bytes(FILE, |b| b[at] ^= 0x10);
}

#[test]
fn btree_a_flipped_bit_in_any_durable_page_is_an_error_never_wrong_data() {
    let (file, _, model) = two_commits(env_u64("KEEL_CRASH_KEYS", 250) as u32);
    let stats = Db::open(file.clone()).unwrap().stats();
    let pages = stats.page_count;
    // Pages on the free list hold nothing anyone reads; every other page is read by some get.
    let live = pages - 2 - stats.free_pages;
    let mut detected = 0;
    for page in 2..pages {
        let at = page as usize * PAGE_BYTES + 100 + (page as usize * 37) % 3900;
        flip(file.disk(), at);
        match Db::open(file.clone()) {
            // The free list is read at open: damage there fails the open.
            Err(DbError::Corrupt { page: p, .. }) => {
                assert_eq!(p, page);
                detected += 1;
            }
            Err(e) => panic!("page {page}: {e}"),
            Ok(db) => {
                let mut reachable = false;
                for (k, v) in &model {
                    match db.get(k) {
                        Ok(Some(got)) => assert_eq!(&*got, &v[..], "page {page}: wrong data for {k:?}"),
                        Ok(None) => panic!("page {page}: {k:?} lost without an error"),
                        Err(DbError::Corrupt { page: p, .. }) => {
                            assert_eq!(p, page);
                            reachable = true;
                        }
                        Err(e) => panic!("page {page}: {e}"),
                    }
                }
                let scan: Result<Model, DbError> = contents(&db);
                match scan {
                    Ok(found) => assert_eq!(found, model, "page {page}: the scan returned wrong data"),
                    Err(DbError::Corrupt { .. }) => reachable = true,
                    Err(e) => panic!("page {page}: {e}"),
                }
                // A page neither the tree nor the free list reaches holds nothing: only the
                // invariant walk may notice (it reports it corrupt if it reads it at all).
                if reachable {
                    detected += 1;
                    assert!(matches!(db.check_invariants(), Err(DbError::Corrupt { .. })), "page {page}");
                }
            }
        }
        flip(file.disk(), at);
    }
    assert_eq!(detected, live, "damaged live pages detected");
}

fn meta_slot_of_txn(txn: u64) -> usize {
    (txn % 2) as usize
}

#[test]
fn btree_a_damaged_newest_meta_page_falls_back_to_the_previous_commit() {
    let (file, first, _) = two_commits(500);
    let newest = Db::open(file.clone()).unwrap().stats().txn_id;
    assert_eq!(newest, 2);
    flip(file.disk(), meta_slot_of_txn(newest) * PAGE_BYTES + 50);
    let db = Db::open(file.clone()).unwrap();
    assert_eq!(db.stats().txn_id, 1);
    db.check_invariants().unwrap();
    assert_eq!(contents(&db).unwrap(), first);
}

#[test]
fn btree_a_damaged_older_meta_page_is_ignored() {
    let (file, _, second) = two_commits(500);
    flip(file.disk(), meta_slot_of_txn(1) * PAGE_BYTES + 3000);
    let db = Db::open(file.clone()).unwrap();
    assert_eq!(db.stats().txn_id, 2);
    assert_eq!(contents(&db).unwrap(), second);
}

#[test]
fn btree_two_damaged_meta_pages_are_a_clear_error() {
    let (file, _, _) = two_commits(100);
    flip(file.disk(), 60);
    flip(file.disk(), PAGE_BYTES + 60);
    match Db::open(file) {
        Err(e @ DbError::Corrupt { page: 0, .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("no valid meta page") && msg.contains("checksum"), "{msg}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a file with no valid meta page"),
    }
}

#[test]
fn btree_a_misdirected_page_is_detected() {
    let (file, _, model) = two_commits(800);
    let db = Db::open(file.clone()).unwrap();
    let pages = db.stats().page_count;
    drop(db);
    // Copy an intact page over another: its checksum holds, but it names another page.
    let (src, dst) = (pages - 1, pages - 2);
    file.disk().with_bytes(FILE, |b| {
        let copy = b[src as usize * PAGE_BYTES..(src as usize + 1) * PAGE_BYTES].to_vec();
        b[dst as usize * PAGE_BYTES..(dst as usize + 1) * PAGE_BYTES].copy_from_slice(&copy);
    });
    if let Ok(db) = Db::open(file) {
        for (k, v) in &model {
            if let Ok(Some(got)) = db.get(k) {
                assert_eq!(&*got, &v[..]);
            }
        }
        assert!(db.check_invariants().is_err());
    }
}
