//! Write transactions: copy-on-write updates, page allocation and the commit protocol.

use super::cursor::{self, child_le, Entry, NodeRef, Range, Source};
use super::db::Db;
use super::error::DbError;
use super::page::{
    encode_freelist, encode_overflow, kind_of, BranchEntry, Kind, LeafEntry, Meta, Node, PageId, Value,
    ValueRef, FIRST_DATA_PAGE, FREE_IDS_MAX, INLINE_VALUE_MAX, MAX_KEY_BYTES, MAX_PAGE_COUNT,
    MAX_VALUE_BYTES, NODE_BODY_MAX, OVERFLOW_DATA_BYTES,
};
use super::pager::{Limits, PageFile};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;

/// A node with less than this many bytes is merged into a sibling when the two fit one page.
const UNDERFULL_BYTES: usize = NODE_BODY_MAX / 4;

/// A write transaction: any number of puts and deletes, made durable together by
/// [`WriteTxn::commit`]; dropping it instead aborts it. Reads through it see its own writes.
///
/// Nothing the durable meta reaches is written: a node is copied to a fresh page (from the
/// free list or past the high-water mark) the first time the transaction changes it, and the
/// page it replaces becomes free only once this transaction's commit is durable.
pub struct WriteTxn<'db, F: PageFile> {
    db: &'db mut Db<F>,
    /// The id the commit will carry. Invariant: `db.meta.txn + 1`.
    txn: u64,
    /// The tree as this transaction sees it (0 when empty).
    root: PageId,
    key_count: u64,
    /// The high-water mark. Invariant: `>= db.meta.page_count` until the commit lowers it over
    /// the free pages at the top (after its last allocation).
    page_count: u64,
    /// Nodes this transaction changed, by the fresh page each will be written to.
    /// Invariant: every key is in `fresh`; between operations each node has at least one entry
    /// and fits a page.
    dirty: HashMap<PageId, Node>,
    /// Pages this transaction allocated (dirty nodes, overflow pages, free-list pages). No
    /// durable meta reaches them.
    fresh: HashSet<PageId>,
    /// Pages free for this transaction to use: the durable free list, less what it took, plus
    /// fresh pages it dropped again.
    avail: BTreeSet<PageId>,
    /// Pages the durable tree reaches that this transaction dropped: they join the free list
    /// with this commit, and are reused only by later transactions.
    /// Invariant: disjoint from `avail` and `fresh`.
    released: Vec<PageId>,
    /// An operation failed part-way, leaving the transaction's state unknown: commit refuses.
    broken: bool,
}

/// What inserting into a subtree did.
struct Inserted {
    /// The subtree's root now (the dirty copy).
    id: PageId,
    /// Right siblings split off it, with their separators, in key order.
    splits: Vec<(Vec<u8>, PageId)>,
    /// The key was not there before.
    added: bool,
}

impl<'db, F: PageFile> WriteTxn<'db, F> {
    pub(crate) fn new(db: &'db mut Db<F>) -> Self {
        WriteTxn {
            txn: db.meta.txn + 1,
            root: db.meta.root,
            key_count: db.meta.key_count,
            page_count: db.meta.page_count,
            dirty: HashMap::new(),
            fresh: HashSet::new(),
            avail: db.free.iter().copied().collect(),
            released: Vec::new(),
            broken: false,
            db,
        }
    }

    fn limits(&self) -> Limits {
        Limits { max_txn: self.txn, page_count: self.page_count }
    }

