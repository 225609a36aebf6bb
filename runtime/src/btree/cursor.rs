//! Searching and iterating a tree, the committed one or a write transaction's.

use super::error::DbError;
use super::page::{Node, NodeView, PageId, ValueRef};
use std::ops::Bound;

/// A key and its value, as ranges yield them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Bound on a tree's height. With at least two children per branch (three for the largest
/// keys) a tree this tall holds more pages than a file can; deeper means a cycle or damage.
pub(crate) const MAX_HEIGHT: usize = 64;

/// A node as a reader sees it: a verified page, or a write transaction's modified copy.
pub(crate) enum NodeRef<'a> {
    View(NodeView<'a>),
    Owned(&'a Node),
}

impl NodeRef<'_> {
    pub(crate) fn is_leaf(&self) -> bool {
        match self {
            NodeRef::View(v) => v.is_leaf(),
            NodeRef::Owned(n) => n.is_leaf(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            NodeRef::View(v) => v.len(),
            NodeRef::Owned(n) => n.len(),
        }
    }

    pub(crate) fn key(&self, i: usize) -> &[u8] {
        match self {
            NodeRef::View(v) => v.key(i),
            NodeRef::Owned(n) => n.key(i),
        }
    }

    pub(crate) fn child(&self, i: usize) -> PageId {
        match self {
            NodeRef::View(v) => v.child(i),
            NodeRef::Owned(Node::Branch(e)) => e[i].child,
            NodeRef::Owned(Node::Leaf(_)) => panic!("child of a leaf"),
        }
    }

    pub(crate) fn value(&self, i: usize) -> ValueRef<'_> {
        match self {
            NodeRef::View(v) => v.value(i),
            NodeRef::Owned(Node::Leaf(e)) => e[i].value.as_ref(),
            NodeRef::Owned(Node::Branch(_)) => panic!("value of a branch"),
        }
    }
}

/// Keys of a node, however it is held.
pub(crate) trait Keys {
    fn len(&self) -> usize;
    fn key(&self, i: usize) -> &[u8];
}

impl Keys for NodeRef<'_> {
    fn len(&self) -> usize {
        NodeRef::len(self)
    }
    fn key(&self, i: usize) -> &[u8] {
        NodeRef::key(self, i)
    }
}

impl Keys for NodeView<'_> {
    fn len(&self) -> usize {
        NodeView::len(self)
    }
    fn key(&self, i: usize) -> &[u8] {
        NodeView::key(self, i)
    }
}

impl Keys for Node {
    fn len(&self) -> usize {
        Node::len(self)
    }
    fn key(&self, i: usize) -> &[u8] {
        Node::key(self, i)
    }
}

