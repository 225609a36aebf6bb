//! Giving free space back to the file system, a bounded step at a time.
//!
//! Copy-on-write makes moving a page the same as changing it: a step picks the highest live
//! pages that a lower free page could hold, copies them (and their parents up to the root) to
//! the lowest free pages in one ordinary commit, which lowers the high-water mark over the free
//! pages left at the top. Once neither meta page counts the pages past a point, the file is
//! truncated there. The protocol and its crash argument are in `docs/btree-format.md`.

use super::db::Db;
use super::error::DbError;
use super::page::{PageId, FIRST_DATA_PAGE, FREE_IDS_MAX, PAGE_BYTES};
use super::pager::PageFile;
use std::collections::HashSet;

/// What one [`Db::shrink_step`] did, and where the file stands after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShrinkProgress {
    /// Live pages copied to lower pages (not counting the parents copied along).
    pub moved_pages: u64,
    /// The high-water mark after the step, meta pages included.
    pub page_count: u64,
    /// The file's length in pages after the step.
    pub file_pages: u64,
    /// Nothing is left to move and the file is as short as both meta pages allow: further
    /// steps would do nothing.
    pub done: bool,
}

impl<F: PageFile> Db<F> {
    /// One bounded step of shrinking the file: moves at most `max_pages` of the highest live
    /// pages (nodes and overflow pages) into the lowest free pages and commits, then truncates
    /// the file to the highest high-water mark of the two meta pages. Call it until it reports
    /// `done`; other transactions may run between steps. Like a commit, a failure leaves the
    /// handle refusing writes until the file is reopened.
    ///
    /// Work per step: up to `max_pages` page moves plus their parents, one commit, and a walk
    /// of the tree (stopping once every page to move is found).
    pub fn shrink_step(&mut self, max_pages: usize) -> Result<ShrinkProgress, DbError> {
        assert!(max_pages > 0);
        if self.poisoned {
            return Err(DbError::Poisoned { file: self.pager.name.clone() });
        }
        let targets = self.shrink_targets(max_pages);
        // A commit is also what lowers the other slot's high-water mark (its meta is the one
        // the commit replaces), which the truncation waits for.
        let mut moved_pages = 0;
        if !targets.is_empty() || self.other_page_count > self.meta.page_count {
            let mut tx = self.begin_write()?;
            moved_pages = tx.relocate(&targets)?;
            if moved_pages != targets.len() as u64 {
                let lost = targets.iter().min().copied().unwrap_or(0);
                let reason = format!(
                    "{} of {} pages to move neither free nor reachable",
                    targets.len() as u64 - moved_pages,
                    targets.len()
                );
                return Err(self.pager.corrupt(lost, reason));
            }
            tx.commit()?;
        }
        let keep_bytes = self.truncation_point() * PAGE_BYTES as u64;
        if self.pager.file.len() > keep_bytes {
            self.pager.truncate(keep_bytes)?;
        }
        let done = self.shrink_targets(1).is_empty()
            && self.other_page_count <= self.meta.page_count
            && self.pager.file.len() <= self.truncation_point() * PAGE_BYTES as u64;
        Ok(ShrinkProgress {
            moved_pages,
            page_count: self.meta.page_count,
            file_pages: self.pager.file.len() / PAGE_BYTES as u64,
            done,
        })
    }

    /// Where the file may end: past every page either meta page counts. Recovery picks one
    /// of the two, and falls back to the older if the newer is damaged, so both must stay
    /// whole.
    fn truncation_point(&self) -> u64 {
        self.meta.page_count.max(self.other_page_count)
    }

    /// Up to `max` live pages to move: the highest ones, each paired with a lower free page
    /// (the lowest first). The free list's own pages are not among them: every commit writes
    /// the free list afresh to the lowest free pages anyway.
    ///
    /// A step's commit itself takes free pages (a copy of every parent on a moved page's path,
    /// a new free-list chain) and frees as many (the old copies, which it cannot reuse), so a
    /// few free pages always remain below the top. Those are held in reserve, not paired, and
    /// each step moves at most half of the rest: otherwise steps could go on moving pages
    /// without lowering the high-water mark.
    fn shrink_targets(&self, max: usize) -> HashSet<PageId> {
        let chain: HashSet<PageId> = self.free_pages.iter().copied().collect();
        let reserve = self.meta.height as usize + 2 + 2 * self.free.len().div_ceil(FREE_IDS_MAX);
        let usable = self.free.len().saturating_sub(reserve);
        let max = max.min(usable.div_ceil(2));
        let mut targets = HashSet::new();
        let mut lowest_free = self.free[..usable].iter();
        let mut id = self.meta.page_count;
        while targets.len() < max && id > FIRST_DATA_PAGE {
            id -= 1;
            if self.free.binary_search(&id).is_ok() || chain.contains(&id) {
                continue;
            }
            match lowest_free.next() {
                Some(&free) if free < id => {
                    targets.insert(id);
                }
                _ => break,
            }
        }
        targets
    }
}
