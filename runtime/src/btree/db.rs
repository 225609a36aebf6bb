//! The database handle: opening (and choosing a meta page), reads of the committed tree,
//! statistics and the invariant walk.

use super::cursor::{self, child_le, search, Entry, NodeRef, Range, Source, MAX_HEIGHT};
use super::error::DbError;
use super::page::{Meta, MetaError, PageId, ValueRef, FIRST_DATA_PAGE, FORMAT_VERSION, PAGE_BYTES};
use super::pager::{Limits, PageFile, Pager};
use super::txn::WriteTxn;
use std::borrow::Cow;
use std::ops::Bound;

/// Sizes and counts, from the newest committed meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// The id of the newest committed write transaction (0 for a new file).
    pub txn_id: u64,
    /// Pages in use or free: the high-water mark, meta pages included.
    pub page_count: u64,
    /// Pages on the free list.
    pub free_pages: u64,
    /// Pages in use: `page_count - free_pages` (meta pages and the free list's own pages
    /// included). What the file shrinks to, give or take a few pages, after
    /// [`Db::shrink_step`] reports `done`.
    pub used_pages: u64,
    /// The file's length in whole pages.
    pub file_pages: u64,
    /// The file's length, which runs ahead of `page_count * PAGE_BYTES` as it grows in chunks.
    pub file_bytes: u64,
    /// Levels of the tree: 0 when empty, 1 for a lone leaf.
    pub height: u32,
    /// Keys in the tree.
    pub key_count: u64,
}

/// A copy-on-write B-tree in one file: one ordered keyspace of byte-string keys to byte-string
/// values. Reads take `&self`; writes go through a [`WriteTxn`] that borrows `&mut self`, and
/// are durable when [`WriteTxn::commit`] returns.
pub struct Db<F: PageFile> {
    pub(crate) pager: Pager<F>,
    /// The newest durable meta. Invariant: no page it reaches (tree, overflow, free-list pages)
    /// is written while it is current.
    pub(crate) meta: Meta,
    /// The ids `meta`'s free list holds, sorted. Invariant: disjoint from the pages `meta`
    /// reaches; `len() == meta.free_count`.
    pub(crate) free: Vec<PageId>,
    /// The pages of `meta`'s free-list chain.
    pub(crate) free_pages: Vec<PageId>,
    /// The high-water mark of the meta in the other slot, if that meta is valid (0 if not).
    /// Recovery falls back to it if the newest meta is damaged, so the file is never truncated
    /// below it (see [`Db::shrink_step`]).
    pub(crate) other_page_count: u64,
    /// Set when a commit failed part-way: what is on disk is known again only after reopening.
    pub(crate) poisoned: bool,
}

impl<F: PageFile> Db<F> {
    /// Opens the B-tree in `file`, initialising it if the file is empty (or all zeros). Takes
    /// the file's exclusive lock, picks the intact meta page with the highest txn id, and loads
    /// the free list.
    pub fn open(file: F) -> Result<Db<F>, DbError> {
        let name = file.describe();
        if !file.try_lock_exclusive().map_err(|e| DbError::io(&name, e))? {
            return Err(DbError::Locked { file: name });
        }
        let mut pager = Pager::new(file);
        if pager.is_blank()? {
            let meta = Meta::empty();
            pager.write(meta.slot(), &meta.encode())?;
            pager.sync()?;
        }
        let mut found: Vec<Meta> = Vec::new();
        let mut reasons = Vec::new();
        for slot in 0..2 {
            if pager.file.len() < (slot + 1) * PAGE_BYTES as u64 {
                reasons.push(format!("slot {slot}: past the end of the file"));
                continue;
            }
            let bytes = pager.read_raw(slot)?;
            match Meta::decode(&bytes, slot) {
                Ok(meta) => found.push(meta),
                Err(MetaError::Version(found)) => {
                    return Err(DbError::FormatVersion { found, expected: FORMAT_VERSION, file: name });
                }
                Err(MetaError::Invalid(r)) => reasons.push(format!("slot {slot}: {r}")),
            }
        }
        found.sort_by_key(|m| m.txn);
        let other_page_count = if found.len() == 2 { found[0].page_count } else { 0 };
        let Some(meta) = found.pop() else {
            return Err(pager.corrupt(0, format!("no valid meta page ({})", reasons.join("; "))));
        };
        if meta.page_count * PAGE_BYTES as u64 > pager.file.len() {
            return Err(pager.corrupt(
                meta.slot(),
                format!("meta of txn {} counts {} pages, the file is shorter", meta.txn, meta.page_count),
            ));
        }
        pager.remap()?;
        let lim = Limits { max_txn: meta.txn, page_count: meta.page_count };
        let (free_pages, mut free) = pager.freelist(meta.free_head, lim)?;
        free.sort_unstable();
        if free.len() as u64 != meta.free_count || free.windows(2).any(|w| w[0] == w[1]) {
            return Err(pager.corrupt(
                meta.free_head,
                format!("free list holds {} ids (duplicates?), meta says {}", free.len(), meta.free_count),
            ));
        }
        Ok(Db { pager, meta, free, free_pages, other_page_count, poisoned: false })
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits { max_txn: self.meta.txn, page_count: self.meta.page_count }
    }

