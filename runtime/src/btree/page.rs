//! Page formats: the common header, meta pages, branch and leaf nodes, overflow pages and
//! free-list pages. Byte layouts are in `docs/btree-format.md`; this file is the code for them.
//!
//! Every decoder here takes arbitrary bytes and returns `Err(reason)` for anything it does not
//! accept; none of them panics on any input (a property test and a fuzz target check that).

use std::borrow::Cow;

/// A page's index in the file; its byte offset is `id * PAGE_BYTES`.
pub type PageId = u64;

/// The size of every page, meta pages included.
pub const PAGE_BYTES: usize = 4096;
/// The on-disk format this build reads and writes. Bump it on any layout change.
pub const FORMAT_VERSION: u32 = 1;
/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest value accepted.
pub const MAX_VALUE_BYTES: usize = 64 << 20;
/// Values longer than this live in a chain of overflow pages rather than in the leaf.
pub(crate) const INLINE_VALUE_MAX: usize = 1024;
/// Pages 0 and 1 are the meta pages; the tree, overflow and free-list pages come after.
pub(crate) const FIRST_DATA_PAGE: PageId = 2;
/// Bound on the file: 2^36 pages of 4 KiB is 256 TiB. A larger count in a meta page is damage.
pub(crate) const MAX_PAGE_COUNT: u64 = 1 << 36;

pub(crate) const MAGIC: [u8; 8] = *b"KEELBTRE";
pub(crate) const HEADER_BYTES: usize = 24;

/// What a page holds; byte 4 of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Meta = 1,
    Branch = 2,
    Leaf = 3,
    Overflow = 4,
    FreeList = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Meta),
            2 => Some(Kind::Branch),
            3 => Some(Kind::Leaf),
            4 => Some(Kind::Overflow),
            5 => Some(Kind::FreeList),
            _ => None,
        }
    }
}

// Node pages: header, entry count, then one u16 offset per entry, then the entries.
const COUNT_AT: usize = HEADER_BYTES;
const OFFSETS_AT: usize = HEADER_BYTES + 2;
/// Bytes a node's offsets and entries may take.
pub(crate) const NODE_BODY_MAX: usize = PAGE_BYTES - OFFSETS_AT;
/// key_len u16, value kind u8, value length u32.
const LEAF_FIXED: usize = 7;
/// key_len u16, child u64.
const BRANCH_FIXED: usize = 10;
const VALUE_INLINE: u8 = 0;
const VALUE_OVERFLOW: u8 = 1;

// Overflow pages: header, next u64, data length u32, data.
const OVERFLOW_NEXT_AT: usize = HEADER_BYTES;
const OVERFLOW_LEN_AT: usize = HEADER_BYTES + 8;
const OVERFLOW_DATA_AT: usize = HEADER_BYTES + 12;
/// Value bytes one overflow page carries.
pub(crate) const OVERFLOW_DATA_BYTES: usize = PAGE_BYTES - OVERFLOW_DATA_AT;

// Free-list pages: header, next u64, id count u32, ids.
const FREE_NEXT_AT: usize = HEADER_BYTES;
const FREE_COUNT_AT: usize = HEADER_BYTES + 8;
const FREE_IDS_AT: usize = HEADER_BYTES + 12;
/// Free page ids one free-list page carries.
pub(crate) const FREE_IDS_MAX: usize = (PAGE_BYTES - FREE_IDS_AT) / 8;

// Meta page fields, after the header.
const META_MAGIC_AT: usize = 24;
const META_VERSION_AT: usize = 32;
const META_PAGE_BYTES_AT: usize = 36;
const META_ROOT_AT: usize = 40;
const META_FREE_HEAD_AT: usize = 48;
const META_PAGE_COUNT_AT: usize = 56;
const META_FREE_COUNT_AT: usize = 64;
const META_KEY_COUNT_AT: usize = 72;
const META_HEIGHT_AT: usize = 80;
const META_END: usize = 84;

