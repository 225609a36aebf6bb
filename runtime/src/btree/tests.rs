//! Unit and property tests of the B-tree on the simulated disk (and one real file).

use super::page::{seal, Kind, Meta, PAGE_BYTES};
use super::*;
use crate::backend::{Backend, FileBackend, SimBackend};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::ops::Bound;

fn sim() -> SimBackend {
    SimBackend::new("btree")
}

fn key(i: u64) -> Vec<u8> {
    format!("key{i:08}").into_bytes()
}

fn all<F: PageFile>(db: &Db<F>) -> Vec<Entry> {
    db.range(Bound::Unbounded, Bound::Unbounded).collect::<Result<_, _>>().unwrap()
}

#[test]
fn a_new_file_opens_empty_and_reopens() {
    let file = sim();
    let db = Db::open(file.clone()).unwrap();
    assert_eq!(db.get(b"a").unwrap(), None);
    assert!(all(&db).is_empty());
    assert_eq!(db.stats().key_count, 0);
    db.check_invariants().unwrap();
    drop(db);
    let db = Db::open(file).unwrap();
    assert_eq!(db.stats().txn_id, 0);
}

#[test]
fn puts_and_deletes_are_visible_in_the_txn_and_durable_after_commit() {
    let file = sim();
    let mut db = Db::open(file.clone()).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.put(b"b", b"2").unwrap();
    tx.put(b"a", b"1").unwrap();
    tx.put(b"c", b"3").unwrap();
    assert_eq!(tx.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(tx.delete(b"b").unwrap());
    assert!(!tx.delete(b"zz").unwrap());
    let keys: Vec<_> = tx.range(Bound::Unbounded, Bound::Unbounded).map(|r| r.unwrap().0).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec()]);
    tx.commit().unwrap();
    drop(db);
    let db = Db::open(file).unwrap();
    assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(db.get(b"b").unwrap(), None);
    assert_eq!(db.stats().key_count, 2);
    db.check_invariants().unwrap();
}

#[test]
fn dropping_a_txn_aborts_it() {
    let mut db = Db::open(sim()).unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.put(b"kept", b"1").unwrap();
    tx.commit().unwrap();
    let before = db.stats();
    let mut tx = db.begin_write().unwrap();
    for i in 0..500 {
        tx.put(&key(i), &[7; 300]).unwrap();
    }
    tx.delete(b"kept").unwrap();
    drop(tx);
    assert_eq!(db.stats(), Stats { file_bytes: db.stats().file_bytes, ..before });
    assert_eq!(all(&db), vec![(b"kept".to_vec(), b"1".to_vec())]);
    db.check_invariants().unwrap();
    let mut tx = db.begin_write().unwrap();
    tx.put(b"after", b"2").unwrap();
    tx.commit().unwrap();
    db.check_invariants().unwrap();
}

#[test]
fn many_keys_split_then_deleting_all_frees_every_page() {
    let mut db = Db::open(sim()).unwrap();
    let n = 6000;
    for batch in 0..6 {
        let mut tx = db.begin_write().unwrap();
        for i in (batch..n).step_by(6) {
            tx.put(&key(i), format!("value-{i}").as_bytes()).unwrap();
        }
        tx.commit().unwrap();
        db.check_invariants().unwrap();
    }
    let s = db.stats();
    assert_eq!(s.key_count, n);
    assert!(s.height >= 2, "{s:?}");
    assert_eq!(db.get(&key(4321)).unwrap().as_deref(), Some(&b"value-4321"[..]));
    let got = all(&db);
    assert_eq!(got.len() as u64, n);
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
    let rev: Vec<_> = db.range(Bound::Unbounded, Bound::Unbounded).rev().map(|r| r.unwrap()).collect();
    assert_eq!(rev.into_iter().rev().collect::<Vec<_>>(), got);
    for batch in 0..3 {
        let mut tx = db.begin_write().unwrap();
        for i in (batch..n).step_by(3) {
            assert!(tx.delete(&key(i)).unwrap());
        }
        tx.commit().unwrap();
        db.check_invariants().unwrap();
    }
    let s = db.stats();
    assert_eq!((s.key_count, s.height), (0, 0));
    // Everything but the meta pages and the free list's own chain is free.
    assert!(s.free_pages + 2 + s.free_pages.div_ceil(507) + 1 >= s.page_count, "{s:?}");
}