/// The first index in `lo..hi` at which `pred` is false, `pred` being true on a prefix.
fn partition_point(mut lo: usize, mut hi: usize, pred: impl Fn(usize) -> bool) -> usize {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The child of a branch whose keys may include `key`.
pub(crate) fn child_le(n: &impl Keys, key: &[u8]) -> usize {
    partition_point(1, n.len(), |i| n.key(i) <= key) - 1
}

/// The child of a branch that holds the largest keys below `key`.
fn child_lt(n: &impl Keys, key: &[u8]) -> usize {
    partition_point(1, n.len(), |i| n.key(i) < key) - 1
}

/// In a leaf: `Ok(i)` if entry `i` has `key`, else `Err(i)` where it would go.
pub(crate) fn search(n: &impl Keys, key: &[u8]) -> Result<usize, usize> {
    let i = partition_point(0, n.len(), |i| n.key(i) < key);
    if i < n.len() && n.key(i) == key {
        Ok(i)
    } else {
        Err(i)
    }
}

/// A tree to read: the committed one or a write transaction's.
pub(crate) trait Source {
    fn root(&self) -> PageId;
    fn node(&self, id: PageId) -> Result<NodeRef<'_>, DbError>;
    /// The bytes of an overflow value.
    fn overflow(&self, first: PageId, len: u32) -> Result<Vec<u8>, DbError>;
    fn corrupt(&self, page: PageId, reason: &str) -> DbError;

    fn value(&self, v: ValueRef<'_>) -> Result<Vec<u8>, DbError> {
        match v {
            ValueRef::Inline(b) => Ok(b.to_vec()),
            ValueRef::Overflow { first, len } => self.overflow(first, len),
        }
    }
}

/// Looks `key` up in `src`.
pub(crate) fn get(src: &dyn Source, key: &[u8]) -> Result<Option<Vec<u8>>, DbError> {
    let mut id = src.root();
    if id == 0 {
        return Ok(None);
    }
    for _ in 0..MAX_HEIGHT {
        let node = src.node(id)?;
        if node.is_leaf() {
            return match search(&node, key) {
                Ok(i) => src.value(node.value(i)).map(Some),
                Err(_) => Ok(None),
            };
        }
        id = node.child(child_le(&node, key));
    }
    Err(src.corrupt(id, "tree deeper than the height limit"))
}

/// A position in a tree: the path from the root, the leaf last.
///
/// Invariant: empty (exhausted) or the last element is a leaf and its index an entry of it.
pub(crate) struct Cursor<'a> {
    stack: Vec<(NodeRef<'a>, usize)>,
}

impl<'a> Cursor<'a> {
    /// At the first entry after `bound` (forward) or the last before it (backward).
    pub(crate) fn seek(
        src: &'a dyn Source,
        bound: Bound<&[u8]>,
        forward: bool,
    ) -> Result<Cursor<'a>, DbError> {
        let mut c = Cursor { stack: Vec::new() };
        let mut id = src.root();
        if id == 0 {
            return Ok(c);
        }
        loop {
            if c.stack.len() >= MAX_HEIGHT {
                return Err(src.corrupt(id, "tree deeper than the height limit"));
            }
            let node = src.node(id)?;
            let len = node.len();
            if node.is_leaf() {
                // `at` counts the entries before the position (forward) or up to it (backward).
                let at = match (bound, forward) {
                    (Bound::Unbounded, true) => 0,
                    (Bound::Unbounded, false) => len,
                    (Bound::Included(k), true) => partition_point(0, len, |i| node.key(i) < k),
                    (Bound::Excluded(k), true) => partition_point(0, len, |i| node.key(i) <= k),
                    (Bound::Included(k), false) => partition_point(0, len, |i| node.key(i) <= k),
                    (Bound::Excluded(k), false) => partition_point(0, len, |i| node.key(i) < k),
                };
                if forward {
                    c.stack.push((node, at));
                    if at == len {
                        c.climb(src, true)?;
                    }
                } else if at == 0 {
                    c.stack.push((node, 0));
                    c.climb(src, false)?;
                } else {
                    c.stack.push((node, at - 1));
                }
                return Ok(c);
            }
            let i = match (bound, forward) {
                (Bound::Unbounded, true) => 0,
                (Bound::Unbounded, false) => len - 1,
                (Bound::Included(k) | Bound::Excluded(k), true) | (Bound::Included(k), false) => {
                    child_le(&node, k)
                }
                (Bound::Excluded(k), false) => child_lt(&node, k),
            };
            id = node.child(i);
            c.stack.push((node, i));
        }
    }

    /// The entry at the position.
    pub(crate) fn current(&self) -> Option<(&[u8], ValueRef<'_>)> {
        let (leaf, i) = self.stack.last()?;
        Some((leaf.key(*i), leaf.value(*i)))
    }

    /// Moves to the next (forward) or previous entry.
    pub(crate) fn step(&mut self, src: &'a dyn Source, forward: bool) -> Result<(), DbError> {
        let Some((leaf, i)) = self.stack.last_mut() else { return Ok(()) };
        if forward && *i + 1 < leaf.len() {
            *i += 1;
            Ok(())
        } else if !forward && *i > 0 {
            *i -= 1;
            Ok(())
        } else {
            self.climb(src, forward)
        }
    }

    /// Leaves the current leaf for the first entry of the next one (or the last of the
    /// previous one), or becomes exhausted.
    fn climb(&mut self, src: &'a dyn Source, forward: bool) -> Result<(), DbError> {
        self.stack.pop();
        loop {
            let Some((node, i)) = self.stack.last_mut() else { return Ok(()) };
            if forward && *i + 1 < node.len() {
                *i += 1;
                break;
            }
            if !forward && *i > 0 {
                *i -= 1;
                break;
            }
            self.stack.pop();
        }
        let (node, i) = self.stack.last().expect("stopped at a branch");
        let mut id = node.child(*i);
        loop {
            if self.stack.len() >= MAX_HEIGHT {
                return Err(src.corrupt(id, "tree deeper than the height limit"));
            }
            let node = src.node(id)?;
            let i = if forward { 0 } else { node.len() - 1 };
            let leaf = node.is_leaf();
            if !leaf {
                id = node.child(i);
            }
            self.stack.push((node, i));
            if leaf {
                return Ok(());
            }
        }
    }
}

