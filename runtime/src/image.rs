//! The state machine's durable image, kept in the B-tree: what a restart starts from instead of
//! the whole log, what lets the WAL release old segments, and what a leader sends a follower
//! that is too far behind for the log.
//!
//! Layout (one ordered keyspace, tables by prefix byte):
//!
//! ```text
//! "s"                 -> keelpb.StateImage   (applied index and term, configuration,
//!                                             revisions, leases, members, recent request ids)
//! "k" ++ key          -> keelpb.KeyHistoryImage (every version compaction kept, oldest first)
//! "h" ++ sha1(key)    -> keelpb.KeyImage     (the same, for keys too long for a B-tree key)
//! ```
//!
//! The image is updated at checkpoints, in one B-tree commit: the histories of the keys that
//! changed since the last one, and the state record. Keys are stored in key order, so a restart
//! reads them in one pass and builds the in-memory index without sorting.

use crate::btree::{Db, DbError, PageFile, ShrinkProgress, MAX_KEY_BYTES};
use bytes::Bytes;
use keel_core::lease::LessorConfig;
use keel_core::pb::keelpb::{ConfState, FullImage, KeyHistoryImage, KeyImage, SnapshotMetadata, StateImage};
use keel_core::state_machine::StateMachine;
use prost::Message as _;
use sha1::{Digest, Sha1};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use thiserror::Error;

const STATE_KEY: &[u8] = b"s";
const KEY_PREFIX: u8 = b'k';
const HASHED_PREFIX: u8 = b'h';

#[derive(Debug, Error)]
pub enum ImageError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("state image {what}: {reason}")]
    Invalid { what: String, reason: String },
}

fn invalid(what: &str, reason: impl ToString) -> ImageError {
    ImageError::Invalid { what: what.to_string(), reason: reason.to_string() }
}

/// Where key `key`'s history lives in the tree.
fn tree_key(key: &[u8]) -> Vec<u8> {
    if key.len() < MAX_KEY_BYTES {
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(KEY_PREFIX);
        k.extend_from_slice(key);
        k
    } else {
        let mut k = vec![HASHED_PREFIX];
        k.extend_from_slice(&Sha1::digest(key));
        k
    }
}

/// Merges two streams ordered by key into one.
fn merge_sorted<A, B>(a: A, b: B) -> impl Iterator<Item = (Bytes, KeyHistoryImage)>
where
    A: Iterator<Item = (Bytes, KeyHistoryImage)>,
    B: Iterator<Item = (Bytes, KeyHistoryImage)>,
{
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if y.0 < x.0 => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

/// The durable image on top of one B-tree file. Clones are handles on the same image, so a
/// save can run on another thread while the node task goes on; every use takes its lock.
pub struct Image<F: PageFile> {
    inner: Arc<Mutex<Inner<F>>>,
    /// Figures the node task reads often, kept outside the lock: a save or a defragment's step
    /// can hold the lock for a long time, and the node task must not wait on it to tick.
    figures: Arc<Figures>,
}

/// The image's index and sizes as of its last change (see [`Image`]).
#[derive(Default)]
struct Figures {
    index: std::sync::atomic::AtomicU64,
    file_bytes: std::sync::atomic::AtomicU64,
    used_bytes: std::sync::atomic::AtomicU64,
}

impl Figures {
    fn publish<F: PageFile>(&self, inner: &Inner<F>) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = inner.db.stats();
        self.index.store(inner.index, Relaxed);
        self.file_bytes.store(stats.file_bytes, Relaxed);
        self.used_bytes.store(stats.used_pages * crate::btree::PAGE_BYTES as u64, Relaxed);
    }
}

impl<F: PageFile> Clone for Image<F> {
    fn clone(&self) -> Self {
        Image { inner: self.inner.clone(), figures: self.figures.clone() }
    }
}

struct Inner<F: PageFile> {
    db: Db<F>,
    /// The applied index of the image on disk (0: none yet).
    index: u64,
    /// The last whole image encoded for a follower, by index.
    full: Option<(u64, Bytes, SnapshotMetadata)>,
}

/// What one save writes: the histories of the keys that changed (`None`: the key has none
/// left), and the state record. Taken from the state machine at one applied index, so it can be
/// written later, elsewhere.
pub struct SaveJob {
    pub meta: SnapshotMetadata,
    state: StateImage,
    changes: Vec<(Bytes, Option<KeyHistoryImage>)>,
}