#[test]
fn overwriting_reuses_pages_instead_of_growing() {
    let mut db = Db::open(sim()).unwrap();
    let mut sizes = Vec::new();
    for round in 0..30u8 {
        let mut tx = db.begin_write().unwrap();
        for i in 0..300 {
            tx.put(&key(i), &[round; 100]).unwrap();
        }
        tx.put(b"big", &vec![round; 20_000]).unwrap();
        tx.commit().unwrap();
        sizes.push(db.stats().page_count);
    }
    db.check_invariants().unwrap();
    // After a few rounds the tree lives in pages freed two commits before. (The high-water
    // mark may still move by a page or so as the free list's own pages alternate.)
    let settled = sizes[..=10].iter().copied().max().unwrap();
    assert!(sizes[10..].iter().all(|s| *s <= settled), "{sizes:?}");
}

#[test]
fn values_of_every_size_round_trip() {
    let file = sim();
    let mut db = Db::open(file.clone()).unwrap();
    let sizes = [0usize, 1, 1024, 1025, 4060, 4061, 3 * 4060, 100_000, 1 << 20];
    let value = |n: usize| (0..n).map(|i| (i * 7 + n) as u8).collect::<Vec<u8>>();
    let mut tx = db.begin_write().unwrap();
    for n in sizes {
        tx.put(format!("v{n:08}").as_bytes(), &value(n)).unwrap();
        assert_eq!(tx.get(format!("v{n:08}").as_bytes()).unwrap(), Some(value(n)), "in txn, {n}");
    }
    tx.commit().unwrap();
    db.check_invariants().unwrap();
    drop(db);
    let mut db = Db::open(file).unwrap();
    for n in sizes {
        assert_eq!(db.get(format!("v{n:08}").as_bytes()).unwrap().as_deref(), Some(&value(n)[..]), "{n}");
    }
    // Shrink, grow and delete overflow values: their chains are freed.
    let mut tx = db.begin_write().unwrap();
    tx.put(b"v00100000", b"small").unwrap();
    tx.put(b"v00000001", &value(50_000)).unwrap();
    tx.delete(b"v01048576").unwrap();
    tx.commit().unwrap();
    db.check_invariants().unwrap();
    assert_eq!(db.get(b"v00000001").unwrap().as_deref(), Some(&value(50_000)[..]));
}

#[test]
fn limits_are_errors() {
    let mut db = Db::open(sim()).unwrap();
    let mut tx = db.begin_write().unwrap();
    let long = vec![1u8; MAX_KEY_BYTES + 1];
    assert!(matches!(tx.put(&long, b"v"), Err(DbError::KeyTooLarge { len: 1025, max: 1024 })));
    assert!(matches!(tx.delete(&long), Err(DbError::KeyTooLarge { .. })));
    tx.put(&long[..MAX_KEY_BYTES], &[2; 1024]).unwrap();
    let huge = vec![0u8; MAX_VALUE_BYTES + 1];
    assert!(matches!(tx.put(b"k", &huge), Err(DbError::ValueTooLarge { .. })));
    tx.commit().unwrap();
    assert_eq!(db.get(&long[..MAX_KEY_BYTES]).unwrap().as_deref(), Some(&[2u8; 1024][..]));
}

#[test]
fn the_largest_keys_and_values_still_split_and_merge() {
    let mut db = Db::open(sim()).unwrap();
    let big_key = |i: u32| {
        let mut k = vec![b'k'; MAX_KEY_BYTES];
        k[MAX_KEY_BYTES - 4..].copy_from_slice(&i.to_be_bytes());
        k
    };
    let mut tx = db.begin_write().unwrap();
    for i in 0..400 {
        tx.put(&big_key(i), &[i as u8; 1024]).unwrap();
    }
    tx.commit().unwrap();
    db.check_invariants().unwrap();
    assert!(db.stats().height >= 3, "{:?}", db.stats());
    let mut tx = db.begin_write().unwrap();
    for i in (0..400).filter(|i| i % 7 != 0) {
        tx.delete(&big_key(i)).unwrap();
    }
    tx.commit().unwrap();
    db.check_invariants().unwrap();
    assert_eq!(db.stats().key_count, 58);
}

