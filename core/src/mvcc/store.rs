use super::key_index::KeyHistory;
use super::revision::Revision;
use crate::pb::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request as Op,
    response_op::Response as OpResponse,
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Bound;
use thiserror::Error;

/// Failures of a request against the store. The messages are etcd's own, without the gRPC code,
/// which the server adds: clients match on both.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MvccError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
}

/// Bound on keys cleaned up in one step of physical compaction, so that a compaction never
/// holds up the apply loop for long; the rest is done in later steps.
pub const COMPACT_KEYS_PER_STEP: usize = 10_000;

/// An in-memory multi-version key-value store with etcd's revision rules: an empty store is at
/// revision 1, each write that changes something makes the next revision (a txn is one
/// revision, its changes numbered by sub-revision), and every version of every key stays
/// readable until compacted.
///
/// Invariants: every change recorded in `keys` has `main <= current`; `compacted <= current`;
/// reads below `compacted` fail even while physical cleanup (`compact_cursor`) is under way.
#[derive(Debug, Clone)]
pub struct Store {
    keys: BTreeMap<Bytes, KeyHistory>,
    current: i64,
    compacted: i64,
    /// Next key to clean up physically, while a compaction is in progress.
    compact_cursor: Option<Bytes>,
    /// Events of the last write, in (revision, sub-revision) order, for watchers.
    events: Vec<Event>,
    /// Leases that exist (granted, not revoked): a put may attach only to these. Kept by the
    /// state machine in step with its lessor.
    leases: std::collections::BTreeSet<i64>,
    /// Keys whose history changed since the last [`Store::take_dirty`]: what the next image
    /// update must rewrite. At most every key.
    dirty: std::collections::BTreeSet<Bytes>,
    /// Bytes of the versions written since the last [`Store::take_dirty`] (keys, values and a
    /// per-version overhead): what the next image save will add at most, for the quota.
    unsaved_bytes: u64,
}

/// What one version costs in the image beyond its key and value (revisions, version, lease and
/// framing), for [`Store::unsaved_bytes`].
pub const VERSION_OVERHEAD_BYTES: u64 = 48;

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision, ..Default::default() })
}

/// One write in progress: every change it makes is at revision `main`, numbered by `sub`.
/// Reads through it see its own changes, as reads inside an etcd txn do.
struct Writer<'a> {
    store: &'a mut Store,
    main: i64,
    sub: i64,
}