// The largest leaf entry (an inline value at the limit) fits a page on its own, so splitting
// always terminates; branches hold at least three children of the largest key.
const _: () = assert!(2 + LEAF_FIXED + MAX_KEY_BYTES + INLINE_VALUE_MAX <= NODE_BODY_MAX);
const _: () = assert!(3 * (2 + BRANCH_FIXED + MAX_KEY_BYTES) <= NODE_BODY_MAX);
const _: () = assert!(MAX_VALUE_BYTES <= u32::MAX as usize);
const _: () = assert!(INLINE_VALUE_MAX + 1 >= 8, "an overflow reference is no longer than an inline value");
const _: () = assert!(PAGE_BYTES <= u16::MAX as usize, "offsets within a page are u16");
const _: () = assert!(META_END <= PAGE_BYTES);

pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A zeroed page buffer.
pub(crate) fn blank() -> Vec<u8> {
    vec![0; PAGE_BYTES]
}

/// Fills in the header of a page whose body is written, checksum last.
pub(crate) fn seal(page: &mut [u8], kind: Kind, id: PageId, txn: u64) {
    assert_eq!(page.len(), PAGE_BYTES);
    page[4] = kind as u8;
    page[5..8].fill(0);
    put_u64(page, 8, id);
    put_u64(page, 16, txn);
    let crc = crc32fast::hash(&page[4..]);
    put_u32(page, 0, crc);
}

/// The kind a page's header claims, before any check.
pub(crate) fn kind_of(page: &[u8]) -> Option<Kind> {
    page.get(4).copied().and_then(Kind::from_u8)
}

/// Checks a page's checksum, and that it is the page `id` of kind `kind`, written by a
/// transaction no later than `max_txn`. This catches torn pages, flipped bits and pages written
/// to the wrong place.
pub(crate) fn check_header(page: &[u8], id: PageId, kind: Kind, max_txn: u64) -> Result<(), String> {
    if page.len() != PAGE_BYTES {
        return Err(format!("page is {} bytes, expected {PAGE_BYTES}", page.len()));
    }
    let stored = get_u32(page, 0);
    let computed = crc32fast::hash(&page[4..]);
    if stored != computed {
        return Err(format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"));
    }
    if page[5..8] != [0, 0, 0] {
        return Err("reserved header bytes are not zero".into());
    }
    let found_id = get_u64(page, 8);
    if found_id != id {
        return Err(format!("page claims to be page {found_id} (misdirected write)"));
    }
    match Kind::from_u8(page[4]) {
        Some(k) if k == kind => {}
        Some(k) => return Err(format!("expected a {kind:?} page, found a {k:?} page")),
        None => return Err(format!("unknown page kind {}", page[4])),
    }
    let txn = get_u64(page, 16);
    if txn > max_txn {
        return Err(format!("written by txn {txn}, after the newest committed txn {max_txn}"));
    }
    Ok(())
}

/// The durable root of everything: which tree, which free list, how many pages.
///
/// Invariants: `FIRST_DATA_PAGE <= page_count <= MAX_PAGE_COUNT`; `root` and `free_head` are 0
/// (none) or in `FIRST_DATA_PAGE..page_count`; `root == 0` iff `height == 0` iff the tree is
/// empty; the meta page of txn `t` lives in slot `t % 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub txn: u64,
    pub root: PageId,
    pub free_head: PageId,
    pub page_count: u64,
    pub free_count: u64,
    pub key_count: u64,
    pub height: u32,
}

impl Meta {
    pub(crate) fn empty() -> Meta {
        Meta {
            txn: 0,
            root: 0,
            free_head: 0,
            page_count: FIRST_DATA_PAGE,
            free_count: 0,
            key_count: 0,
            height: 0,
        }
    }