    /// The value of `key` in the committed tree: borrowed from the map when the file is
    /// mapped and the value is stored inline, copied otherwise.
    pub fn get(&self, key: &[u8]) -> Result<Option<Cow<'_, [u8]>>, DbError> {
        let mut id = self.meta.root;
        if id == 0 {
            return Ok(None);
        }
        let lim = self.limits();
        for _ in 0..self.meta.height {
            let view = self.pager.node(id, lim)?;
            if view.is_leaf() {
                let Ok(i) = search(&view, key) else { return Ok(None) };
                return match view.value(i) {
                    ValueRef::Overflow { first, len } => Ok(Some(Cow::Owned(self.overflow(first, len)?))),
                    ValueRef::Inline(_) => Ok(Some(view.into_inline_value(i))),
                };
            }
            id = view.child(child_le(&view, key));
        }
        Err(self.pager.corrupt(id, format!("no leaf within the tree's height {}", self.meta.height)))
    }

    /// The committed entries with keys in `(start, end)`, in key order; iterate with
    /// `.rev()` for descending order.
    pub fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Range<'_> {
        Range::new(self, start, end)
    }

    /// The committed entry with the largest key in `(start, end)`, if any.
    pub fn last_in_range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Option<Entry>, DbError> {
        cursor::last_in_range(self, start, end)
    }

    /// Starts a write transaction. It sees its own writes; dropping it aborts it.
    pub fn begin_write(&mut self) -> Result<WriteTxn<'_, F>, DbError> {
        if self.poisoned {
            return Err(DbError::Poisoned { file: self.pager.name.clone() });
        }
        Ok(WriteTxn::new(self))
    }

    /// Sizes and counts of the committed state.
    pub fn stats(&self) -> Stats {
        Stats {
            txn_id: self.meta.txn,
            page_count: self.meta.page_count,
            free_pages: self.meta.free_count,
            used_pages: self.meta.page_count - self.meta.free_count,
            file_pages: self.pager.file.len() / PAGE_BYTES as u64,
            file_bytes: self.pager.file.len(),
            height: self.meta.height,
            key_count: self.meta.key_count,
        }
    }

    /// The backend, e.g. to look at a simulated disk.
    pub fn backend(&self) -> &F {
        &self.pager.file
    }

    /// Walks the whole committed file and checks what the format promises: every reachable
    /// page passes its checksum and structural checks; keys ascend and lie within their
    /// parents' separators; all leaves are at the height the meta records; no page is reachable
    /// twice; free pages are neither reachable nor listed twice; and every page below the
    /// high-water mark is reachable or free (no leaks). O(file size).
    pub fn check_invariants(&self) -> Result<(), DbError> {
        let lim = self.limits();
        let mut seen = vec![false; lim.page_count as usize];
        seen[0] = true;
        seen[1] = true;
        let mut mark = |id: PageId, what: &str| -> Result<(), DbError> {
            let slot = seen.get_mut(id as usize).ok_or_else(|| self.pager.corrupt(id, "outside the file"))?;
            if *slot {
                return Err(self.pager.corrupt(id, format!("{what} page reachable twice")));
            }
            *slot = true;
            Ok(())
        };
        let mut keys = 0;
        if self.meta.root != 0 {
            let root = self.pager.node(self.meta.root, lim)?;
            if !root.is_leaf() && root.len() < 2 {
                return Err(self.pager.corrupt(self.meta.root, "root branch with one child"));
            }
            let mut stack = vec![(self.meta.root, Bound::Unbounded, Bound::Unbounded, 1u32)];
            while let Some((id, lo, hi, depth)) = stack.pop() {
                mark(id, "tree")?;
                let node = self.pager.node(id, lim)?;
                let first = usize::from(!node.is_leaf());
                for i in first..node.len() {
                    let k = node.key(i);
                    if !within_bounds(k, &lo, &hi) {
                        return Err(self.pager.corrupt(id, format!("key {i} outside its parent's bounds")));
                    }
                }
                if node.is_leaf() {
                    if depth != self.meta.height {
                        return Err(self.pager.corrupt(id, format!("leaf at depth {depth}")));
                    }
                    keys += node.len() as u64;
                    for i in 0..node.len() {
                        if let ValueRef::Overflow { first, len } = node.value(i) {
                            for p in self.pager.overflow(first, len, lim, false)?.0 {
                                mark(p, "overflow")?;
                            }
                        }
                    }
                    continue;
                }
                if depth >= self.meta.height {
                    return Err(self.pager.corrupt(id, format!("branch at depth {depth}")));
                }
                for i in 0..node.len() {
                    let clo = if i == 0 { lo.clone() } else { Bound::Included(node.key(i).to_vec()) };
                    let chi = if i + 1 < node.len() {
                        Bound::Excluded(node.key(i + 1).to_vec())
                    } else {
                        hi.clone()
                    };
                    stack.push((node.child(i), clo, chi, depth + 1));
                }
            }
        }
        if keys != self.meta.key_count {
            return Err(self
                .pager
                .corrupt(self.meta.slot(), format!("{keys} keys, meta says {}", self.meta.key_count)));
        }
        let (fl_pages, mut fl_ids) = self.pager.freelist(self.meta.free_head, lim)?;
        for p in &fl_pages {
            mark(*p, "free-list")?;
        }
        for p in &fl_ids {
            mark(*p, "free")?;
        }
        fl_ids.sort_unstable();
        assert_eq!(fl_ids, self.free, "the in-memory free list matches the file");
        assert_eq!(fl_pages, self.free_pages, "the in-memory free-list chain matches the file");
        let leaked: Vec<usize> =
            seen.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| i).take(10).collect();
        if !leaked.is_empty() {
            return Err(self
                .pager
                .corrupt(leaked[0] as u64, format!("pages neither reachable nor free: {leaked:?}")));
        }
        Ok(())
    }

    fn overflow(&self, first: PageId, len: u32) -> Result<Vec<u8>, DbError> {
        Ok(self.pager.overflow(first, len, self.limits(), true)?.1)
    }
}