    /// The value of `key` as this transaction sees it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
        cursor::get(self, key)
    }

    /// The entries with keys in `(start, end)` as this transaction sees them.
    pub fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Range<'_> {
        Range::new(self, start, end)
    }

    /// The entry with the largest key in `(start, end)` as this transaction sees it.
    pub fn last_in_range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Option<Entry>, DbError> {
        cursor::last_in_range(self, start, end)
    }

    /// Sets `key` to `value`. Keys are at most [`super::MAX_KEY_BYTES`], values at most
    /// [`super::MAX_VALUE_BYTES`].
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), DbError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(DbError::KeyTooLarge { len: key.len(), max: MAX_KEY_BYTES });
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(DbError::ValueTooLarge { len: value.len(), max: MAX_VALUE_BYTES });
        }
        self.guard(|t| t.put_inner(key, value))
    }

    /// Removes `key`; returns whether it was there.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, DbError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(DbError::KeyTooLarge { len: key.len(), max: MAX_KEY_BYTES });
        }
        // A read-only look first, so that deleting a missing key copies no pages.
        if self.root == 0 || !self.contains(key)? {
            return Ok(false);
        }
        self.guard(|t| t.delete_inner(key)).map(|()| true)
    }

    fn contains(&self, key: &[u8]) -> Result<bool, DbError> {
        let mut id = self.root;
        for _ in 0..cursor::MAX_HEIGHT {
            let node = Source::node(self, id)?;
            if node.is_leaf() {
                return Ok(cursor::search(&node, key).is_ok());
            }
            id = node.child(child_le(&node, key));
        }
        Err(self.db.pager.corrupt(id, "tree deeper than the height limit"))
    }

    fn guard<T>(&mut self, op: impl FnOnce(&mut Self) -> Result<T, DbError>) -> Result<T, DbError> {
        if self.broken {
            return Err(DbError::Poisoned { file: self.db.pager.name.clone() });
        }
        let r = op(self);
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    fn put_inner(&mut self, key: &[u8], value: &[u8]) -> Result<(), DbError> {
        let value = if value.len() > INLINE_VALUE_MAX {
            self.write_overflow(value)?
        } else {
            Value::Inline(value.to_vec())
        };
        if self.root == 0 {
            let id = self.alloc();
            self.dirty.insert(id, Node::Leaf(vec![LeafEntry { key: key.to_vec(), value }]));
            self.root = id;
            self.key_count += 1;
            return Ok(());
        }
        let ins = self.insert(self.root, key, value)?;
        self.root = ins.id;
        let mut splits = ins.splits;
        // Grow the tree at the top for as long as the root splits.
        while !splits.is_empty() {
            let mut entries = vec![BranchEntry { key: Vec::new(), child: self.root }];
            entries.extend(splits.into_iter().map(|(key, child)| BranchEntry { key, child }));
            let mut node = Node::Branch(entries);
            splits = self.split(&mut node);
            self.root = self.alloc();
            self.dirty.insert(self.root, node);
        }
        if ins.added {
            self.key_count += 1;
        }
        Ok(())
    }

    fn delete_inner(&mut self, key: &[u8]) -> Result<(), DbError> {
        self.root = self.remove(self.root, key)?;
        self.key_count -= 1;
        // Shrink the tree at the top: drop an empty root, and a root branch with one child.
        loop {
            let node = self.dirty.get(&self.root).expect("the root was just changed");
            match node {
                _ if node.len() == 0 => {
                    self.free(self.root);
                    self.root = 0;
                    assert_eq!(self.key_count, 0);
                    return Ok(());
                }
                Node::Branch(e) if e.len() == 1 => {
                    let child = e[0].child;
                    self.free(self.root);
                    self.root = self.make_dirty(child)?;
                }
                _ => return Ok(()),
            }
        }
    }

    /// A page to write: the lowest free one, or a new one past the high-water mark.
    fn alloc(&mut self) -> PageId {
        let id = match self.avail.pop_first() {
            Some(id) => id,
            None => {
                let id = self.page_count;
                self.page_count += 1;
                assert!(self.page_count <= MAX_PAGE_COUNT, "file size limit");
                id
            }
        };
        assert!(self.fresh.insert(id), "page {id} allocated twice");
        id
    }

    /// Drops page `id` (and its dirty node, if any).
    fn free(&mut self, id: PageId) {
        if self.fresh.remove(&id) {
            // Never reachable from a durable meta: free again at once.
            self.dirty.remove(&id);
            assert!(self.avail.insert(id), "page {id} freed twice");
        } else {
            assert!(!self.dirty.contains_key(&id));
            self.released.push(id);
        }
    }

    /// The id of a dirty copy of node `id`, copying it if this transaction has not yet.
    fn make_dirty(&mut self, id: PageId) -> Result<PageId, DbError> {
        if self.dirty.contains_key(&id) {
            return Ok(id);
        }
        assert!(!self.fresh.contains(&id), "fresh page {id} is not a node");
        let node = self.db.pager.node(id, self.limits())?.to_node();
        self.free(id);
        let copy = self.alloc();
        self.dirty.insert(copy, node);
        Ok(copy)
    }

    fn write_overflow(&mut self, value: &[u8]) -> Result<Value, DbError> {
        let ids: Vec<PageId> = (0..value.len().div_ceil(OVERFLOW_DATA_BYTES)).map(|_| self.alloc()).collect();
        // Overflow pages are fresh, so they can be written now rather than held until commit.
        for (i, chunk) in value.chunks(OVERFLOW_DATA_BYTES).enumerate() {
            let next = ids.get(i + 1).copied().unwrap_or(0);
            self.db.pager.write(ids[i], &encode_overflow(ids[i], self.txn, next, chunk))?;
        }
        Ok(Value::Overflow { first: ids[0], len: value.len() as u32 })
    }

    fn free_value(&mut self, value: Value) -> Result<(), DbError> {
        if let Value::Overflow { first, len } = value {
            let (pages, _) = self.db.pager.overflow(first, len, self.limits(), false)?;
            for p in pages {
                self.free(p);
            }
        }
        Ok(())
    }

    fn insert(&mut self, id: PageId, key: &[u8], value: Value) -> Result<Inserted, DbError> {
        let id = self.make_dirty(id)?;
        let mut node = self.dirty.remove(&id).expect("dirty");
        let result = self.insert_into(&mut node, key, value);
        let splits = self.split(&mut node);
        self.dirty.insert(id, node);
        let added = result?;
        Ok(Inserted { id, splits, added })
    }

    fn insert_into(&mut self, node: &mut Node, key: &[u8], value: Value) -> Result<bool, DbError> {
        match node {
            Node::Leaf(entries) => match entries.binary_search_by(|e| e.key.as_slice().cmp(key)) {
                Ok(i) => {
                    let old = std::mem::replace(&mut entries[i].value, value);
                    self.free_value(old)?;
                    Ok(false)
                }
                Err(i) => {
                    entries.insert(i, LeafEntry { key: key.to_vec(), value });
                    Ok(true)
                }
            },
            Node::Branch(entries) => {
                let i = child_le(&BranchKeys(entries), key);
                let ins = self.insert(entries[i].child, key, value)?;
                entries[i].child = ins.id;
                let at = i + 1;
                entries.splice(at..at, ins.splits.into_iter().map(|(key, child)| BranchEntry { key, child }));
                Ok(ins.added)
            }
        }
    }

    /// Splits a node that outgrew its page into pieces that fit, balanced by bytes. The first
    /// piece stays in `node`; the others get fresh pages and are returned with their
    /// separators.
    fn split(&mut self, node: &mut Node) -> Vec<(Vec<u8>, PageId)> {
        let total = node.size();
        if total <= NODE_BODY_MAX {
            return Vec::new();
        }
        let sizes: Vec<usize> = match node {
            Node::Leaf(e) => e.iter().map(LeafEntry::size).collect(),
            Node::Branch(e) => e.iter().map(BranchEntry::size).collect(),
        };
        let target = total.div_ceil(total.div_ceil(NODE_BODY_MAX).max(2));
        let mut cuts = Vec::new();
        let mut acc = 0;
        for (i, s) in sizes.iter().enumerate() {
            assert!(*s <= NODE_BODY_MAX, "an entry fits a page on its own");
            if acc > 0 && (acc + s > NODE_BODY_MAX || acc >= target) {
                cuts.push(i);
                acc = 0;
            }
            acc += s;
        }
        assert!(!cuts.is_empty(), "an oversized node splits");
        let mut out = Vec::new();
        for &cut in cuts.iter().rev() {
            let (sep, piece) = match node {
                Node::Leaf(e) => {
                    let rest = e.split_off(cut);
                    (rest[0].key.clone(), Node::Leaf(rest))
                }
                Node::Branch(e) => {
                    let mut rest = e.split_off(cut);
                    let sep = std::mem::take(&mut rest[0].key);
                    (sep, Node::Branch(rest))
                }
            };
            assert!(piece.size() <= NODE_BODY_MAX && piece.len() > 0);
            let id = self.alloc();
            self.dirty.insert(id, piece);
            out.push((sep, id));
        }
        out.reverse();
        assert!(node.size() <= NODE_BODY_MAX && node.len() > 0);
        out
    }

    /// Removes `key` (which is present) from the subtree at `id`; returns the subtree's dirty
    /// root, which may be left empty or under-full for the parent to fix.
    fn remove(&mut self, id: PageId, key: &[u8]) -> Result<PageId, DbError> {
        let id = self.make_dirty(id)?;
        let mut node = self.dirty.remove(&id).expect("dirty");
        let result = self.remove_from(&mut node, key);
        self.dirty.insert(id, node);
        result.map(|()| id)
    }

    fn remove_from(&mut self, node: &mut Node, key: &[u8]) -> Result<(), DbError> {
        match node {
            Node::Leaf(entries) => {
                let i = entries.binary_search_by(|e| e.key.as_slice().cmp(key)).expect("checked present");
                let e = entries.remove(i);
                self.free_value(e.value)
            }
            Node::Branch(entries) => {
                let i = child_le(&BranchKeys(entries), key);
                entries[i].child = self.remove(entries[i].child, key)?;
                self.fix_child(entries, i)
            }
        }
    }

    /// After a removal below child `i`: drops it if empty, merges it into a sibling if it is
    /// under-full and the two fit one page.
    fn fix_child(&mut self, entries: &mut Vec<BranchEntry>, i: usize) -> Result<(), DbError> {
        let child = &self.dirty[&entries[i].child];
        let (child_len, child_size, child_leaf) = (child.len(), child.size(), child.is_leaf());
        if child_len == 0 {
            self.free(entries[i].child);
            entries.remove(i);
            if i == 0 && !entries.is_empty() {
                // The new first child inherits this branch's lower bound.
                entries[0].key.clear();
            }
            return Ok(());
        }
        if child_size >= UNDERFULL_BYTES || entries.len() < 2 {
            return Ok(());
        }
        let (l, r) = if i > 0 { (i - 1, i) } else { (0, 1) };
        let sibling = if l == i { r } else { l };
        let sibling_size = match Source::node(self, entries[sibling].child)? {
            NodeRef::Owned(n) => n.size(),
            NodeRef::View(v) => v.to_node().size(),
        };
        let separator = if child_leaf { 0 } else { entries[r].key.len() };
        if child_size + sibling_size + separator > NODE_BODY_MAX {
            return Ok(());
        }
        entries[l].child = self.make_dirty(entries[l].child)?;
        entries[r].child = self.make_dirty(entries[r].child)?;
        let right = self.dirty.remove(&entries[r].child).expect("dirty");
        let left = self.dirty.get_mut(&entries[l].child).expect("dirty");
        match (left, right) {
            (Node::Leaf(a), Node::Leaf(b)) => a.extend(b),
            (Node::Branch(a), Node::Branch(mut b)) => {
                b[0].key = entries[r].key.clone();
                a.extend(b);
            }
            _ => panic!("siblings at different depths"),
        }
        assert!(self.dirty[&entries[l].child].size() <= NODE_BODY_MAX);
        self.free(entries[r].child);
        entries.remove(r);
        Ok(())
    }

    /// Moves the pages in `targets` (pages the durable tree reaches: nodes or overflow pages)
    /// to the lowest free pages, by copying them as any change would: a moved node's parents up
    /// to the root are copied too, and an overflow value with a page in `targets` is rewritten
    /// whole. Returns how many of `targets` were found. Must be the transaction's first change.
    pub(crate) fn relocate(&mut self, targets: &HashSet<PageId>) -> Result<u64, DbError> {
        assert!(self.dirty.is_empty() && self.fresh.is_empty(), "relocation starts a transaction");
        if self.root == 0 || targets.is_empty() {
            return Ok(0);
        }
        // Which targets are overflow pages decides whether values' chains must be read at
        // all. The kind byte is only a hint here: every page the walk uses is verified.
        let mut overflow_left = 0;
        for &id in targets {
            let raw = self.db.pager.read_raw(id)?;
            if !matches!(kind_of(&raw), Some(Kind::Branch | Kind::Leaf)) {
                overflow_left += 1;
            }
        }
        let mut left = Left { nodes: targets.len() - overflow_left, overflow: overflow_left };
        let found = self.guard(|t| t.relocate_subtree(t.root, targets, &mut left, 1))?;
        self.root = found.0;
        Ok(found.1)
    }

    /// Relocates the targets in the subtree at `id` (a durable node); returns the subtree's
    /// root now and how many targets it held.
    fn relocate_subtree(
        &mut self,
        id: PageId,
        targets: &HashSet<PageId>,
        left: &mut Left,
        depth: usize,
    ) -> Result<(PageId, u64), DbError> {
        if left.done() {
            return Ok((id, 0));
        }
        if depth > cursor::MAX_HEIGHT {
            return Err(self.db.pager.corrupt(id, "tree deeper than the height limit"));
        }
        // Only the child ids, or the overflow values, are needed from the page: the node is
        // decoded whole only if it is copied.
        let (is_leaf, refs) = {
            let view = self.db.pager.node(id, self.limits())?;
            let refs: Vec<(usize, PageId, u32)> = if !view.is_leaf() {
                (0..view.len()).map(|i| (i, view.child(i), 0)).collect()
            } else if left.overflow > 0 {
                (0..view.len())
                    .filter_map(|i| match view.value(i) {
                        ValueRef::Overflow { first, len } => Some((i, first, len)),
                        ValueRef::Inline(_) => None,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (view.is_leaf(), refs)
        };
        let mut found = 0;
        let itself = targets.contains(&id);
        if itself {
            found += 1;
            left.nodes = left.nodes.saturating_sub(1);
        }
        let mut children = Vec::new();
        let mut values = Vec::new();
        for (i, page, len) in refs {
            if !is_leaf {
                let (child, n) = self.relocate_subtree(page, targets, left, depth + 1)?;
                found += n;
                if child != page {
                    children.push((i, child));
                }
                continue;
            }
            if left.overflow == 0 {
                break;
            }
            let (pages, _) = self.db.pager.overflow(page, len, self.limits(), false)?;
            let hits = pages.iter().filter(|p| targets.contains(p)).count();
            if hits == 0 {
                continue;
            }
            found += hits as u64;
            left.overflow = left.overflow.saturating_sub(hits);
            let (_, data) = self.db.pager.overflow(page, len, self.limits(), true)?;
            values.push((i, self.write_overflow(&data)?));
            for p in pages {
                self.free(p);
            }
        }
        if !itself && children.is_empty() && values.is_empty() {
            return Ok((id, found));
        }
        let copy = self.make_dirty(id)?;
        match self.dirty.get_mut(&copy).expect("dirty") {
            Node::Branch(entries) => {
                for (i, child) in children {
                    entries[i].child = child;
                }
            }
            Node::Leaf(entries) => {
                for (i, value) in values {
                    entries[i].value = value;
                }
            }
        }
        Ok((copy, found))
    }

    /// The tree's height, by the leftmost path.
    fn height(&self) -> Result<u32, DbError> {
        let mut id = self.root;
        let mut height = 0;
        while id != 0 {
            height += 1;
            let node = Source::node(self, id)?;
            id = if node.is_leaf() { 0 } else { node.child(0) };
        }
        Ok(height)
    }

    /// Makes every change of this transaction durable, all or nothing. On an error the
    /// database refuses further writes until reopened (the file holds the previous commit, or
    /// possibly this one).
    pub fn commit(mut self) -> Result<(), DbError> {
        if self.broken {
            return Err(DbError::Poisoned { file: self.db.pager.name.clone() });
        }
        let started = std::time::Instant::now();
        let r = self.commit_inner();
        crate::metrics::BACKEND_COMMIT.observe(started.elapsed());
        if r.is_err() {
            self.db.poisoned = true;
        }
        r
    }

    fn commit_inner(&mut self) -> Result<(), DbError> {
        let height = self.height()?;
        // 1. Every changed node to its fresh page.
        let mut ids: Vec<PageId> = self.dirty.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let page = self.dirty[&id].encode(id, self.txn);
            self.db.pager.write(id, &page)?;
        }
        // 2. The free list: what was free and is still unused, plus what this commit dropped
        // (the old free-list chain included), on fresh pages taken from that same list.
        self.released.extend(self.db.free_pages.iter().copied());
        let chain_len = (self.avail.len() + self.released.len()).div_ceil(FREE_IDS_MAX);
        let chain: Vec<PageId> = (0..chain_len).map(|_| self.alloc()).collect();
        // 3. Lower the high-water mark over the free pages at the top: the new tree reaches
        // none of them. Only now, after the last allocation: a trimmed page that the durable
        // tree reaches (one in `released`) must not be handed out again by this transaction.
        self.released.sort_unstable();
        loop {
            let top = self.page_count - 1;
            if self.avail.last() == Some(&top) {
                self.avail.pop_last();
            } else if self.released.last() == Some(&top) {
                self.released.pop();
            } else {
                break;
            }
            self.page_count -= 1;
        }
        assert!(self.page_count >= FIRST_DATA_PAGE);
        let mut free: Vec<PageId> = self.avail.iter().chain(&self.released).copied().collect();
        free.sort_unstable();
        assert!(free.windows(2).all(|w| w[0] < w[1]), "a page is free twice");
        assert!(free.len() <= chain.len() * FREE_IDS_MAX);
        for (i, &id) in chain.iter().enumerate() {
            let ids = &free[(i * FREE_IDS_MAX).min(free.len())..((i + 1) * FREE_IDS_MAX).min(free.len())];
            let next = chain.get(i + 1).copied().unwrap_or(0);
            self.db.pager.write(id, &encode_freelist(id, self.txn, next, ids))?;
        }
        // 4. Make those pages durable before any meta page points at them.
        self.db.pager.sync()?;
        // 5. The meta page, in the slot the previous commit did not use, then durable.
        let meta = Meta {
            txn: self.txn,
            root: self.root,
            free_head: chain.first().copied().unwrap_or(0),
            page_count: self.page_count,
            free_count: free.len() as u64,
            key_count: self.key_count,
            height,
        };
        assert_ne!(meta.slot(), self.db.meta.slot());
        self.db.pager.write(meta.slot(), &meta.encode())?;
        self.db.pager.sync()?;
        self.db.other_page_count = self.db.meta.page_count;
        self.db.meta = meta;
        self.db.free = free;
        self.db.free_pages = chain;
        self.db.pager.remap()
    }
}

/// Targets a relocation walk has yet to find, by kind: the walk stops once none are left.
struct Left {
    nodes: usize,
    overflow: usize,
}

impl Left {
    fn done(&self) -> bool {
        self.nodes == 0 && self.overflow == 0
    }
}

/// A branch's entries as [`cursor::Keys`].
struct BranchKeys<'a>(&'a [BranchEntry]);

impl cursor::Keys for BranchKeys<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn key(&self, i: usize) -> &[u8] {
        &self.0[i].key
    }
}

impl<F: PageFile> Source for WriteTxn<'_, F> {
    fn root(&self) -> PageId {
        self.root
    }

    fn node(&self, id: PageId) -> Result<NodeRef<'_>, DbError> {
        match self.dirty.get(&id) {
            Some(n) => Ok(NodeRef::Owned(n)),
            None => self.db.pager.node(id, self.limits()).map(NodeRef::View),
        }
    }

    fn overflow(&self, first: PageId, len: u32) -> Result<Vec<u8>, DbError> {
        Ok(self.db.pager.overflow(first, len, self.limits(), true)?.1)
    }

    fn corrupt(&self, page: PageId, reason: &str) -> DbError {
        self.db.pager.corrupt(page, reason)
    }
}