    pub(crate) fn slot(&self) -> PageId {
        self.txn % 2
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        self.assert_valid();
        let mut p = blank();
        p[META_MAGIC_AT..META_MAGIC_AT + 8].copy_from_slice(&MAGIC);
        put_u32(&mut p, META_VERSION_AT, FORMAT_VERSION);
        put_u32(&mut p, META_PAGE_BYTES_AT, PAGE_BYTES as u32);
        put_u64(&mut p, META_ROOT_AT, self.root);
        put_u64(&mut p, META_FREE_HEAD_AT, self.free_head);
        put_u64(&mut p, META_PAGE_COUNT_AT, self.page_count);
        put_u64(&mut p, META_FREE_COUNT_AT, self.free_count);
        put_u64(&mut p, META_KEY_COUNT_AT, self.key_count);
        put_u32(&mut p, META_HEIGHT_AT, self.height);
        seal(&mut p, Kind::Meta, self.slot(), self.txn);
        p
    }

    fn assert_valid(&self) {
        assert!(self.check().is_ok(), "meta invariant: {:?}: {self:?}", self.check());
    }

    fn check(&self) -> Result<(), String> {
        if !(FIRST_DATA_PAGE..=MAX_PAGE_COUNT).contains(&self.page_count) {
            return Err(format!("page count {} out of bounds", self.page_count));
        }
        let in_file = |p: PageId| p == 0 || (FIRST_DATA_PAGE..self.page_count).contains(&p);
        if !in_file(self.root) {
            return Err(format!("root {} outside the file", self.root));
        }
        if !in_file(self.free_head) {
            return Err(format!("free-list head {} outside the file", self.free_head));
        }
        if self.free_count >= self.page_count {
            return Err(format!("free count {} >= page count {}", self.free_count, self.page_count));
        }
        if (self.root == 0) != (self.height == 0) || self.height > 64 {
            return Err(format!("root {} with height {}", self.root, self.height));
        }
        if self.root == 0 && self.key_count != 0 {
            return Err(format!("empty tree with {} keys", self.key_count));
        }
        Ok(())
    }

    /// Decodes the meta page found in `slot`.
    pub(crate) fn decode(page: &[u8], slot: PageId) -> Result<Meta, MetaError> {
        check_header(page, slot, Kind::Meta, u64::MAX).map_err(MetaError::Invalid)?;
        if page[META_MAGIC_AT..META_MAGIC_AT + 8] != MAGIC {
            return Err(MetaError::Invalid("bad magic".into()));
        }
        let version = get_u32(page, META_VERSION_AT);
        if version != FORMAT_VERSION {
            return Err(MetaError::Version(version));
        }
        let page_bytes = get_u32(page, META_PAGE_BYTES_AT);
        if page_bytes as usize != PAGE_BYTES {
            return Err(MetaError::Invalid(format!("page size {page_bytes}, expected {PAGE_BYTES}")));
        }
        if page[META_END..].iter().any(|b| *b != 0) {
            return Err(MetaError::Invalid("reserved bytes are not zero".into()));
        }
        let meta = Meta {
            txn: get_u64(page, 16),
            root: get_u64(page, META_ROOT_AT),
            free_head: get_u64(page, META_FREE_HEAD_AT),
            page_count: get_u64(page, META_PAGE_COUNT_AT),
            free_count: get_u64(page, META_FREE_COUNT_AT),
            key_count: get_u64(page, META_KEY_COUNT_AT),
            height: get_u32(page, META_HEIGHT_AT),
        };
        if meta.slot() != slot {
            return Err(MetaError::Invalid(format!("txn {} does not belong in slot {slot}", meta.txn)));
        }
        meta.check().map_err(MetaError::Invalid)?;
        Ok(meta)
    }
}

/// Why a meta page was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetaError {
    /// Damaged, torn or never written.
    Invalid(String),
    /// Intact, but of another format version.
    Version(u32),
}

/// A value as a leaf holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueRef<'a> {
    Inline(&'a [u8]),
    /// The first page of a chain of overflow pages holding `len` bytes.
    Overflow {
        first: PageId,
        len: u32,
    },
}