impl SaveJob {
    /// Takes what changed in `sm` since the last job (emptying its changed-key set) and its
    /// state at its applied index, whose term and configuration the caller gives.
    pub fn take(sm: &mut StateMachine, term: u64, conf_state: ConfState) -> SaveJob {
        let changes = sm.store.take_dirty().into_iter().map(|k| {
            let h = sm.store.history_image(&k);
            (k, h)
        });
        let changes = changes.collect();
        let state = sm.image_state(term, conf_state.clone());
        let meta = SnapshotMetadata { conf_state: Some(conf_state), index: state.applied_index, term };
        SaveJob { meta, state, changes }
    }

    /// How many keys it rewrites.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

impl<F: PageFile> Image<F> {
    pub fn open(file: F) -> Result<Self, ImageError> {
        let inner = Inner::open(file)?;
        let figures = Arc::new(Figures::default());
        figures.publish(&inner);
        Ok(Image { inner: Arc::new(Mutex::new(inner)), figures })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<F>> {
        // A panic while holding the lock leaves the image unknown: stop loudly.
        self.inner.lock().expect("the state image's lock is poisoned")
    }

    /// The applied index the image on disk stands for (0 when there is none). Never waits for
    /// the lock.
    pub fn index(&self) -> u64 {
        self.figures.index.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads the image back into a state machine, or `None` for an empty file.
    pub fn load(&self, lease_config: LessorConfig) -> Result<Option<Loaded>, ImageError> {
        self.lock().load(lease_config)
    }

    /// Saves `sm` now (see [`SaveJob::take`] and [`Image::apply`]).
    pub fn save(&self, sm: &mut StateMachine, term: u64, conf_state: ConfState) -> Result<(), ImageError> {
        self.apply(SaveJob::take(sm, term, conf_state)).map(|_| ())
    }

    /// Writes a save job in one durable commit. A job older than the image on disk (a leader's
    /// snapshot was installed meanwhile) is dropped: returns whether it was written. A failure
    /// leaves the image as it was, but the job's changes are lost, so the caller must stop.
    pub fn apply(&self, job: SaveJob) -> Result<bool, ImageError> {
        let mut inner = self.lock();
        let result = inner.apply(job);
        self.figures.publish(&inner);
        result
    }

    /// The whole image as one message (a Raft snapshot's data) and the snapshot point it
    /// stands for, read from disk; cached by index.
    pub fn full(&self) -> Result<(Bytes, SnapshotMetadata), ImageError> {
        self.lock().full()
    }

    /// Replaces the image with a leader's (a Raft snapshot's data), durably, and returns the
    /// state machine it stands for.
    /// Refused before anything is written if the data is not the state `expected` names.
    pub fn install(
        &self,
        data: &[u8],
        expected: &SnapshotMetadata,
        lease_config: LessorConfig,
    ) -> Result<Loaded, ImageError> {
        let mut inner = self.lock();
        let result = inner.install(data, expected, lease_config);
        self.figures.publish(&inner);
        result
    }

    /// Gives free space back to the file system: runs up to `steps` steps of
    /// [`Db::shrink_step`], `pages_per_step` pages each, taking the lock for each step alone so
    /// that saves go on between them. Returns the last step's progress (`done` when the file is
    /// as short as it gets).
    pub fn shrink(&self, steps: usize, pages_per_step: usize) -> Result<ShrinkProgress, ImageError> {
        assert!(steps > 0);
        let mut progress = None;
        for _ in 0..steps {
            let p = {
                let mut inner = self.lock();
                let p = inner.db.shrink_step(pages_per_step);
                self.figures.publish(&inner);
                p?
            };
            progress = Some(p);
            if p.done {
                break;
            }
        }
        Ok(progress.expect("at least one step"))
    }

    /// Bytes the image file occupies.
    pub fn file_bytes(&self) -> u64 {
        self.figures.file_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of the file's pages in use (neither free nor past the high-water mark), as of the
    /// image's last change. Never waits for the lock.
    pub fn used_bytes(&self) -> u64 {
        self.figures.used_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` on the B-tree (for statistics and benchmarks).
    pub fn with_db<R>(&self, f: impl FnOnce(&Db<F>) -> R) -> R {
        f(&self.lock().db)
    }
}

/// An image read back: the state machine and the snapshot point it stands for.
pub struct Loaded {
    pub sm: StateMachine,
    pub meta: SnapshotMetadata,
}

impl<F: PageFile> Inner<F> {
    fn open(file: F) -> Result<Self, ImageError> {
        let db = Db::open(file)?;
        let index = match db.get(STATE_KEY)? {
            Some(bytes) => {
                StateImage::decode(&bytes[..]).map_err(|e| invalid("state record", e))?.applied_index
            }
            None => 0,
        };
        Ok(Inner { db, index, full: None })
    }

    fn load(&self, lease_config: LessorConfig) -> Result<Option<Loaded>, ImageError> {
        let Some(state) = self.db.get(STATE_KEY)? else { return Ok(None) };
        let state = StateImage::decode(&state[..]).map_err(|e| invalid("state record", e))?;
        // Long keys (stored by hash) are rare: read them first and merge them into the ordered
        // stream of the others, so the store is built in one pass.
        let mut long: Vec<(Bytes, KeyHistoryImage)> = Vec::new();
        let (lo, hi) = ([HASHED_PREFIX], [HASHED_PREFIX + 1]);
        for item in self.db.range(Bound::Included(&lo[..]), Bound::Excluded(&hi[..])) {
            let (_, v) = item?;
            let k = KeyImage::decode(Bytes::from(v)).map_err(|e| invalid("long key record", e))?;
            long.push((k.key, k.history.unwrap_or_default()));
        }
        long.sort_by(|a, b| a.0.cmp(&b.0));
        let mut failure: Option<ImageError> = None;
        let (lo, hi) = ([KEY_PREFIX], [KEY_PREFIX + 1]);
        let short = self.db.range(Bound::Included(&lo[..]), Bound::Excluded(&hi[..])).map_while(|item| {
            let decoded = item.map_err(ImageError::from).and_then(|(k, v)| {
                // Decoding from an owned buffer lets the values share it instead of copying.
                let history =
                    KeyHistoryImage::decode(Bytes::from(v)).map_err(|e| invalid("key history", e))?;
                Ok((Bytes::from(k).slice(1..), history))
            });
            match decoded {
                Ok(kv) => Some(kv),
                Err(e) => {
                    failure = Some(e);
                    None
                }
            }
        });
        let keys = merge_sorted(short, long.into_iter());
        let meta = SnapshotMetadata {
            conf_state: state.conf_state.clone(),
            index: state.applied_index,
            term: state.applied_term,
        };
        let restored = StateMachine::restore(lease_config, &state, keys);
        if let Some(e) = failure {
            return Err(e);
        }
        let sm = restored.map_err(|reason| invalid("contents", reason))?;
        Ok(Some(Loaded { sm, meta }))
    }

    fn apply(&mut self, job: SaveJob) -> Result<bool, ImageError> {
        if job.state.applied_index <= self.index {
            return Ok(false);
        }
        let mut tx = self.db.begin_write()?;
        for (key, history) in job.changes {
            let tk = tree_key(&key);
            match history {
                Some(h) if tk[0] == KEY_PREFIX => tx.put(&tk, &h.encode_to_vec())?,
                Some(h) => tx.put(&tk, &KeyImage { key, history: Some(h) }.encode_to_vec())?,
                None => {
                    tx.delete(&tk)?;
                }
            }
        }
        tx.put(STATE_KEY, &job.state.encode_to_vec())?;
        tx.commit()?;
        self.index = job.state.applied_index;
        Ok(true)
    }

    fn full(&mut self) -> Result<(Bytes, SnapshotMetadata), ImageError> {
        if let Some((index, bytes, meta)) = &self.full {
            if *index == self.index {
                return Ok((bytes.clone(), meta.clone()));
            }
        }
        let Some(state) = self.db.get(STATE_KEY)? else {
            return Err(invalid("for a follower", "no image has been saved"));
        };
        let state = StateImage::decode(&state[..]).map_err(|e| invalid("state record", e))?;
        let mut keys = Vec::new();
        for item in self.db.range(Bound::Unbounded, Bound::Unbounded) {
            let (k, v) = item?;
            match k.first() {
                Some(&KEY_PREFIX) => keys.push(KeyImage {
                    key: Bytes::copy_from_slice(&k[1..]),
                    history: Some(KeyHistoryImage::decode(&v[..]).map_err(|e| invalid("key history", e))?),
                }),
                Some(&HASHED_PREFIX) => {
                    keys.push(KeyImage::decode(&v[..]).map_err(|e| invalid("long key", e))?)
                }
                _ => {}
            }
        }
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        let meta = SnapshotMetadata {
            conf_state: state.conf_state.clone(),
            index: state.applied_index,
            term: state.applied_term,
        };
        let bytes = Bytes::from(FullImage { state: Some(state), keys }.encode_to_vec());
        self.full = Some((self.index, bytes.clone(), meta.clone()));
        Ok((bytes, meta))
    }

    fn install(
        &mut self,
        data: &[u8],
        expected: &SnapshotMetadata,
        lease_config: LessorConfig,
    ) -> Result<Loaded, ImageError> {
        let full = FullImage::decode(data).map_err(|e| invalid("from the leader", e))?;
        let state = full.state.ok_or_else(|| invalid("from the leader", "no state record"))?;
        if state.applied_index != expected.index
            || state.applied_term != expected.term
            || state.conf_state != expected.conf_state
        {
            return Err(invalid(
                "from the leader",
                format!(
                    "state at {}/{}, the snapshot names {}/{}",
                    state.applied_term, state.applied_index, expected.term, expected.index
                ),
            ));
        }
        let keys: Vec<(Bytes, KeyHistoryImage)> =
            full.keys.into_iter().map(|k| (k.key, k.history.unwrap_or_default())).collect();
        let sm = StateMachine::restore(lease_config, &state, keys.iter().cloned())
            .map_err(|reason| invalid("from the leader", reason))?;
        let mut tx = self.db.begin_write()?;
        let old: Vec<Vec<u8>> = tx
            .range(Bound::Unbounded, Bound::Unbounded)
            .map(|r| r.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        for k in old {
            tx.delete(&k)?;
        }
        for (key, history) in keys {
            let tk = tree_key(&key);
            if tk[0] == KEY_PREFIX {
                tx.put(&tk, &history.encode_to_vec())?;
            } else {
                tx.put(&tk, &KeyImage { key, history: Some(history) }.encode_to_vec())?;
            }
        }
        tx.put(STATE_KEY, &state.encode_to_vec())?;
        tx.commit()?;
        self.index = state.applied_index;
        self.full = None;
        let meta = SnapshotMetadata {
            conf_state: state.conf_state.clone(),
            index: state.applied_index,
            term: state.applied_term,
        };
        Ok(Loaded { sm, meta })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Dir as _, SimBackend, SimDisk};
    use keel_core::pb::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest};
    use keel_core::pb::keelpb::{request::Op, Entry, EntryType, Request};

    fn apply(sm: &mut StateMachine, index: u64, op: Op) {
        let data = Request { id: index, op: Some(op) }.encode_to_vec();
        sm.apply(&Entry { index, term: 1, entry_type: 0, data: data.into() }, 0);
    }

    fn conf() -> ConfState {
        ConfState { voters: vec![1], learners: vec![] }
    }

    /// An image of 1000 keys with 3000-byte values, of which nine in ten were then deleted
    /// and compacted away (saved before and after): the state machine, its last index, and the
    /// image's file.
    fn mostly_deleted() -> (Image<SimBackend>, SimBackend, StateMachine, u64) {
        let file = SimBackend::new("image");
        let image = Image::open(file.clone()).unwrap();
        let mut sm = StateMachine::default();
        let mut index = 0;
        for i in 0..1000u64 {
            index += 1;
            let key = Bytes::from(format!("key/{i:05}"));
            let value = vec![i as u8; 3000].into();
            apply(&mut sm, index, Op::Put(PutRequest { key, value, ..Default::default() }));
        }
        image.save(&mut sm, 1, conf()).unwrap();
        for i in (0..1000u64).filter(|i| i % 10 != 0) {
            index += 1;
            let key = Bytes::from(format!("key/{i:05}"));
            apply(&mut sm, index, Op::DeleteRange(DeleteRangeRequest { key, ..Default::default() }));
        }
        index += 1;
        let revision = sm.store.revision();
        apply(&mut sm, index, Op::Compaction(CompactionRequest { revision, ..Default::default() }));
        image.save(&mut sm, 1, conf()).unwrap();
        (image, file, sm, index)
    }

    /// Reopens the image file and checks it reads back `sm` as of `index`.
    fn reads_back(file: SimBackend, sm: &StateMachine, index: u64) {
        let image = Image::open(file).unwrap();
        image.with_db(|db| db.check_invariants()).unwrap();
        let loaded = image.load(LessorConfig::default()).unwrap().unwrap();
        assert_eq!(loaded.meta.index, index);
        assert_eq!(loaded.sm.store.revision(), sm.store.revision());
        assert_eq!(loaded.sm.store.hash_kv(0).unwrap(), sm.store.hash_kv(0).unwrap(), "the same store");
    }

    #[test]
    fn shrinking_after_deletes_and_compaction_gives_the_space_back_and_keeps_the_image() {
        let (image, file, sm, index) = mostly_deleted();
        let before = image.file_bytes();
        // Bounded calls, as a caller that lets saves run between them would make.
        let mut calls = 0;
        while !image.shrink(2, 16).unwrap().done {
            calls += 1;
            assert!(calls < 1000);
            image.with_db(|db| db.check_invariants()).unwrap();
        }
        let after = image.file_bytes();
        assert!(after * 5 < before, "{before} -> {after} bytes");
        let used = image.with_db(|db| db.stats().used_pages) * crate::btree::PAGE_BYTES as u64;
        assert!(after <= used + 16 * crate::btree::PAGE_BYTES as u64, "{after} bytes, {used} in use");
        drop(image);
        reads_back(file, &sm, index);
    }

    #[test]
    fn saves_go_on_between_shrink_steps() {
        let (image, file, mut sm, mut index) = mostly_deleted();
        let before = image.file_bytes();
        let shrinker = {
            let image = image.clone();
            std::thread::spawn(move || {
                let mut calls = 1;
                while !image.shrink(1, 2).unwrap().done {
                    calls += 1;
                }
                calls
            })
        };
        for round in 0..40u64 {
            for i in 0..5 {
                index += 1;
                let key = Bytes::from(format!("new/{round:03}/{i}"));
                let value = vec![i as u8; 2000].into();
                apply(&mut sm, index, Op::Put(PutRequest { key, value, ..Default::default() }));
            }
            image.save(&mut sm, 1, conf()).unwrap();
        }
        let calls = shrinker.join().unwrap();
        eprintln!("{calls} shrink calls; {before} -> {} bytes", image.file_bytes());
        assert!(calls > 1);
        assert!(image.file_bytes() * 2 < before, "{before} -> {} bytes", image.file_bytes());
        drop(image);
        reads_back(file, &sm, index);
    }

    /// A load reads the keys in one ordered pass, long keys (stored by hash) merged into the
    /// order: the store comes back the same, read for read.
    #[test]
    fn an_image_loads_the_same_state() {
        let mut sm = StateMachine::default();
        let keys = 12_345;
        for i in 0..keys as u64 {
            // Every 1000th key is long (over the B-tree's key bound): stored by its hash.
            let key = if i % 1000 == 7 { format!("k{i:06}{}", "x".repeat(1500)) } else { format!("k{i:06}") };
            let put = PutRequest { key: key.into(), value: format!("v{i}").into(), ..Default::default() };
            let data = Request { id: i + 1, op: Some(Op::Put(put)) }.encode_to_vec();
            let entry =
                Entry { index: i + 1, term: 1, entry_type: EntryType::EntryNormal as i32, data: data.into() };
            sm.apply(&entry, 0);
        }
        let mut disk = SimDisk::new("image-test");
        let image = Image::open(disk.open("db").unwrap()).unwrap();
        image.save(&mut sm, 1, ConfState::default()).unwrap();
        let loaded = image.load(*sm.lessor.config()).unwrap().expect("an image");
        assert_eq!(loaded.meta.index, keys as u64);
        let all = RangeRequest { key: vec![0].into(), range_end: vec![0].into(), ..Default::default() };
        let (want, got) = (sm.store.range(&all).unwrap(), loaded.sm.store.range(&all).unwrap());
        assert_eq!(got.count, keys as i64);
        assert_eq!(got.kvs, want.kvs);
        assert_eq!(loaded.sm.store.hash_kv(0).unwrap(), sm.store.hash_kv(0).unwrap());
    }
}