fn within(key: &[u8], start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>) -> bool {
    let after_start = match start {
        Bound::Unbounded => true,
        Bound::Included(s) => key >= s.as_slice(),
        Bound::Excluded(s) => key > s.as_slice(),
    };
    let before_end = match end {
        Bound::Unbounded => true,
        Bound::Included(e) => key <= e.as_slice(),
        Bound::Excluded(e) => key < e.as_slice(),
    };
    after_start && before_end
}

/// The entries of a key range in order, from either end: an [`Iterator`] and a
/// [`DoubleEndedIterator`] of `(key, value)` pairs. Stops at the first error.
pub struct Range<'a> {
    src: &'a dyn Source,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    front: Option<Cursor<'a>>,
    back: Option<Cursor<'a>>,
    /// The key each end yielded last: the other end stops before it.
    front_last: Option<Vec<u8>>,
    back_last: Option<Vec<u8>>,
    done: bool,
}

impl<'a> Range<'a> {
    pub(crate) fn new(src: &'a dyn Source, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Range<'a> {
        Range {
            src,
            start: start.map(<[u8]>::to_vec),
            end: end.map(<[u8]>::to_vec),
            front: None,
            back: None,
            front_last: None,
            back_last: None,
            done: false,
        }
    }

    fn advance(&mut self, forward: bool) -> Result<Option<Entry>, DbError> {
        let src = self.src;
        let slot = if forward { &mut self.front } else { &mut self.back };
        match slot {
            Some(c) => c.step(src, forward)?,
            None => {
                let bound = if forward { self.start.as_ref() } else { self.end.as_ref() };
                *slot = Some(Cursor::seek(src, bound.map(Vec::as_slice), forward)?);
            }
        }
        let cursor = slot.as_ref().expect("set above");
        let Some((key, value)) = cursor.current() else { return Ok(None) };
        if !within(key, &self.start, &self.end) {
            return Ok(None);
        }
        let other = if forward { &self.back_last } else { &self.front_last };
        if let Some(o) = other {
            if (forward && key >= o.as_slice()) || (!forward && key <= o.as_slice()) {
                return Ok(None);
            }
        }
        let item = (key.to_vec(), src.value(value)?);
        let last = if forward { &mut self.front_last } else { &mut self.back_last };
        *last = Some(item.0.clone());
        Ok(Some(item))
    }

    fn next_from(&mut self, forward: bool) -> Option<Result<Entry, DbError>> {
        if self.done {
            return None;
        }
        match self.advance(forward) {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl Iterator for Range<'_> {
    type Item = Result<Entry, DbError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_from(true)
    }
}

impl DoubleEndedIterator for Range<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.next_from(false)
    }
}

/// The last entry with a key in the range, if any.
pub(crate) fn last_in_range(
    src: &dyn Source,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
) -> Result<Option<Entry>, DbError> {
    Range::new(src, start, end).next_back().transpose()
}