#[test]
fn range_bounds_and_last_in_range() {
    let mut db = Db::open(sim()).unwrap();
    let mut tx = db.begin_write().unwrap();
    for i in (0..2000).step_by(2) {
        tx.put(&key(i), b"v").unwrap();
    }
    tx.commit().unwrap();
    let keys = |r: Range<'_>| r.map(|e| e.unwrap().0).collect::<Vec<_>>();
    let (k10, k20, k11) = (key(10), key(20), key(11));
    assert_eq!(keys(db.range(Bound::Included(&k10), Bound::Excluded(&k20))).len(), 5);
    assert_eq!(keys(db.range(Bound::Excluded(&k10), Bound::Included(&k20))).len(), 5);
    assert_eq!(keys(db.range(Bound::Included(&k11), Bound::Unbounded)).first(), Some(&key(12)));
    assert_eq!(keys(db.range(Bound::Included(&k20), Bound::Excluded(&k10))), Vec::<Vec<u8>>::new());
    let last = db.last_in_range(Bound::Unbounded, Bound::Included(&k11)).unwrap().unwrap();
    assert_eq!(last.0, key(10));
    let last = db.last_in_range(Bound::Unbounded, Bound::Excluded(&k10)).unwrap().unwrap();
    assert_eq!(last.0, key(8));
    assert_eq!(db.last_in_range(Bound::Unbounded, Bound::Excluded(&key(0))).unwrap(), None);
    assert_eq!(db.last_in_range(Bound::Unbounded, Bound::Unbounded).unwrap().unwrap().0, key(1998));
    // Both ends meet in the middle without repeating an entry.
    let mut r = db.range(Bound::Included(&k10), Bound::Included(&k20));
    let mut seen = Vec::new();
    loop {
        match (r.next(), r.next_back()) {
            (None, None) => break,
            (a, b) => seen.extend(a.into_iter().chain(b).map(|e| e.unwrap().0)),
        }
    }
    seen.sort();
    assert_eq!(seen, (10..=20).step_by(2).map(key).collect::<Vec<_>>());
}