fn within_bounds(key: &[u8], lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    let above = match lo {
        Bound::Included(l) => key >= l.as_slice(),
        Bound::Excluded(l) => key > l.as_slice(),
        Bound::Unbounded => true,
    };
    let below = match hi {
        Bound::Included(h) => key <= h.as_slice(),
        Bound::Excluded(h) => key < h.as_slice(),
        Bound::Unbounded => true,
    };
    above && below
}

impl<F: PageFile> Source for Db<F> {
    fn root(&self) -> PageId {
        self.meta.root
    }

    fn node(&self, id: PageId) -> Result<NodeRef<'_>, DbError> {
        self.pager.node(id, self.limits()).map(NodeRef::View)
    }

    fn overflow(&self, first: PageId, len: u32) -> Result<Vec<u8>, DbError> {
        Db::overflow(self, first, len)
    }

    fn corrupt(&self, page: PageId, reason: &str) -> DbError {
        self.pager.corrupt(page, reason)
    }
}

impl<F: PageFile> Pager<F> {
    /// Whether the file holds nothing yet: empty, or zeros where the meta pages go (a file
    /// created and grown but never written).
    fn is_blank(&self) -> Result<bool, DbError> {
        let len = self.file.len().min(2 * PAGE_BYTES as u64) as usize;
        let mut buf = vec![0; len];
        self.file.read_at(0, &mut buf).map_err(|e| self.io(e))?;
        Ok(buf.iter().all(|b| *b == 0))
    }
}

const _: () = assert!(FIRST_DATA_PAGE == 2, "pages 0 and 1 are the meta slots");
const _: () = assert!(MAX_HEIGHT <= 64);
