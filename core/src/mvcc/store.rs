use super::key_index::KeyHistory;
use super::revision::Revision;
use crate::pb::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader,
};
use crate::pb::mvccpb::KeyValue;
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

/// An in-memory multi-version key-value store with etcd's revision rules: an empty store is at
/// revision 1, each write that changes something makes the next revision, and every version of
/// every key stays readable until compaction.
///
/// Invariant: every change recorded in `keys` has `main <= current`.
#[derive(Debug, Clone)]
pub struct Store {
    keys: BTreeMap<Bytes, KeyHistory>,
    current: i64,
    compacted: i64,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    pub fn new() -> Self {
        Store { keys: BTreeMap::new(), current: 1, compacted: 0 }
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.current
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader { revision: self.current, ..Default::default() })
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
        if req.revision > self.current {
            return Err(MvccError::FutureRev);
        }
        if req.revision > 0 && req.revision < self.compacted {
            return Err(MvccError::Compacted);
        }
        let rev = if req.revision <= 0 { self.current } else { req.revision };
        let mut kvs: Vec<KeyValue> =
            self.select(&req.key, &req.range_end).filter_map(|(_, h)| h.at(rev).cloned()).collect();
        let count = kvs.len() as i64;
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
        let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
        let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
        // The selection is already in ascending key order; etcd sorts by any other target
        // ascending when no order is given.
        if target != SortTarget::Key && order == SortOrder::None {
            order = SortOrder::Ascend;
        }
        if order != SortOrder::None {
            kvs.sort_by(|a, b| match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            });
            if order == SortOrder::Descend {
                kvs.reverse();
            }
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() as i64 > req.limit {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.count_only {
            kvs.clear();
        } else if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse { header: self.header(), kvs, more, count })
    }

    /// Applies a put. Leases are not granted by this store yet, so any lease is unknown.
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let prev = self.keys.get(&req.key[..]).and_then(|h| h.live()).cloned();
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        if req.lease != 0 && !req.ignore_lease {
            return Err(MvccError::LeaseNotFound);
        }
        let main = self.current + 1;
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
        self.keys.entry(req.key.clone()).or_default().record(Revision::new(main, 0), Some(kv));
        self.current = main;
        Ok(PutResponse { header: self.header(), prev_kv: if req.prev_kv { prev } else { None } })
    }

    /// Applies a delete. Deleting nothing does not make a new revision.
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let doomed: Vec<KeyValue> =
            self.select(&req.key, &req.range_end).filter_map(|(_, h)| h.live().cloned()).collect();
        if doomed.is_empty() {
            return Ok(DeleteRangeResponse { header: self.header(), deleted: 0, prev_kvs: Vec::new() });
        }
        let main = self.current + 1;
        for (sub, kv) in doomed.iter().enumerate() {
            let history = self.keys.get_mut(&kv.key[..]).expect("a selected key has a history");
            history.record(Revision::new(main, sub as i64), None);
        }
        self.current = main;
        let deleted = doomed.len() as i64;
        Ok(DeleteRangeResponse {
            header: self.header(),
            deleted,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        })
    }
}