#[test]
fn another_format_version_is_a_clear_error() {
    let file = sim();
    drop(Db::open(file.clone()).unwrap());
    file.disk().with_bytes("btree", |b| {
        b[32..36].copy_from_slice(&7u32.to_le_bytes());
        seal(&mut b[..PAGE_BYTES], Kind::Meta, 0, 0);
    });
    match Db::open(file) {
        Err(DbError::FormatVersion { found: 7, expected: FORMAT_VERSION, .. }) => {}
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn a_real_file_is_mapped_locked_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut db = Db::open(FileBackend::open(&path).unwrap()).unwrap();
    assert!(matches!(Db::open(FileBackend::open(&path).unwrap()), Err(DbError::Locked { .. })));
    for batch in 0..5u64 {
        let mut tx = db.begin_write().unwrap();
        for i in 0..2000 {
            tx.put(&key(batch * 2000 + i), &[batch as u8; 100]).unwrap();
        }
        tx.put(b"big", &vec![batch as u8; 10_000]).unwrap();
        tx.commit().unwrap();
    }
    assert!(matches!(db.get(&key(10)).unwrap(), Some(std::borrow::Cow::Borrowed(_))), "read in place");
    db.check_invariants().unwrap();
    let stats = db.stats();
    drop(db);
    let db = Db::open(FileBackend::open(&path).unwrap()).unwrap();
    assert_eq!(db.stats(), stats);
    assert_eq!(db.get(&key(9999)).unwrap().as_deref(), Some(&[4u8; 100][..]));
    assert_eq!(db.get(b"big").unwrap().as_deref(), Some(&vec![4u8; 10_000][..]));
    db.check_invariants().unwrap();
}

/// Fills `db` with `n` keys (every tenth value overflowing), deletes all but every
/// `keep_every`th, and returns the model of what is left.
fn fill_then_delete_most<F: PageFile>(db: &mut Db<F>, n: u64, keep_every: u64) -> Model {
    let mut model = Model::new();
    for batch in 0..4 {
        let mut tx = db.begin_write().unwrap();
        for i in (batch..n).step_by(4) {
            let v = vec![i as u8; if i % 7 == 0 { 9000 } else { 300 }];
            tx.put(&key(i), &v).unwrap();
            model.insert(key(i), v);
        }
        tx.commit().unwrap();
    }
    let mut tx = db.begin_write().unwrap();
    for i in 0..n {
        if i % keep_every != 0 {
            assert!(tx.delete(&key(i)).unwrap());
            model.remove(&key(i));
        }
    }
    tx.commit().unwrap();
    db.check_invariants().unwrap();
    model
}

#[test]
fn shrinking_after_deleting_most_keys_gives_the_space_back() {
    let file = sim();
    let mut db = Db::open(file.clone()).unwrap();
    let model = fill_then_delete_most(&mut db, 6000, 20);
    let before = db.stats();
    let steps = shrink_fully(&mut db, 64, &model);
    let after = db.stats();
    eprintln!("{steps} steps: {before:?} -> {after:?}");
    assert!(before.file_pages > 5 * after.file_pages, "{before:?} -> {after:?}");
    // Near the live data: the pages in use, and the few free pages a commit always leaves.
    assert!(after.file_pages <= after.used_pages + 8, "{after:?}");
    assert_eq!(after.file_bytes, file.len());
    drop(db);
    let mut db = Db::open(file.clone()).unwrap();
    db.check_invariants().unwrap();
    assert_eq!(all(&db), model.into_iter().collect::<Vec<_>>());
    // The shrunk file grows again as needed.
    let mut tx = db.begin_write().unwrap();
    for i in 0..3000 {
        tx.put(&key(100_000 + i), &[7; 500]).unwrap();
    }
    tx.commit().unwrap();
    db.check_invariants().unwrap();
    assert_eq!(db.get(&key(102_999)).unwrap().as_deref(), Some(&[7u8; 500][..]));
}

#[test]
fn shrinking_interleaves_with_writes() {
    let mut db = Db::open(sim()).unwrap();
    let mut model = fill_then_delete_most(&mut db, 3000, 10);
    let start = db.stats();
    for round in 0..500u64 {
        let p = db.shrink_step(8).unwrap();
        db.check_invariants().unwrap();
        let mut tx = db.begin_write().unwrap();
        let (k, v) = (key(round * 7 % 3000), vec![round as u8; (round as usize * 97) % 3000]);
        tx.put(&k, &v).unwrap();
        model.insert(k, v);
        tx.commit().unwrap();
        if p.done && round > 20 {
            break;
        }
    }
    db.check_invariants().unwrap();
    assert_eq!(all(&db), model.into_iter().collect::<Vec<_>>());
    assert!(db.stats().file_pages * 3 < start.file_pages, "{start:?} -> {:?}", db.stats());
}

#[test]
fn shrinking_a_real_mapped_file_remaps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut db = Db::open(FileBackend::open(&path).unwrap()).unwrap();
    let model = fill_then_delete_most(&mut db, 8000, 16);
    let before = std::fs::metadata(&path).unwrap().len();
    for (k, v) in &model {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]));
    }
    shrink_fully(&mut db, 128, &model);
    let after = std::fs::metadata(&path).unwrap().len();
    assert_eq!(after, db.stats().file_bytes);
    assert!(before > 5 * after, "{before} -> {after} bytes");
    // Reads after the truncation go through the new map (a stale one would fault).
    for (k, v) in &model {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]));
    }
    assert!(matches!(db.get(&key(16)).unwrap(), Some(std::borrow::Cow::Borrowed(_))), "read in place");
    drop(db);
    let db = Db::open(FileBackend::open(&path).unwrap()).unwrap();
    db.check_invariants().unwrap();
    assert_eq!(all(&db), model.into_iter().collect::<Vec<_>>());
}

#[test]
fn the_file_is_not_truncated_below_the_older_meta() {
    let file = sim();
    let mut db = Db::open(file.clone()).unwrap();
    let model = fill_then_delete_most(&mut db, 2000, 10);
    // Two commits in a row that lower the high-water mark: the older one's count still holds
    // the file's length until the next commit replaces it.
    loop {
        let p = db.shrink_step(4).unwrap();
        assert!(p.file_pages >= db.other_page_count.max(p.page_count));
        if p.done {
            break;
        }
    }
    drop(db);
    // Damage the newest meta: the fallback to the older one still finds its pages.
    let newest = Db::open(file.clone()).unwrap().stats().txn_id;
    file.disk().with_bytes("btree", |b| b[(newest as usize % 2) * PAGE_BYTES + 40] ^= 1);
    let db = Db::open(file).unwrap();
    assert_eq!(db.stats().txn_id, newest - 1);
    db.check_invariants().unwrap();
    assert_eq!(all(&db), model.into_iter().collect::<Vec<_>>());
}

