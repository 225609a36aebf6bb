use super::revision::Revision;
use crate::pb::keelpb::{KeyHistoryImage, KeyVersion};
use crate::pb::mvccpb::KeyValue;
use bytes::Bytes;

/// The history of one key: every change at its revision, oldest first. A `None` value is a
/// delete (tombstone), which ends the key's current generation.
///
/// Invariant: revisions strictly increase.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyHistory {
    changes: Vec<(Revision, Option<KeyValue>)>,
}

impl KeyHistory {
    /// The key's value as of store revision `rev`, if it existed then.
    pub(crate) fn at(&self, rev: i64) -> Option<&KeyValue> {
        let n = self.changes.partition_point(|(r, _)| r.main <= rev);
        if n == 0 {
            return None;
        }
        self.changes[n - 1].1.as_ref()
    }

    /// The key's latest value, if it exists now (including changes of a write in progress).
    pub(crate) fn live(&self) -> Option<&KeyValue> {
        self.changes.last().and_then(|(_, kv)| kv.as_ref())
    }

    /// The main revision of the latest change (0 for an empty history).
    pub(crate) fn last_main(&self) -> i64 {
        self.changes.last().map_or(0, |(r, _)| r.main)
    }

    pub(crate) fn record(&mut self, rev: Revision, kv: Option<KeyValue>) {
        if let Some((last, _)) = self.changes.last() {
            assert!(rev > *last, "key history must grow: {rev:?} after {last:?}");
        }
        if self.changes.capacity() == 0 {
            // Most keys keep one version: a first push would reserve room for four.
            self.changes.reserve_exact(1);
        }
        self.changes.push((rev, kv));
    }

    /// Drops every change that no read at a revision `>= rev` can see: all but the latest change
    /// at or before `rev`, and that one too if it is a delete. Returns whether the key has no
    /// history left.
    pub(crate) fn compact(&mut self, rev: i64) -> bool {
        let n = self.changes.partition_point(|(r, _)| r.main <= rev);
        if n == 0 {
            return self.changes.is_empty();
        }
        let keep_from = if self.changes[n - 1].1.is_some() { n - 1 } else { n };
        self.changes.drain(..keep_from);
        self.changes.is_empty()
    }

    /// Changes with `from <= main <= to`, each with the value before it (for `prev_kv`).
    pub(crate) fn changes_between(
        &self,
        from: i64,
        to: i64,
    ) -> impl Iterator<Item = (Revision, Option<&KeyValue>, Option<&KeyValue>)> + '_ {
        let start = self.changes.partition_point(|(r, _)| r.main < from);
        let end = self.changes.partition_point(|(r, _)| r.main <= to);
        (start..end).map(move |i| {
            let prev = if i == 0 { None } else { self.changes[i - 1].1.as_ref() };
            (self.changes[i].0, self.changes[i].1.as_ref(), prev)
        })
    }

    /// The key's state for a hash, as bytes: its value as of `compacted` (what compaction
    /// keeps) and every change in `(compacted, rev]` — so a hash does not depend on how far
    /// physical compaction has got. Empty if the key had nothing then.
    pub(crate) fn hash_bytes(&self, compacted: i64, rev: i64) -> Vec<u8> {
        let mut out = Vec::new();
        let base = self.changes.partition_point(|(r, _)| r.main <= compacted);
        let from = if base > 0 && self.changes[base - 1].1.is_some() { base - 1 } else { base };
        for (r, kv) in self.changes[from..].iter().take_while(|(r, _)| r.main <= rev) {
            out.extend_from_slice(&r.main.to_le_bytes());
            out.extend_from_slice(&r.sub.to_le_bytes());
            match kv {
                Some(kv) => {
                    out.push(1);
                    for n in [kv.create_revision, kv.version, kv.lease, kv.value.len() as i64] {
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                    out.extend_from_slice(&kv.value);
                }
                None => out.push(0),
            }
        }
        out
    }

    /// Removes the changes recorded at revision `main` (an undone write; they are the newest).
    /// Returns whether the key has no history left.
    pub(crate) fn pop_at(&mut self, main: i64) -> bool {
        while self.changes.last().is_some_and(|(r, _)| r.main == main) {
            self.changes.pop();
        }
        self.changes.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.changes.len()
    }
}

impl KeyHistory {
    /// The history as its image stores it: keys are left out of the versions (the record is
    /// keyed by it).
    pub(crate) fn to_image(&self) -> KeyHistoryImage {
        KeyHistoryImage {
            versions: self
                .changes
                .iter()
                .map(|(rev, kv)| KeyVersion {
                    main: rev.main,
                    sub: rev.sub,
                    kv: kv.as_ref().map(|kv| KeyValue { key: Bytes::new(), ..kv.clone() }),
                })
                .collect(),
        }
    }

    /// The history of `key` from its image. Errors name what is wrong (an image is data read
    /// from disk or a peer, so it is checked, not trusted).
    pub(crate) fn from_image(key: &Bytes, image: KeyHistoryImage) -> Result<KeyHistory, String> {
        // Sized exactly: most keys have one version, and a Vec's first push reserves four.
        let mut h = KeyHistory { changes: Vec::with_capacity(image.versions.len()) };
        for v in image.versions {
            let rev = Revision::new(v.main, v.sub);
            if h.changes.last().is_some_and(|(last, _)| *last >= rev) {
                return Err(format!("history of {key:?} is not in revision order at {rev:?}"));
            }
            h.changes.push((rev, v.kv.map(|kv| KeyValue { key: key.clone(), ..kv })));
        }
        if h.changes.is_empty() {
            return Err(format!("empty history for {key:?}"));
        }
        Ok(h)
    }
}