/// A validated node page, read in place (borrowed from the map) or from a copy.
///
/// Invariant: `parse` checked every offset, length and child id, and that keys ascend, so the
/// accessors index without further checks and cannot panic.
#[derive(Debug, Clone)]
pub(crate) struct NodeView<'a> {
    bytes: Cow<'a, [u8]>,
    leaf: bool,
    count: usize,
}

impl<'a> NodeView<'a> {
    /// Validates the body of a node page whose header `check_header` accepted. Child and
    /// overflow page ids must lie in `FIRST_DATA_PAGE..page_count`.
    pub(crate) fn parse(bytes: Cow<'a, [u8]>, page_count: u64) -> Result<NodeView<'a>, String> {
        let b: &[u8] = &bytes;
        if b.len() != PAGE_BYTES {
            return Err(format!("page is {} bytes", b.len()));
        }
        let leaf = match kind_of(b) {
            Some(Kind::Leaf) => true,
            Some(Kind::Branch) => false,
            k => return Err(format!("not a node page: {k:?}")),
        };
        let count = get_u16(b, COUNT_AT) as usize;
        let fixed = if leaf { LEAF_FIXED } else { BRANCH_FIXED };
        if count == 0 || count > NODE_BODY_MAX / (2 + fixed) {
            return Err(format!("entry count {count} out of bounds"));
        }
        let entries_at = OFFSETS_AT + 2 * count;
        let child_ok = |p: PageId| (FIRST_DATA_PAGE..page_count).contains(&p);
        let mut prev: Option<&[u8]> = None;
        // Entries may not overlap in a page we wrote; summing their sizes keeps a crafted page
        // whose entries share bytes from decoding into a node too large to write back.
        let mut total = 0;
        for i in 0..count {
            let off = get_u16(b, OFFSETS_AT + 2 * i) as usize;
            if off < entries_at || off + fixed > PAGE_BYTES {
                return Err(format!("entry {i} offset {off} out of bounds"));
            }
            let key_len = get_u16(b, off) as usize;
            let key_at = off + fixed;
            if key_len > MAX_KEY_BYTES || key_at + key_len > PAGE_BYTES {
                return Err(format!("entry {i} key length {key_len} out of bounds"));
            }
            let key = &b[key_at..key_at + key_len];
            total += 2 + fixed + key_len;
            if leaf {
                let len = get_u32(b, off + 3) as usize;
                let end = key_at + key_len;
                match b[off + 2] {
                    VALUE_INLINE => {
                        if len > INLINE_VALUE_MAX || end + len > PAGE_BYTES {
                            return Err(format!("entry {i} inline value length {len} out of bounds"));
                        }
                        total += len;
                    }
                    VALUE_OVERFLOW => {
                        if len <= INLINE_VALUE_MAX || len > MAX_VALUE_BYTES || end + 8 > PAGE_BYTES {
                            return Err(format!("entry {i} overflow value length {len} out of bounds"));
                        }
                        total += 8;
                        let first = get_u64(b, end);
                        if !child_ok(first) {
                            return Err(format!("entry {i} overflow page {first} outside the file"));
                        }
                    }
                    k => return Err(format!("entry {i} value kind {k}")),
                }
            } else {
                let child = get_u64(b, off + 2);
                if !child_ok(child) {
                    return Err(format!("entry {i} child {child} outside the file"));
                }
                if i == 0 {
                    if key_len != 0 {
                        return Err("first branch entry has a key".into());
                    }
                    continue;
                }
            }
            if let Some(p) = prev {
                if p >= key {
                    return Err(format!("keys out of order at entry {i}"));
                }
            }
            prev = Some(key);
        }
        if total > NODE_BODY_MAX {
            return Err(format!("entries take {total} bytes, more than a page holds"));
        }
        Ok(NodeView { bytes, leaf, count })
    }

    pub(crate) fn is_leaf(&self) -> bool {
        self.leaf
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    fn entry_at(&self, i: usize) -> usize {
        assert!(i < self.count);
        get_u16(&self.bytes, OFFSETS_AT + 2 * i) as usize
    }

    pub(crate) fn key(&self, i: usize) -> &[u8] {
        let off = self.entry_at(i);
        let len = get_u16(&self.bytes, off) as usize;
        let at = off + if self.leaf { LEAF_FIXED } else { BRANCH_FIXED };
        &self.bytes[at..at + len]
    }

    pub(crate) fn child(&self, i: usize) -> PageId {
        assert!(!self.leaf);
        get_u64(&self.bytes, self.entry_at(i) + 2)
    }

    fn value_range(&self, i: usize) -> (u8, usize, usize) {
        assert!(self.leaf);
        let off = self.entry_at(i);
        let key_len = get_u16(&self.bytes, off) as usize;
        let len = get_u32(&self.bytes, off + 3) as usize;
        (self.bytes[off + 2], off + LEAF_FIXED + key_len, len)
    }

    pub(crate) fn value(&self, i: usize) -> ValueRef<'_> {
        match self.value_range(i) {
            (VALUE_INLINE, at, len) => ValueRef::Inline(&self.bytes[at..at + len]),
            (_, at, len) => ValueRef::Overflow { first: get_u64(&self.bytes, at), len: len as u32 },
        }
    }

    /// The inline value of entry `i`, borrowed from the map when the page is.
    pub(crate) fn into_inline_value(self, i: usize) -> Cow<'a, [u8]> {
        let (kind, at, len) = self.value_range(i);
        assert_eq!(kind, VALUE_INLINE);
        match self.bytes {
            Cow::Borrowed(b) => Cow::Borrowed(&b[at..at + len]),
            Cow::Owned(v) => Cow::Owned(v[at..at + len].to_vec()),
        }
    }