#[test]
fn meta_pages_alternate() {
    let file = sim();
    let mut db = Db::open(file.clone()).unwrap();
    for i in 1..=3u64 {
        let mut tx = db.begin_write().unwrap();
        tx.put(b"k", &i.to_le_bytes()).unwrap();
        tx.commit().unwrap();
        let mut page = vec![0; PAGE_BYTES];
        file.read_at((i % 2) * PAGE_BYTES as u64, &mut page).unwrap();
        assert_eq!(Meta::decode(&page, i % 2).unwrap().txn, i);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(u16, u16),
    Delete(u16),
    Get(u16),
    Range(u16, u16, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u16..400;
    prop_oneof![
        20 => (k.clone(), 0u16..2000).prop_map(|(k, v)| Op::Put(k, v)),
        8 => k.clone().prop_map(Op::Delete),
        4 => k.clone().prop_map(Op::Get),
        2 => (k.clone(), k, any::<bool>()).prop_map(|(a, b, rev)| Op::Range(a, b, rev)),
    ]
}

/// One write transaction's operations, whether it commits, reads of the committed state after
/// it, whether the file is reopened then, and the pages per shrink step to shrink it with
/// (0: no shrinking).
type Batch = (Vec<Op>, bool, Vec<Op>, bool, usize);

fn batch() -> impl Strategy<Value = Batch> {
    (
        proptest::collection::vec(op(), 0..60),
        proptest::bool::weighted(0.85),
        proptest::collection::vec(op(), 0..6),
        proptest::bool::weighted(0.2),
        prop_oneof![2 => Just(0usize), 1 => 1usize..40],
    )
}

/// Keys of varied lengths that still collide often; values mostly small, some overflowing.
fn model_key(k: u16) -> Vec<u8> {
    let mut v = vec![b'k'; (k as usize * 37) % 300];
    v.extend_from_slice(&k.to_be_bytes());
    v
}

fn model_value(k: u16, v: u16) -> Vec<u8> {
    let len = if matches!(v % 50, 0) { 1000 + v as usize * 10 } else { v as usize % 200 };
    (0..len).map(|i| (i as u16 ^ k ^ v) as u8).collect()
}

/// Shrinks `db` step by step until it is done, checking the invariants and the contents
/// after every step; returns the steps taken.
fn shrink_fully<F: PageFile>(db: &mut Db<F>, max_pages: usize, model: &Model) -> usize {
    // Each step moves the highest live page down or finishes; parents copied along can move
    // up, so allow a generous multiple of the pages there are.
    let bound = 10 + 4 * db.stats().page_count as usize;
    for step in 1..=bound {
        let p = db.shrink_step(max_pages).unwrap();
        db.check_invariants().unwrap_or_else(|e| panic!("after shrink step {step}: {e}"));
        let s = db.stats();
        assert_eq!((p.page_count, p.file_pages), (s.page_count, s.file_pages));
        assert!(s.file_pages >= s.page_count);
        if p.done {
            let found: Model =
                db.range(Bound::Unbounded, Bound::Unbounded).collect::<Result<_, _>>().unwrap();
            assert!(found == *model, "shrinking changed the contents");
            assert_eq!(
                db.shrink_step(max_pages).unwrap(),
                ShrinkProgress { moved_pages: 0, ..p },
                "done is done"
            );
            return step;
        }
    }
    panic!("shrinking did not finish in {bound} steps: {:?}", db.stats());
}

fn cases() -> u32 {
    std::env::var("KEEL_BTREE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;
type RangeFn<'a> = &'a dyn Fn(&[u8], &[u8], bool) -> Vec<Entry>;

/// Runs a read-only op against `model` and through `get`/`range`/`last` of the tree.
fn check_read(
    op: &Op,
    model: &Model,
    get: &dyn Fn(&[u8]) -> Option<Vec<u8>>,
    range: RangeFn<'_>,
    last: &dyn Fn(&[u8]) -> Option<Entry>,
) -> Result<(), TestCaseError> {
    match op {
        Op::Get(k) => {
            let got = get(&model_key(*k));
            prop_assert_eq!(got.as_ref(), model.get(&model_key(*k)));
        }
        Op::Range(a, b, rev) => {
            let (a, b) = (model_key(*a), model_key(*b));
            let mut want: Vec<_> = if a <= b {
                model
                    .range::<Vec<u8>, _>((Bound::Included(&a), Bound::Excluded(&b)))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            if *rev {
                want.reverse();
            }
            prop_assert_eq!(range(&a, &b, *rev), want);
            let want_last = model.range::<Vec<u8>, _>(..=&b).next_back().map(|(k, v)| (k.clone(), v.clone()));
            prop_assert_eq!(last(&b), want_last);
        }
        Op::Put(..) | Op::Delete(_) => {}
    }
    Ok(())
}

fn collect(r: Range<'_>, rev: bool) -> Vec<Entry> {
    if rev {
        r.rev().collect::<Result<_, _>>().unwrap()
    } else {
        r.collect::<Result<_, _>>().unwrap()
    }
}

proptest! {
    // KEEL_BTREE_CASES=1000 for a longer run.
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn behaves_like_a_btreemap(batches in proptest::collection::vec(batch(), 1..12)) {
        let file = sim();
        let mut db = Db::open(file.clone()).unwrap();
        let mut durable = Model::new();
        for (ops, commit, reads, reopen, shrink_pages) in batches {
            let mut live = durable.clone();
            let mut tx = db.begin_write().unwrap();
            for op in &ops {
                match op {
                    Op::Put(k, v) => {
                        tx.put(&model_key(*k), &model_value(*k, *v)).unwrap();
                        live.insert(model_key(*k), model_value(*k, *v));
                    }
                    Op::Delete(k) => {
                        prop_assert_eq!(tx.delete(&model_key(*k)).unwrap(), live.remove(&model_key(*k)).is_some());
                    }
                    read => check_read(
                        read,
                        &live,
                        &|k| tx.get(k).unwrap(),
                        &|a, b, rev| collect(tx.range(Bound::Included(a), Bound::Excluded(b)), rev),
                        &|b| tx.last_in_range(Bound::Unbounded, Bound::Included(b)).unwrap(),
                    )?,
                }
            }
            if commit {
                tx.commit().unwrap();
                durable = live;
            } else {
                drop(tx);
            }
            db.check_invariants().unwrap();
            if shrink_pages > 0 {
                shrink_fully(&mut db, shrink_pages, &durable);
            }
            for op in &reads {
                check_read(
                    op,
                    &durable,
                    &|k| db.get(k).unwrap().map(|c| c.into_owned()),
                    &|a, b, rev| collect(db.range(Bound::Included(a), Bound::Excluded(b)), rev),
                    &|b| db.last_in_range(Bound::Unbounded, Bound::Included(b)).unwrap(),
                )?;
            }
            if reopen {
                drop(db);
                db = Db::open(file.clone()).unwrap();
                db.check_invariants().unwrap();
            }
            prop_assert_eq!(all(&db), durable.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>());
            prop_assert_eq!(db.stats().key_count, durable.len() as u64);
        }
    }

    #[test]
    fn the_page_decoder_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let _ = fuzz_decode_page(&bytes);
    }

    #[test]
    fn the_page_decoder_never_panics_on_damaged_pages(
        flips in proptest::collection::vec((0usize..PAGE_BYTES, any::<u8>()), 1..20),
        which in 2u64..12,
    ) {
        let mut db = Db::open(sim()).unwrap();
        let mut tx = db.begin_write().unwrap();
        for i in 0..200 { tx.put(&key(i), &vec![i as u8; (i as usize * 13) % 1500]).unwrap(); }
        tx.commit().unwrap();
        let mut page = vec![0; PAGE_BYTES];
        if db.backend().read_at(which * PAGE_BYTES as u64, &mut page).is_ok() {
            for (at, x) in flips { page[at] ^= x; }
            let _ = fuzz_decode_page(&page);
        }
    }
}