impl Writer<'_> {
    /// The revision reads see: the write's own if it changed anything.
    fn read_rev(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.store.current
        }
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.store.range_at(req, self.read_rev())
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let prev = self.store.keys.get(&req.key[..]).and_then(|h| h.live()).cloned();
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        if req.lease != 0 && !req.ignore_lease && !self.store.leases.contains(&req.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        let main = self.main;
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(main, |p| p.create_revision),
            mod_revision: main,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        self.store
            .keys
            .entry(req.key.clone())
            .or_default()
            .record(Revision::new(main, self.sub), Some(kv.clone()));
        self.sub += 1;
        self.store.events.push(Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: prev.clone() });
        Ok(PutResponse { header: header(main), prev_kv: if req.prev_kv { prev } else { None } })
    }

    fn delete_range(&mut self, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let doomed: Vec<KeyValue> =
            self.store.select(&req.key, &req.range_end).filter_map(|(_, h)| h.live().cloned()).collect();
        for kv in &doomed {
            let history = self.store.keys.get_mut(&kv.key[..]).expect("a selected key has a history");
            history.record(Revision::new(self.main, self.sub), None);
            self.sub += 1;
            self.store.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue { key: kv.key.clone(), mod_revision: self.main, ..Default::default() }),
                prev_kv: Some(kv.clone()),
            });
        }
        DeleteRangeResponse {
            header: header(self.read_rev()),
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        }
    }

    /// Applies `req` along `path`: the branch every txn (nested ones included, in execution
    /// order) takes, decided beforehand against the state before the txn, as etcd does.
    fn txn(
        &mut self,
        req: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = *path.next().expect("the path covers every txn");
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Op::RequestRange(r)) => OpResponse::ResponseRange(self.range(r)?),
                Some(Op::RequestPut(p)) => OpResponse::ResponsePut(self.put(p)?),
                Some(Op::RequestDeleteRange(d)) => OpResponse::ResponseDeleteRange(self.delete_range(d)),
                Some(Op::RequestTxn(t)) => {
                    // etcd 3.5 leaves a nested txn's header empty (only its ops' carry the
                    // revision), checked against etcd 3.5.1.
                    let nested = self.txn(t, path)?;
                    OpResponse::ResponseTxn(TxnResponse { header: Some(ResponseHeader::default()), ..nested })
                }
                None => continue,
            };
            responses.push(ResponseOp { response: Some(response) });
        }
        Ok(TxnResponse { header: header(self.read_rev()), succeeded, responses })
    }

    /// The branch each txn takes, in execution order, from the compares against the current
    /// state (before any op of this txn): etcd's compare path.
    fn plan(&self, req: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = req.compare.iter().all(|c| self.compare(c));
        path.push(succeeded);
        for op in if succeeded { &req.success } else { &req.failure } {
            if let Some(Op::RequestTxn(t)) = &op.request {
                self.plan(t, path);
            }
        }
    }

    /// Undoes everything this write recorded (all of it is at revision `main`, the newest
    /// change of each key it touched), so a txn that fails half-way leaves no trace.
    fn rollback(&mut self) {
        let main = self.main;
        let touched: Vec<Bytes> =
            self.store.events.iter().filter_map(|e| e.kv.as_ref().map(|kv| kv.key.clone())).collect();
        for k in touched {
            let empty = match self.store.keys.get_mut(&k) {
                Some(h) => h.pop_at(main),
                None => false,
            };
            if empty {
                self.store.keys.remove(&k);
            }
        }
        self.store.events.clear();
        self.sub = 0;
    }

    /// etcd's compare: every key in the range must satisfy it; an empty range compares a
    /// zero-valued key, except that a value compare on nothing always fails.
    fn compare(&self, c: &Compare) -> bool {
        let rev = self.read_rev();
        let kvs: Vec<KeyValue> =
            self.store.select(&c.key, &c.range_end).filter_map(|(_, h)| h.at(rev).cloned()).collect();
        if kvs.is_empty() {
            return c.target != CompareTarget::Value as i32 && compare_kv(c, &KeyValue::default());
        }
        kvs.iter().all(|kv| compare_kv(c, kv))
    }

    /// The errors a txn's chosen branch would hit, found before anything is written so that a
    /// txn either applies whole or not at all (as etcd checks requests before applying).
    fn check(&self, req: &TxnRequest, path: &mut std::slice::Iter<'_, bool>) -> Result<(), MvccError> {
        let succeeded = *path.next().expect("the path covers every txn");
        for op in if succeeded { &req.success } else { &req.failure } {
            match &op.request {
                Some(Op::RequestRange(r)) => {
                    // etcd's `checkRange`: any revision but 0 below the first readable one
                    // fails, negative ones too (before any compaction etcd's is -1).
                    if r.revision > self.store.current {
                        return Err(MvccError::FutureRev);
                    }
                    let first = if self.store.compacted == 0 { -1 } else { self.store.compacted };
                    if r.revision != 0 && r.revision < first {
                        return Err(MvccError::Compacted);
                    }
                }
                Some(Op::RequestPut(p)) => {
                    let exists = self.store.keys.get(&p.key[..]).and_then(|h| h.live()).is_some();
                    if (p.ignore_value || p.ignore_lease) && !exists {
                        return Err(MvccError::KeyNotFound);
                    }
                    if p.lease != 0 && !p.ignore_lease && !self.store.leases.contains(&p.lease) {
                        return Err(MvccError::LeaseNotFound);
                    }
                }
                Some(Op::RequestTxn(t)) => self.check(t, path)?,
                Some(Op::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    fn finish(self) {
        if self.sub > 0 {
            self.store.current = self.main;
        }
    }
}

/// etcd 3.5's `compareKV`, for any enum values a client sends: a target out of range compares
/// as equal (its switch leaves the result at 0) and a result out of range holds (its switch
/// falls through to `return true`), checked against etcd 3.5.1.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ordering = match (CompareTarget::try_from(c.target), &c.target_union) {
        (Ok(CompareTarget::Value), Some(TargetUnion::Value(v))) => kv.value[..].cmp(&v[..]),
        (Ok(CompareTarget::Value), _) => kv.value[..].cmp(&[][..]),
        (Ok(CompareTarget::Version), Some(TargetUnion::Version(v))) => kv.version.cmp(v),
        (Ok(CompareTarget::Create), Some(TargetUnion::CreateRevision(v))) => kv.create_revision.cmp(v),
        (Ok(CompareTarget::Mod), Some(TargetUnion::ModRevision(v))) => kv.mod_revision.cmp(v),
        (Ok(CompareTarget::Lease), Some(TargetUnion::Lease(v))) => kv.lease.cmp(v),
        (Ok(CompareTarget::Version), _) => kv.version.cmp(&0),
        (Ok(CompareTarget::Create), _) => kv.create_revision.cmp(&0),
        (Ok(CompareTarget::Mod), _) => kv.mod_revision.cmp(&0),
        (Ok(CompareTarget::Lease), _) => kv.lease.cmp(&0),
        (Err(_), _) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}

impl Store {
    pub fn new() -> Self {
        Store {
            keys: BTreeMap::new(),
            current: 1,
            compacted: 0,
            compact_cursor: None,
            events: Vec::new(),
            leases: Default::default(),
            dirty: Default::default(),
            unsaved_bytes: 0,
        }
    }

    /// The keys whose history changed since the last call, leaving none behind.
    pub fn take_dirty(&mut self) -> std::collections::BTreeSet<Bytes> {
        self.unsaved_bytes = 0;
        std::mem::take(&mut self.dirty)
    }

    /// Bytes written since the last [`Store::take_dirty`]: an upper bound of what the next
    /// image save adds (a key rewritten many times counts each time).
    pub fn unsaved_bytes(&self) -> u64 {
        self.unsaved_bytes
    }

    /// Key `key`'s history as an image stores it, or `None` if it has none left.
    pub fn history_image(&self, key: &[u8]) -> Option<crate::pb::keelpb::KeyHistoryImage> {
        self.keys.get(key).map(KeyHistory::to_image)
    }

    /// Every key's history, in key order (for a full image).
    pub fn history_images(&self) -> impl Iterator<Item = (&Bytes, crate::pb::keelpb::KeyHistoryImage)> + '_ {
        self.keys.iter().map(|(k, h)| (k, h.to_image()))
    }

    /// Every live key attached to a lease, with the lease.
    pub fn live_leased_keys(&self) -> Vec<(Bytes, i64)> {
        self.keys
            .iter()
            .filter_map(|(k, h)| h.live().filter(|kv| kv.lease != 0).map(|kv| (k.clone(), kv.lease)))
            .collect()
    }

    /// Where physical compaction resumes, if one is under way.
    pub fn compact_cursor(&self) -> Option<&Bytes> {
        self.compact_cursor.as_ref()
    }

    /// A store rebuilt from its image: `keys` in ascending key order (so the index is built in
    /// one pass), revisions and compaction progress, and the leases that exist.
    pub fn restore(
        keys: impl Iterator<Item = (Bytes, crate::pb::keelpb::KeyHistoryImage)>,
        current: i64,
        compacted: i64,
        compact_cursor: Option<Bytes>,
        leases: impl Iterator<Item = i64>,
    ) -> Result<Store, String> {
        if current < 1 || compacted < 0 || compacted > current {
            return Err(format!("revisions out of order: current {current}, compacted {compacted}"));
        }
        let mut failure = None;
        let mut last: Option<Bytes> = None;
        // Built in one pass from the ordered stream; the first problem ends it.
        let histories: BTreeMap<Bytes, KeyHistory> = keys
            .map_while(|(key, image)| {
                let checked = if last.as_ref().is_some_and(|l| *l >= key) {
                    Err(format!("keys out of order at {key:?}"))
                } else {
                    KeyHistory::from_image(&key, image).and_then(|h| {
                        if h.last_main() > current {
                            Err(format!(
                                "{key:?} changed at revision {} after the current {current}",
                                h.last_main()
                            ))
                        } else {
                            Ok(h)
                        }
                    })
                };
                match checked {
                    Ok(h) => {
                        last = Some(key.clone());
                        Some((key, h))
                    }
                    Err(e) => {
                        failure = Some(e);
                        None
                    }
                }
            })
            .collect();
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(Store {
            keys: histories,
            current,
            compacted,
            compact_cursor,
            events: Vec::new(),
            leases: leases.collect(),
            dirty: Default::default(),
            unsaved_bytes: 0,
        })
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.current
    }

    /// The revision the store was last compacted at (0 if never).
    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    fn writer(&mut self) -> Writer<'_> {
        self.events.clear();
        let main = self.current + 1;
        Writer { store: self, main, sub: 0 }
    }

    /// Keys selected by etcd's range rules: an empty `end` selects `key` alone; `end == "\0"`
    /// selects every key `>= key`; otherwise `[key, end)`.
    fn select<'a>(
        &'a self,
        key: &[u8],
        end: &[u8],
    ) -> Box<dyn Iterator<Item = (&'a Bytes, &'a KeyHistory)> + 'a> {
        if end.is_empty() {
            return Box::new(self.keys.get_key_value(key).into_iter());
        }
        let lo = Bound::Included(Bytes::copy_from_slice(key));
        if end == [0] {
            return Box::new(self.keys.range((lo, Bound::Unbounded)));
        }
        if key >= end {
            return Box::new(std::iter::empty());
        }
        let hi = Bound::Excluded(Bytes::copy_from_slice(end));
        Box::new(self.keys.range((lo, hi)))
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.range_at(req, self.current)
    }

    /// A range read; `current` is the newest revision the reader may see.
    fn range_at(&self, req: &RangeRequest, current: i64) -> Result<RangeResponse, MvccError> {
        if req.revision > current {
            return Err(MvccError::FutureRev);
        }
        if req.revision > 0 && req.revision < self.compacted {
            return Err(MvccError::Compacted);
        }
        let rev = if req.revision <= 0 { current } else { req.revision };
        let mut kvs: Vec<KeyValue> =
            self.select(&req.key, &req.range_end).filter_map(|(_, h)| h.at(rev).cloned()).collect();
        let count = kvs.len() as i64;
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
        // As etcd 3.5.1's range: without a sort order or a revision filter it reads only the
        // first `limit + 1` keys (in key order) and sorts those, so a sort target without an
        // order sorts only them.
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        if req.sort_order == SortOrder::None as i32 && !filtered && req.limit > 0 {
            kvs.truncate(req.limit.saturating_add(1) as usize);
        }
        // A target other than the key sorts ascending when no order is given; an order out of
        // range sorts nothing. A target out of range would crash etcd 3.5.1 (the server refuses
        // it before it gets here); here it sorts nothing.
        let mut order = req.sort_order;
        if req.sort_target != SortTarget::Key as i32 && order == SortOrder::None as i32 {
            order = SortOrder::Ascend as i32;
        } else if req.sort_target == SortTarget::Key as i32 && order == SortOrder::Ascend as i32 {
            order = SortOrder::None as i32; // The selection is in ascending key order already.
        }
        let by = |a: &KeyValue, b: &KeyValue| match SortTarget::try_from(req.sort_target) {
            Ok(SortTarget::Key) => a.key.cmp(&b.key),
            Ok(SortTarget::Version) => a.version.cmp(&b.version),
            Ok(SortTarget::Create) => a.create_revision.cmp(&b.create_revision),
            Ok(SortTarget::Mod) => a.mod_revision.cmp(&b.mod_revision),
            Ok(SortTarget::Value) => a.value.cmp(&b.value),
            Err(_) => std::cmp::Ordering::Equal,
        };
        // Stable both ways: keys that tie stay in key order, as etcd's insertion sort keeps
        // them for small results (Go's sort is not stable beyond 12 elements).
        if order == SortOrder::Ascend as i32 {
            kvs.sort_by(by);
        } else if order == SortOrder::Descend as i32 {
            kvs.sort_by(|a, b| by(b, a));
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() as i64 > req.limit {
            kvs.truncate(req.limit as usize);
            // etcd counts without reading the keys: a count-only range never says `more`.
            more = !req.count_only;
        }
        if req.count_only {
            kvs.clear();
        } else if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse { header: header(current), kvs, more, count })
    }

    /// Records that lease `id` exists (`true`) or no longer does.
    pub fn set_lease(&mut self, id: i64, exists: bool) {
        if exists {
            self.leases.insert(id);
        } else {
            self.leases.remove(&id);
        }
    }

    /// Deletes `keys` in one revision (a revoked lease's keys). Returns how many existed.
    pub fn delete_keys(&mut self, keys: &[Bytes]) -> i64 {
        let mut w = self.writer();
        let mut deleted = 0;
        for k in keys {
            deleted += w.delete_range(&DeleteRangeRequest { key: k.clone(), ..Default::default() }).deleted;
        }
        w.finish();
        deleted
    }

    /// Applies a put; a lease must exist ([`Store::set_lease`]).
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let mut w = self.writer();
        let resp = w.put(req)?;
        w.finish();
        Ok(resp)
    }

    /// Applies a delete. Deleting nothing does not make a new revision.
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let mut w = self.writer();
        let resp = w.delete_range(req);
        w.finish();
        Ok(resp)
    }

    /// Applies a txn: the compares pick a branch, whose ops apply in order as one revision
    /// (sub-revisions in op order), each seeing the ones before it. Nothing is written if any op
    /// of the chosen branch would fail.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let mut w = self.writer();
        let mut path = Vec::new();
        w.plan(req, &mut path);
        w.check(req, &mut path.iter())?;
        match w.txn(req, &mut path.iter()) {
            Ok(resp) => {
                w.finish();
                Ok(resp)
            }
            // The pre-check uses the state before the txn, as etcd's does; an op that still
            // fails (its key deleted earlier in the same txn) undoes the whole txn.
            Err(e) => {
                w.rollback();
                Err(e)
            }
        }
    }

    /// Compacts at `req.revision`: reads below it fail from now on; the history they would need
    /// is dropped in bounded steps ([`Store::compact_step`]).
    pub fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse, MvccError> {
        if req.revision <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if req.revision > self.current {
            return Err(MvccError::FutureRev);
        }
        self.compacted = req.revision;
        self.compact_cursor = Some(Bytes::new());
        if req.physical {
            while self.compact_step(COMPACT_KEYS_PER_STEP) {}
        }
        Ok(CompactionResponse { header: header(self.current) })
    }

    /// Cleans up to `max_keys` keys' history below the compacted revision. Returns whether
    /// there is more to do.
    pub fn compact_step(&mut self, max_keys: usize) -> bool {
        let Some(from) = self.compact_cursor.take() else { return false };
        let keys: Vec<Bytes> = self.keys.range(from..).take(max_keys + 1).map(|(k, _)| k.clone()).collect();
        let (batch, next) = if keys.len() > max_keys {
            (&keys[..max_keys], Some(keys[max_keys].clone()))
        } else {
            (&keys[..], None)
        };
        for k in batch {
            self.dirty.insert(k.clone());
            let empty = self.keys.get_mut(k).expect("listed key").compact(self.compacted);
            if empty {
                self.keys.remove(k);
            }
        }
        self.compact_cursor = next;
        self.compact_cursor.is_some()
    }

    /// The events of the last write (empty if it changed nothing), leaving none behind.
    pub fn take_events(&mut self) -> Vec<Event> {
        for e in &self.events {
            if let Some(kv) = &e.kv {
                self.dirty.insert(kv.key.clone());
                self.unsaved_bytes += (kv.key.len() + kv.value.len()) as u64 + VERSION_OVERHEAD_BYTES;
            }
        }
        std::mem::take(&mut self.events)
    }

    /// Events in revisions `[from, to]` for keys in etcd's range (`key`, `end`), in revision
    /// order, for a watcher catching up. Whole revisions only: it stops at the first revision
    /// boundary after `max_events`. Returns the events and the next revision to read from.
    /// Fails with `Compacted` if `from` is below the compacted revision.
    pub fn history_events(
        &self,
        key: &[u8],
        end: &[u8],
        from: i64,
        to: i64,
        max_events: usize,
    ) -> Result<(Vec<Event>, i64), MvccError> {
        if from < self.compacted {
            return Err(MvccError::Compacted);
        }
        let mut found: Vec<(Revision, Event)> = Vec::new();
        for (_, h) in self.select(key, end) {
            for (rev, kv, prev) in h.changes_between(from, to) {
                let event = match kv {
                    Some(kv) => {
                        Event { r#type: EventType::Put as i32, kv: Some(kv.clone()), prev_kv: prev.cloned() }
                    }
                    None => Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(KeyValue {
                            key: prev.map(|p| p.key.clone()).unwrap_or_default(),
                            mod_revision: rev.main,
                            ..Default::default()
                        }),
                        prev_kv: prev.cloned(),
                    },
                };
                found.push((rev, event));
            }
        }
        found.sort_by_key(|(rev, _)| *rev);
        let mut out = Vec::new();
        let mut next = to + 1;
        for (i, (rev, event)) in found.iter().enumerate() {
            if out.len() >= max_events && i > 0 && found[i - 1].0.main != rev.main {
                next = rev.main;
                break;
            }
            out.push(event.clone());
        }
        Ok((out, next))
    }

    /// A hash of the store's history up to `rev` (0 = current), from the compacted revision on:
    /// replicas that applied the same log give the same hash (etcd's HashKV, used to detect
    /// divergence). Returns the hash and the revision it covers.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64), MvccError> {
        let rev = if rev <= 0 { self.current } else { rev };
        if rev > self.current {
            return Err(MvccError::FutureRev);
        }
        if rev < self.compacted {
            return Err(MvccError::Compacted);
        }
        let mut h = crc32fast::Hasher::new();
        for (k, history) in &self.keys {
            let state = history.hash_bytes(self.compacted, rev);
            if !state.is_empty() {
                h.update(&(k.len() as u64).to_le_bytes());
                h.update(k);
                h.update(&state);
            }
        }
        Ok((h.finalize(), rev))
    }

    /// Number of changes held, for tests and metrics.
    pub fn history_len(&self) -> usize {
        self.keys.values().map(KeyHistory::len).sum()
    }
}

