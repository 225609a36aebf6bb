//! Page I/O: reads through a read-only memory map (real files) or `read_at` (the simulated
//! disk), writes only with `write_at`, and growth of the file in chunks.

use super::error::DbError;
use super::page::{
    check_header, kind_of, parse_freelist, parse_overflow, Kind, NodeView, PageId, FIRST_DATA_PAGE,
    OVERFLOW_DATA_BYTES, PAGE_BYTES,
};
use crate::backend::{Backend, FileBackend, SimBackend};
use memmap2::Mmap;
use std::borrow::Cow;
use std::io;

/// The smallest step the file grows by.
const GROW_MIN_BYTES: u64 = 64 << 10;
/// The largest step the file grows by; below it the file doubles.
const GROW_MAX_BYTES: u64 = 64 << 20;
const _: () = assert!(GROW_MIN_BYTES >= PAGE_BYTES as u64 && GROW_MAX_BYTES >= GROW_MIN_BYTES);

/// A [`Backend`] the B-tree can live in: optionally mappable, and lockable.
pub trait PageFile: Backend {
    /// A read-only map of the whole file, or `None` if reads should go through `read_at`.
    fn map(&self) -> io::Result<Option<Mmap>>;
    /// Takes an exclusive lock held for as long as this handle lives. `Ok(false)` if another
    /// handle holds it.
    fn try_lock_exclusive(&self) -> io::Result<bool>;
}

impl PageFile for FileBackend {
    fn map(&self) -> io::Result<Option<Mmap>> {
        if self.is_empty() {
            return Ok(None);
        }
        // SAFETY: the map is read-only and the bytes behind it change only as follows. This
        // process writes the file with pwrite only through `Pager::write`, which takes `&mut
        // self`, so no slice of the map is alive while it runs; and it writes only pages no
        // durable meta reaches, which no reader looks at. It shrinks the file only in
        // `Pager::truncate` (also `&mut self`), which drops the map before `set_len` and maps
        // again after, so no map ever covers bytes past the end. Other processes are kept out by the
        // exclusive lock `Db::open` takes before mapping (an advisory lock: a process that
        // ignores it and truncates the file could make a read fault, as with any mapped file).
        let map = unsafe { Mmap::map(self.file()) }?;
        Ok(Some(map))
    }

    fn try_lock_exclusive(&self) -> io::Result<bool> {
        match self.file().try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

impl PageFile for SimBackend {
    fn map(&self) -> io::Result<Option<Mmap>> {
        Ok(None)
    }

    fn try_lock_exclusive(&self) -> io::Result<bool> {
        Ok(true)
    }
}

/// What a read may accept: pages below `page_count`, written by txns up to `max_txn`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_txn: u64,
    pub page_count: u64,
}

/// The file, its map and its name.
///
/// Invariant: `map`, when present, covers a prefix of the file; pages past it are read with
/// `read_at`.
pub(crate) struct Pager<F> {
    pub file: F,
    map: Option<Mmap>,
    pub name: String,
}

impl<F: PageFile> Pager<F> {
    pub(crate) fn new(file: F) -> Self {
        let name = file.describe();
        Pager { file, map: None, name }
    }

    pub(crate) fn io(&self, e: io::Error) -> DbError {
        DbError::io(&self.name, e)
    }

    pub(crate) fn corrupt(&self, page: PageId, reason: impl Into<String>) -> DbError {
        DbError::corrupt(&self.name, page, reason)
    }

    /// Maps the file again if its length differs from the map's.
    pub(crate) fn remap(&mut self) -> Result<(), DbError> {
        let mapped = self.map.as_ref().map_or(0, |m| m.len() as u64);
        if self.file.len() != mapped {
            self.map = None;
            self.map = self.file.map().map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// The raw bytes of page `id`, unchecked.
    pub(crate) fn read_raw(&self, id: PageId) -> Result<Cow<'_, [u8]>, DbError> {
        let at = id.checked_mul(PAGE_BYTES as u64).ok_or_else(|| self.corrupt(id, "page id overflows"))?;
        if let Some(map) = &self.map {
            if at + PAGE_BYTES as u64 <= map.len() as u64 {
                return Ok(Cow::Borrowed(&map[at as usize..at as usize + PAGE_BYTES]));
            }
        }
        let mut buf = vec![0; PAGE_BYTES];
        match self.file.read_at(at, &mut buf) {
            Ok(()) => Ok(Cow::Owned(buf)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.corrupt(id, "page lies past the end of the file"))
            }
            Err(e) => Err(self.io(e)),
        }
    }