    pub(crate) fn to_node(&self) -> Node {
        if self.leaf {
            Node::Leaf(
                (0..self.count)
                    .map(|i| LeafEntry {
                        key: self.key(i).to_vec(),
                        value: match self.value(i) {
                            ValueRef::Inline(v) => Value::Inline(v.to_vec()),
                            ValueRef::Overflow { first, len } => Value::Overflow { first, len },
                        },
                    })
                    .collect(),
            )
        } else {
            Node::Branch(
                (0..self.count)
                    .map(|i| BranchEntry { key: self.key(i).to_vec(), child: self.child(i) })
                    .collect(),
            )
        }
    }
}

/// A leaf's value, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Inline(Vec<u8>),
    Overflow { first: PageId, len: u32 },
}

impl Value {
    pub(crate) fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Inline(v) => ValueRef::Inline(v),
            Value::Overflow { first, len } => ValueRef::Overflow { first: *first, len: *len },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafEntry {
    pub key: Vec<u8>,
    pub value: Value,
}

/// `key` is the separator: the child holds keys `>= key` and below the next entry's key. The
/// first entry of a branch has an empty key and inherits its lower bound from its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BranchEntry {
    pub key: Vec<u8>,
    pub child: PageId,
}

impl LeafEntry {
    /// Bytes this entry takes in a page, its offset slot included.
    pub(crate) fn size(&self) -> usize {
        2 + LEAF_FIXED
            + self.key.len()
            + match &self.value {
                Value::Inline(v) => v.len(),
                Value::Overflow { .. } => 8,
            }
    }
}

impl BranchEntry {
    /// Bytes this entry takes in a page, its offset slot included.
    pub(crate) fn size(&self) -> usize {
        2 + BRANCH_FIXED + self.key.len()
    }
}

/// A node being modified by a write transaction.
///
/// Invariant (checked by `encode`): once the transaction is done with it, it has at least one
/// entry, keys ascend, and `size() <= NODE_BODY_MAX`. While a transaction works on it, it may
/// briefly be larger (it is split then) or empty (it is removed then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Leaf(Vec<LeafEntry>),
    Branch(Vec<BranchEntry>),
}