/// etcd's `checkIntervals`: within one branch of a txn (nested txns included), no key may be put
/// twice, nor put and deleted. Returns false for a txn etcd rejects with `duplicate key given in
/// txn request`.
pub fn txn_keys_disjoint(ops: &[RequestOp]) -> bool {
    intervals(ops).is_some()
}

/// Puts and deletes of a branch: `None` if the branch conflicts with itself.
#[allow(clippy::type_complexity)]
fn intervals(ops: &[RequestOp]) -> Option<(Vec<Bytes>, Vec<(Bytes, Bytes)>)> {
    let mut dels: Vec<(Bytes, Bytes)> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Op::RequestDeleteRange(d)) => Some((d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    // etcd compares a put against deleted intervals as affine intervals: an empty end is a point,
    // any other end (even "\0") is `[key, end)` by byte order.
    let deleted = |dels: &[(Bytes, Bytes)], k: &[u8]| {
        dels.iter().any(|(s, e)| if e.is_empty() { &s[..] == k } else { k >= &s[..] && k < &e[..] })
    };
    let mut puts: Vec<Bytes> = Vec::new();
    for op in ops {
        let Some(Op::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = intervals(&t.success)?;
        let (puts_else, dels_else) = intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return None;
            }
            puts.push(k.clone());
        }
        for k in &puts_else {
            // The two branches exclude each other: a key in both is fine.
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return None;
            }
            if !puts.contains(k) {
                puts.push(k.clone());
            }
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Op::RequestPut(p)) = &op.request else { continue };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return None;
        }
        puts.push(p.key.clone());
    }
    Some((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::copy_from_slice(v.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::copy_from_slice(k.as_bytes()),
                range_end: Bytes::copy_from_slice(end.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn get(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestRange(RangeRequest {
                key: Bytes::copy_from_slice(k.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn cmp_value(k: &str, v: &str) -> Compare {
        Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: Bytes::copy_from_slice(k.as_bytes()),
            target_union: Some(TargetUnion::Value(Bytes::copy_from_slice(v.as_bytes()))),
            range_end: Bytes::new(),
        }
    }

    #[test]
    fn txn_is_one_revision_with_sub_revisions_in_op_order() {
        let mut s = Store::new();
        let r = s
            .txn(&TxnRequest {
                compare: vec![],
                success: vec![put("a", "1"), put("b", "2"), get("a")],
                failure: vec![],
            })
            .unwrap();
        assert!(r.succeeded);
        assert_eq!(s.revision(), 2);
        let Some(OpResponse::ResponseRange(got)) = &r.responses[2].response else { panic!() };
        assert_eq!(got.kvs[0].value, "1", "a txn's read sees its own earlier put");
        assert_eq!(got.kvs[0].mod_revision, 2);
    }

    #[test]
    fn compare_picks_the_branch_and_value_compare_on_missing_key_fails() {
        let mut s = Store::new();
        s.put(&PutRequest { key: "k".into(), value: "v".into(), ..Default::default() }).unwrap();
        let t = TxnRequest {
            compare: vec![cmp_value("k", "v")],
            success: vec![put("x", "s")],
            failure: vec![put("x", "f")],
        };
        assert!(s.txn(&t).unwrap().succeeded);
        let t = TxnRequest { compare: vec![cmp_value("missing", "")], success: vec![], failure: vec![] };
        assert!(!s.txn(&t).unwrap().succeeded);
    }

    #[test]
    fn read_only_or_failed_txn_makes_no_revision() {
        let mut s = Store::new();
        s.txn(&TxnRequest { compare: vec![], success: vec![get("a"), del("zz", "")], failure: vec![] })
            .unwrap();
        assert_eq!(s.revision(), 1);
        let bad = RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: "a".into(),
                ignore_value: true,
                ..Default::default()
            })),
        };
        let err = s
            .txn(&TxnRequest { compare: vec![], success: vec![put("b", "1"), bad], failure: vec![] })
            .unwrap_err();
        assert_eq!(err, MvccError::KeyNotFound);
        assert_eq!(s.revision(), 1);
        assert!(
            s.range(&RangeRequest { key: "b".into(), ..Default::default() }).unwrap().kvs.is_empty(),
            "nothing applied"
        );
    }

    #[test]
    fn nested_compares_use_the_state_before_the_txn() {
        // The outer put makes `a` = 1; the nested compare still sees `a` absent (etcd's compare
        // path is fixed before any op runs), so the nested failure branch runs.
        let mut s = Store::new();
        let nested = RequestOp {
            request: Some(Op::RequestTxn(TxnRequest {
                compare: vec![cmp_value("a", "1")],
                success: vec![RequestOp {
                    request: Some(Op::RequestPut(PutRequest {
                        key: "b".into(),
                        ignore_value: true,
                        ..Default::default()
                    })),
                }],
                failure: vec![put("c", "3")],
            })),
        };
        let r = s
            .txn(&TxnRequest { compare: vec![], success: vec![put("a", "1"), nested], failure: vec![] })
            .unwrap();
        let Some(OpResponse::ResponseTxn(inner)) = &r.responses[1].response else { panic!() };
        assert!(!inner.succeeded);
        assert_eq!(s.range(&RangeRequest { key: "c".into(), ..Default::default() }).unwrap().count, 1);
    }

    #[test]
    fn a_txn_failing_half_way_leaves_no_trace() {
        // Put `k` exists; the txn deletes it, then puts it with ignore_value (checked against the
        // state before the txn, so the check passes, but the op fails when applied).
        let mut s = Store::new();
        s.put(&PutRequest { key: "k".into(), value: "v".into(), ..Default::default() }).unwrap();
        let before = (s.revision(), s.history_len());
        let ignore = RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: "k".into(),
                ignore_value: true,
                ..Default::default()
            })),
        };
        let err = s.txn(&TxnRequest {
            compare: vec![],
            success: vec![put("x", "1"), del("k", ""), ignore],
            failure: vec![],
        });
        assert_eq!(err.unwrap_err(), MvccError::KeyNotFound);
        assert_eq!((s.revision(), s.history_len()), before, "nothing of the txn remains");
        assert!(s.take_events().is_empty());
        assert_eq!(
            s.range(&RangeRequest { key: "k".into(), ..Default::default() }).unwrap().kvs[0].value,
            "v"
        );
    }

    #[test]
    fn duplicate_keys_follow_etcds_interval_rules() {
        assert!(txn_keys_disjoint(&[put("a", "1"), put("b", "1")]));
        assert!(!txn_keys_disjoint(&[put("a", "1"), put("a", "2")]));
        assert!(!txn_keys_disjoint(&[put("a", "1"), del("a", "")]));
        assert!(!txn_keys_disjoint(&[put("b", "1"), del("a", "c")]));
        assert!(txn_keys_disjoint(&[del("a", "c"), del("b", "")]), "deletes may overlap each other");
        let nested = RequestOp {
            request: Some(Op::RequestTxn(TxnRequest {
                compare: vec![],
                success: vec![put("n", "1")],
                failure: vec![put("n", "2")],
            })),
        };
        assert!(
            txn_keys_disjoint(std::slice::from_ref(&nested)),
            "then/else of a nested txn exclude each other"
        );
        assert!(!txn_keys_disjoint(&[nested, put("n", "3")]));
    }

    #[test]
    fn writes_report_events_and_history_replays_them() {
        let mut s = Store::new();
        s.put(&PutRequest { key: "a".into(), value: "1".into(), ..Default::default() }).unwrap();
        let e = s.take_events();
        assert_eq!((e.len(), e[0].r#type, e[0].prev_kv.is_none()), (1, EventType::Put as i32, true));
        s.txn(&TxnRequest {
            compare: vec![],
            success: vec![put("a", "2"), put("b", "1"), del("a", "")],
            failure: vec![],
        })
        .unwrap();
        let live = s.take_events();
        assert_eq!(live.len(), 3, "a txn's events come together, in op order");
        assert_eq!(live[2].r#type, EventType::Delete as i32);
        assert_eq!(live[2].prev_kv.as_ref().unwrap().value, "2");
        let (hist, next) = s.history_events(b"a", b"c", 2, s.revision(), 100).unwrap();
        assert_eq!(next, 4);
        assert_eq!(hist.len(), 4);
        assert_eq!(&hist[1..], &live[..], "history replays exactly the live events");
        let (first, next) = s.history_events(b"a", b"c", 2, s.revision(), 1).unwrap();
        assert_eq!((first.len(), next), (1, 3), "batches end on a revision boundary");
        s.delete_range(&DeleteRangeRequest { key: "nothing".into(), ..Default::default() }).unwrap();
        assert!(s.take_events().is_empty());
        s.compact(&CompactionRequest { revision: 3, physical: true }).unwrap();
        assert_eq!(s.history_events(b"a", b"c", 2, 3, 10).unwrap_err(), MvccError::Compacted);
    }

    #[test]
    fn hash_kv_depends_on_history_not_on_physical_cleanup() {
        let build = |physical: bool| {
            let mut s = Store::new();
            for i in 0..20 {
                s.put(&PutRequest {
                    key: format!("k{}", i % 3).into(),
                    value: format!("{i}").into(),
                    ..Default::default()
                })
                .unwrap();
            }
            s.compact(&CompactionRequest { revision: 10, physical }).unwrap();
            s
        };
        let (a, b) = (build(true), build(false));
        assert_eq!(a.hash_kv(0).unwrap(), b.hash_kv(0).unwrap());
        assert_eq!(a.hash_kv(15).unwrap().1, 15);
        assert_ne!(a.hash_kv(15).unwrap().0, a.hash_kv(16).unwrap().0);
        let mut c = build(true);
        c.put(&PutRequest { key: "k0".into(), value: "other".into(), ..Default::default() }).unwrap();
        assert_ne!(c.hash_kv(0).unwrap().0, a.hash_kv(0).unwrap().0);
        assert_eq!(a.hash_kv(9).unwrap_err(), MvccError::Compacted);
        assert_eq!(a.hash_kv(99).unwrap_err(), MvccError::FutureRev);
    }

    #[test]
    fn compaction_errors_and_cleanup() {
        let mut s = Store::new();
        for i in 0..5 {
            s.put(&PutRequest { key: "k".into(), value: format!("v{i}").into(), ..Default::default() })
                .unwrap();
        }
        s.delete_range(&DeleteRangeRequest { key: "k".into(), ..Default::default() }).unwrap();
        s.put(&PutRequest { key: "j".into(), value: "x".into(), ..Default::default() }).unwrap();
        assert_eq!(s.revision(), 8);
        assert_eq!(
            s.compact(&CompactionRequest { revision: 9, physical: false }).unwrap_err(),
            MvccError::FutureRev
        );
        s.compact(&CompactionRequest { revision: 4, physical: false }).unwrap();
        assert_eq!(
            s.compact(&CompactionRequest { revision: 4, physical: false }).unwrap_err(),
            MvccError::Compacted
        );
        let at =
            |s: &Store, rev| s.range(&RangeRequest { key: "k".into(), revision: rev, ..Default::default() });
        assert_eq!(at(&s, 3).unwrap_err(), MvccError::Compacted);
        assert_eq!(at(&s, 4).unwrap().kvs[0].value, "v2", "the compacted revision itself stays readable");
        while s.compact_step(1) {}
        assert_eq!(at(&s, 4).unwrap().kvs[0].value, "v2");
        assert_eq!(s.history_len(), 5, "k: v2, v3, v4, tombstone; j: x");
        s.compact(&CompactionRequest { revision: 8, physical: true }).unwrap();
        assert_eq!(s.history_len(), 1, "k's deleted generation is gone entirely");
    }

    /// etcd 3.5.1's answers to enum values out of range and to the sort and count options,
    /// found by `server/tests/hostile_client.rs` against the real etcd.
    #[test]
    fn ranges_and_compares_answer_odd_options_as_etcd() {
        let mut s = Store::new();
        s.txn(&TxnRequest {
            success: vec![put("k1", "c"), put("k2", "b"), put("k3", "a")],
            ..Default::default()
        })
        .unwrap();
        let all = RangeRequest { key: "k".into(), range_end: "l".into(), ..Default::default() };
        let keys = |r: &RangeResponse| r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();
        let r = s.range(&RangeRequest { count_only: true, limit: 1, ..all.clone() }).unwrap();
        assert_eq!((r.count, r.more, r.kvs.len()), (3, false, 0), "a count-only range never says more");
        // No order: only the first limit + 1 keys are sorted (k2 "b" before k1 "c").
        let r = s
            .range(&RangeRequest { sort_target: SortTarget::Value as i32, limit: 1, ..all.clone() })
            .unwrap();
        assert_eq!((keys(&r), r.more), (vec![Bytes::from("k2")], true));
        // An order out of range sorts nothing; ties keep key order descending too.
        let r = s
            .range(&RangeRequest { sort_target: SortTarget::Value as i32, sort_order: 7, ..all.clone() })
            .unwrap();
        assert_eq!(keys(&r), ["k1", "k2", "k3"].map(Bytes::from));
        let desc = RangeRequest {
            sort_target: SortTarget::Version as i32,
            sort_order: SortOrder::Descend as i32,
            ..all
        };
        assert_eq!(keys(&s.range(&desc).unwrap()), ["k1", "k2", "k3"].map(Bytes::from));

        let txn = |target: i32, result: i32| {
            let c = Compare { key: "k1".into(), target, result, ..Default::default() };
            let t = TxnRequest { compare: vec![c], ..Default::default() };
            s.clone().txn(&t).unwrap().succeeded
        };
        assert!(txn(9, CompareResult::Equal as i32), "a target out of range compares equal");
        assert!(!txn(9, CompareResult::Greater as i32));
        assert!(txn(CompareTarget::Version as i32, 9), "a result out of range holds");
    }

    #[test]
    fn txn_ranges_at_negative_revisions_and_nested_headers() {
        let mut s = Store::new();
        s.put(&PutRequest { key: "k".into(), value: "v".into(), ..Default::default() }).unwrap();
        let at = |rev: i64| RequestOp {
            request: Some(Op::RequestRange(RangeRequest {
                key: "k".into(),
                revision: rev,
                ..Default::default()
            })),
        };
        let one = |op: RequestOp| TxnRequest { success: vec![op], ..Default::default() };
        // etcd's first readable revision is -1 before any compaction.
        assert!(s.clone().txn(&one(at(-1))).is_ok());
        assert_eq!(s.clone().txn(&one(at(-2))).unwrap_err(), MvccError::Compacted);
        let nested = s.txn(&one(RequestOp { request: Some(Op::RequestTxn(one(at(0)))) })).unwrap();
        let Some(OpResponse::ResponseTxn(inner)) = &nested.responses[0].response else { panic!() };
        assert_eq!(inner.header, Some(ResponseHeader::default()), "etcd leaves a nested txn's header empty");
        let Some(OpResponse::ResponseRange(r)) = &inner.responses[0].response else { panic!() };
        assert_eq!(r.header.as_ref().map(|h| h.revision), Some(2), "its ops' headers keep the revision");
    }
}