    /// Page `id`, which must be of `kind`, with its header verified.
    fn read_checked(&self, id: PageId, kind: Kind, lim: Limits) -> Result<Cow<'_, [u8]>, DbError> {
        if !(FIRST_DATA_PAGE..lim.page_count).contains(&id) {
            return Err(self.corrupt(id, format!("page outside the tree's {} pages", lim.page_count)));
        }
        let bytes = self.read_raw(id)?;
        check_header(&bytes, id, kind, lim.max_txn).map_err(|r| self.corrupt(id, r))?;
        Ok(bytes)
    }

    /// Node page `id`, verified.
    pub(crate) fn node(&self, id: PageId, lim: Limits) -> Result<NodeView<'_>, DbError> {
        let raw = self.read_raw(id)?;
        let kind = match kind_of(&raw) {
            Some(k @ (Kind::Branch | Kind::Leaf)) => k,
            _ => Kind::Leaf, // check_header reports the mismatch (or the bad checksum)
        };
        drop(raw);
        let bytes = self.read_checked(id, kind, lim)?;
        NodeView::parse(bytes, lim.page_count).map_err(|r| self.corrupt(id, r))
    }

    /// The pages of the overflow chain from `first` holding `len` bytes, each verified; with
    /// the bytes if `collect`.
    pub(crate) fn overflow(
        &self,
        first: PageId,
        len: u32,
        lim: Limits,
        collect: bool,
    ) -> Result<(Vec<PageId>, Vec<u8>), DbError> {
        let len = len as usize;
        let pages = len.div_ceil(OVERFLOW_DATA_BYTES);
        let mut ids = Vec::with_capacity(pages);
        let mut data = Vec::with_capacity(if collect { len } else { 0 });
        let mut id = first;
        for i in 0..pages {
            let bytes = self.read_checked(id, Kind::Overflow, lim)?;
            let (next, chunk) = parse_overflow(&bytes, lim.page_count).map_err(|r| self.corrupt(id, r))?;
            let want = (len - i * OVERFLOW_DATA_BYTES).min(OVERFLOW_DATA_BYTES);
            if chunk.len() != want || (next == 0) != (i + 1 == pages) {
                return Err(
                    self.corrupt(id, format!("overflow page {i} of {pages} does not fit a {len}-byte value"))
                );
            }
            ids.push(id);
            if collect {
                data.extend_from_slice(chunk);
            }
            id = next;
        }
        Ok((ids, data))
    }

    /// The free-list chain from `head`: its pages and the ids they list, each page verified.
    pub(crate) fn freelist(&self, head: PageId, lim: Limits) -> Result<(Vec<PageId>, Vec<PageId>), DbError> {
        let mut pages = Vec::new();
        let mut ids = Vec::new();
        let mut id = head;
        while id != 0 {
            // A cycle would list more pages than the file has.
            if pages.len() as u64 >= lim.page_count {
                return Err(self.corrupt(id, "free-list chain longer than the file"));
            }
            let bytes = self.read_checked(id, Kind::FreeList, lim)?;
            let (next, listed) = parse_freelist(&bytes, lim.page_count).map_err(|r| self.corrupt(id, r))?;
            pages.push(id);
            ids.extend(listed);
            id = next;
        }
        Ok((pages, ids))
    }

    /// Writes one page image, growing the file first if needed.
    pub(crate) fn write(&mut self, id: PageId, page: &[u8]) -> Result<(), DbError> {
        assert_eq!(page.len(), PAGE_BYTES);
        let at = id * PAGE_BYTES as u64;
        self.ensure_len(at + PAGE_BYTES as u64)?;
        self.file.write_at(at, page).map_err(|e| self.io(e))
    }

    /// Grows the file to at least `need` bytes: doubling, by at least 64 KiB and at most
    /// 64 MiB a step, so that growth is rare and the file is never much larger than the tree.
    fn ensure_len(&mut self, need: u64) -> Result<(), DbError> {
        let len = self.file.len();
        if len >= need {
            return Ok(());
        }
        let step = len.clamp(GROW_MIN_BYTES, GROW_MAX_BYTES);
        let new_len = need.max(len + step).next_multiple_of(PAGE_BYTES as u64);
        self.file.set_len(new_len).map_err(|e| self.io(e))
    }

    /// Shrinks the file to `len` bytes, durably, and maps what is left. The map is dropped
    /// first: a mapped page past the end of the file faults (SIGBUS) if touched, and `&mut self`
    /// guarantees no slice of the map is alive.
    pub(crate) fn truncate(&mut self, len: u64) -> Result<(), DbError> {
        assert!(len < self.file.len(), "truncation shrinks the file");
        assert!(len.is_multiple_of(PAGE_BYTES as u64), "truncation keeps whole pages");
        self.map = None;
        let result = self.file.set_len(len).map_err(|e| self.io(e)).and_then(|()| self.sync());
        // Map again even after a failure: the length is whatever `len()` says now.
        self.remap()?;
        result
    }

    pub(crate) fn sync(&mut self) -> Result<(), DbError> {
        self.file.sync().map_err(|e| self.io(e))
    }
}