impl Node {
    pub(crate) fn size(&self) -> usize {
        match self {
            Node::Leaf(e) => e.iter().map(LeafEntry::size).sum(),
            Node::Branch(e) => e.iter().map(BranchEntry::size).sum(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Node::Leaf(e) => e.len(),
            Node::Branch(e) => e.len(),
        }
    }

    pub(crate) fn is_leaf(&self) -> bool {
        matches!(self, Node::Leaf(_))
    }

    pub(crate) fn key(&self, i: usize) -> &[u8] {
        match self {
            Node::Leaf(e) => &e[i].key,
            Node::Branch(e) => &e[i].key,
        }
    }

    /// The page image of this node as page `id` of transaction `txn`.
    pub(crate) fn encode(&self, id: PageId, txn: u64) -> Vec<u8> {
        assert!(self.len() > 0, "node {id} is empty");
        assert!(self.size() <= NODE_BODY_MAX, "node {id} has {} bytes", self.size());
        let mut p = blank();
        put_u16(&mut p, COUNT_AT, self.len() as u16);
        let mut at = OFFSETS_AT + 2 * self.len();
        let put_bytes = |p: &mut Vec<u8>, at: &mut usize, data: &[u8]| {
            p[*at..*at + data.len()].copy_from_slice(data);
            *at += data.len();
        };
        match self {
            Node::Leaf(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    assert!(i == 0 || entries[i - 1].key < e.key, "leaf keys ascend");
                    put_u16(&mut p, OFFSETS_AT + 2 * i, at as u16);
                    put_u16(&mut p, at, e.key.len() as u16);
                    let (kind, len) = match &e.value {
                        Value::Inline(v) => (VALUE_INLINE, v.len() as u32),
                        Value::Overflow { len, .. } => (VALUE_OVERFLOW, *len),
                    };
                    p[at + 2] = kind;
                    put_u32(&mut p, at + 3, len);
                    at += LEAF_FIXED;
                    put_bytes(&mut p, &mut at, &e.key);
                    match &e.value {
                        Value::Inline(v) => put_bytes(&mut p, &mut at, v),
                        Value::Overflow { first, .. } => put_bytes(&mut p, &mut at, &first.to_le_bytes()),
                    }
                }
                seal(&mut p, Kind::Leaf, id, txn);
            }
            Node::Branch(entries) => {
                assert!(entries[0].key.is_empty(), "a branch's first entry has no key");
                for (i, e) in entries.iter().enumerate() {
                    assert!(i < 2 || entries[i - 1].key < e.key, "branch keys ascend");
                    put_u16(&mut p, OFFSETS_AT + 2 * i, at as u16);
                    put_u16(&mut p, at, e.key.len() as u16);
                    put_u64(&mut p, at + 2, e.child);
                    at += BRANCH_FIXED;
                    put_bytes(&mut p, &mut at, &e.key);
                }
                seal(&mut p, Kind::Branch, id, txn);
            }
        }
        assert!(at <= PAGE_BYTES);
        // Pair the encoder with the decoder: what we write must read back (debug builds; the
        // decoder runs on every read anyway).
        debug_assert!(NodeView::parse(Cow::Borrowed(&p), MAX_PAGE_COUNT).is_ok());
        p
    }
}

/// The page image of one overflow page.
pub(crate) fn encode_overflow(id: PageId, txn: u64, next: PageId, data: &[u8]) -> Vec<u8> {
    assert!(!data.is_empty() && data.len() <= OVERFLOW_DATA_BYTES);
    let mut p = blank();
    put_u64(&mut p, OVERFLOW_NEXT_AT, next);
    put_u32(&mut p, OVERFLOW_LEN_AT, data.len() as u32);
    p[OVERFLOW_DATA_AT..OVERFLOW_DATA_AT + data.len()].copy_from_slice(data);
    seal(&mut p, Kind::Overflow, id, txn);
    p
}

/// The next page (0 for none) and the data of an overflow page `check_header` accepted.
pub(crate) fn parse_overflow(p: &[u8], page_count: u64) -> Result<(PageId, &[u8]), String> {
    if p.len() != PAGE_BYTES {
        return Err(format!("page is {} bytes", p.len()));
    }
    let next = get_u64(p, OVERFLOW_NEXT_AT);
    if next != 0 && !(FIRST_DATA_PAGE..page_count).contains(&next) {
        return Err(format!("next overflow page {next} outside the file"));
    }
    let len = get_u32(p, OVERFLOW_LEN_AT) as usize;
    if len == 0 || len > OVERFLOW_DATA_BYTES {
        return Err(format!("overflow data length {len} out of bounds"));
    }
    Ok((next, &p[OVERFLOW_DATA_AT..OVERFLOW_DATA_AT + len]))
}

/// The page image of one free-list page.
pub(crate) fn encode_freelist(id: PageId, txn: u64, next: PageId, ids: &[PageId]) -> Vec<u8> {
    assert!(ids.len() <= FREE_IDS_MAX);
    let mut p = blank();
    put_u64(&mut p, FREE_NEXT_AT, next);
    put_u32(&mut p, FREE_COUNT_AT, ids.len() as u32);
    for (i, id) in ids.iter().enumerate() {
        put_u64(&mut p, FREE_IDS_AT + 8 * i, *id);
    }
    seal(&mut p, Kind::FreeList, id, txn);
    p
}

/// The next page (0 for none) and the ids of a free-list page `check_header` accepted.
pub(crate) fn parse_freelist(p: &[u8], page_count: u64) -> Result<(PageId, Vec<PageId>), String> {
    if p.len() != PAGE_BYTES {
        return Err(format!("page is {} bytes", p.len()));
    }
    let in_file = |id: PageId| (FIRST_DATA_PAGE..page_count).contains(&id);
    let next = get_u64(p, FREE_NEXT_AT);
    if next != 0 && !in_file(next) {
        return Err(format!("next free-list page {next} outside the file"));
    }
    let count = get_u32(p, FREE_COUNT_AT) as usize;
    if count > FREE_IDS_MAX {
        return Err(format!("free id count {count} out of bounds"));
    }
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let id = get_u64(p, FREE_IDS_AT + 8 * i);
        if !in_file(id) {
            return Err(format!("free page {id} outside the file"));
        }
        ids.push(id);
    }
    Ok((next, ids))
}

/// Runs every page decoder on arbitrary bytes, as they are and with the checksum made to match
/// (so that the structural checks behind it run too). For the fuzz target and the property
/// test: it must return, never panic, whatever the bytes.
pub fn fuzz_decode_page(bytes: &[u8]) -> Result<(), String> {
    let mut fixed = bytes.to_vec();
    if fixed.len() >= 4 {
        let crc = crc32fast::hash(&fixed[4..]);
        put_u32(&mut fixed, 0, crc);
    }
    let _ = decode_any(bytes);
    decode_any(&fixed)
}

fn decode_any(p: &[u8]) -> Result<(), String> {
    if p.len() != PAGE_BYTES {
        return Err(format!("page is {} bytes", p.len()));
    }
    let id = get_u64(p, 8);
    let kind = kind_of(p).ok_or("unknown kind")?;
    if kind == Kind::Meta {
        return Meta::decode(p, id).map(|_| ()).map_err(|e| format!("{e:?}"));
    }
    check_header(p, id, kind, u64::MAX)?;
    match kind {
        Kind::Meta => unreachable!("handled above"),
        Kind::Branch | Kind::Leaf => {
            let view = NodeView::parse(Cow::Borrowed(p), MAX_PAGE_COUNT)?;
            for i in 0..view.len() {
                let _ = view.key(i);
                if view.is_leaf() {
                    let _ = view.value(i);
                } else {
                    let _ = view.child(i);
                }
            }
            let node = view.to_node();
            assert!(node.size() <= NODE_BODY_MAX, "a parsed node fits its page");
            Ok(())
        }
        Kind::Overflow => parse_overflow(p, MAX_PAGE_COUNT).map(|_| ()),
        Kind::FreeList => parse_freelist(p, MAX_PAGE_COUNT).map(|_| ()),
    }
}
