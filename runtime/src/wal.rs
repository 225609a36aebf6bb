//! The write-ahead log: every hard state and log entry the node must not forget, in segmented,
//! preallocated files of checksum-chained records, written and synced in batches before
//! anything that depends on them is acknowledged. The format is written down in
//! `docs/storage-format.md`; in short:
//!
//! ```text
//! segment file {seq:016x}-{first_index:016x}.wal, preallocated to `segment_bytes` with zeros
//! record (8-byte aligned):
//! +----------+----------+----------+-----------+---------------+---------+------------+
//! | crc: u32 | len: u32 | kind: u8 | zero: [3] | prev_crc: u32 | payload | pad to 8   |
//! +----------+----------+----------+-----------+---------------+---------+------------+
//! crc = crc32(bytes 4..16 of the header ++ payload); prev_crc = crc of the record before it
//! ```
//!
//! Each record names the checksum of the one before it, across segments, so a record is only
//! accepted where it was written: a stale record left over from before a crash does not chain.
//! Each synced batch ends with a `Commit` record carrying the batch's sequence number.
//! Recovery takes records while they are whole and chained. At the first that is not, it asks
//! whether a later batch was made durable: a whole `Commit` record further on with a sequence
//! number at least two above the last one read (batch n+2 is only written once batch n+1's sync
//! returned). If so, synced data was damaged: recovery stops with an error naming the file and
//! offset. If not, it is a torn tail from a sync that never returned: it is zeroed and the log
//! goes on from there.
//!
//! Segments roll at batch boundaries: the old one is sealed (a `Commit`, synced) before the new
//! one exists, so damage anywhere in a sealed segment is an error. Every segment begins with
//! its header, the node's metadata, the latest hard state and the snapshot point, so the oldest
//! segments can be released once a snapshot covers them.

use crate::backend::{Backend, Dir};
use keel_core::pb::keelpb::{Entry, HardState, SnapshotMetadata, WalMetadata};
use prost::Message as _;
use std::io;
use thiserror::Error;

/// The version of this format, in every segment header.
pub const FORMAT_VERSION: u32 = 2;
const HEADER_BYTES: usize = 16;
/// Bound on one record's payload. Entries are bounded by the request size limit far below this;
/// a larger length can only be damage.
pub const RECORD_BYTES_MAX: usize = 64 << 20;
/// Default size segments are preallocated to.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
const _: () = assert!(SEGMENT_BYTES_DEFAULT as usize >= 4 * HEADER_BYTES);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Segment = 1,
    Metadata = 2,
    HardState = 3,
    Entry = 4,
    Snapshot = 5,
    Commit = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Segment,
            2 => Kind::Metadata,
            3 => Kind::HardState,
            4 => Kind::Entry,
            5 => Kind::Snapshot,
            6 => Kind::Commit,
            _ => return None,
        })
    }
}

#[derive(Debug, Error)]
pub enum WalError {
    #[error("wal {file}: corrupt record at offset {offset}: {reason}")]
    Corrupt { file: String, offset: u64, reason: String },
    #[error("wal {file}: format version {found}, this Keel reads version {expected}")]
    FormatVersion { file: String, found: u32, expected: u32 },
    #[error("wal {file}: i/o error: {source}")]
    Io { file: String, source: io::Error },
}

fn io_err(file: &str) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { file: file.to_string(), source }
}

/// Knobs of the log.
#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    /// Size each segment is preallocated to; a segment rolls when the next batch would not fit.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { segment_bytes: SEGMENT_BYTES_DEFAULT }
    }
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Replayed {
    pub metadata: Option<WalMetadata>,
    pub hard_state: HardState,
    /// The point the log starts after, once a snapshot covers its beginning.
    pub snapshot: Option<SnapshotMetadata>,
    /// The log as last written after `snapshot`: a later entry at an index replaces that entry
    /// and all after it.
    pub entries: Vec<Entry>,
    /// Bytes of a torn tail that were zeroed (0 when the log ended cleanly).
    pub torn_bytes: u64,
}

/// A decoded record header and payload.
struct Record<'a> {
    crc: u32,
    prev_crc: u32,
    kind: Kind,
    payload: &'a [u8],
    size: usize,
}

fn padded(len: usize) -> usize {
    (len + 7) & !7
}

/// Decodes the record at the start of `buf`. `Ok(None)` is the clean end: an all-zero header
/// (preallocated space, possibly shorter than a header at a segment's end) or no bytes at all. `Err` is a damaged or incomplete record. The
/// chain (`prev_crc`) is for the caller to check.
fn decode_record(buf: &[u8]) -> Result<Option<Record<'_>>, String> {
    if buf[..buf.len().min(HEADER_BYTES)].iter().all(|b| *b == 0) {
        return Ok(None);
    }
    if buf.len() < HEADER_BYTES {
        return Err(format!("incomplete header ({} bytes)", buf.len()));
    }
    let word = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
    let (crc, len, prev_crc) = (word(0), word(4) as usize, word(12));
    if len > RECORD_BYTES_MAX {
        return Err(format!("record length {len} over the bound"));
    }
    if buf.len() < HEADER_BYTES + len {
        return Err(format!("record of {len} bytes extends past the end"));
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[4..HEADER_BYTES + len]);
    if h.finalize() != crc {
        return Err("checksum mismatch".to_string());
    }
    let kind = Kind::from_u8(buf[8]).ok_or_else(|| format!("unknown record kind {}", buf[8]))?;
    if buf[9..12] != [0, 0, 0] {
        return Err("reserved header bytes are not zero".to_string());
    }
    let size = (HEADER_BYTES + padded(len)).min(buf.len());
    Ok(Some(Record { crc, prev_crc, kind, payload: &buf[HEADER_BYTES..HEADER_BYTES + len], size }))
}

/// A one-line-per-record listing of every segment in `dir` (kind, offset, and the entry index,
/// term or snapshot point), for failure reports: the simulator prints it when recovery fails.
pub fn dump<D: Dir>(dir: &mut D) -> String {
    let mut out = String::new();
    let Ok(names) = dir.list() else { return "cannot list".into() };
    for name in names.into_iter().filter(|n| parse_segment_name(n).is_some()) {
        out.push_str(&format!("segment {name}\n"));
        let Ok(file) = dir.open(&name) else { continue };
        let mut buf = vec![0; file.len() as usize];
        if file.read_at(0, &mut buf).is_err() {
            continue;
        }
        let mut at = 0;
        loop {
            match decode_record(&buf[at..]) {
                Ok(Some(r)) => {
                    let what = match r.kind {
                        Kind::Entry => Entry::decode(r.payload)
                            .map(|e| format!("index {} term {}", e.index, e.term))
                            .unwrap_or_default(),
                        Kind::HardState => {
                            HardState::decode(r.payload).map(|h| format!("{h:?}")).unwrap_or_default()
                        }
                        Kind::Snapshot => SnapshotMetadata::decode(r.payload)
                            .map(|s| format!("index {} term {}", s.index, s.term))
                            .unwrap_or_default(),
                        Kind::Commit => format!(
                            "{:?}",
                            r.payload.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                        ),
                        _ => String::new(),
                    };
                    out.push_str(&format!("  {at:>8} {:?} {what}\n", r.kind));
                    at += r.size;
                }
                Ok(None) => break,
                Err(e) => {
                    out.push_str(&format!("  {at:>8} damaged: {e}\n"));
                    break;
                }
            }
        }
    }
    out
}

/// The length of `buf` up to and including its last non-zero byte (0 if all zero), scanning
/// backwards eight bytes at a time.
fn last_nonzero_end(buf: &[u8]) -> usize {
    let mut end = buf.len();
    while end >= 8 && buf[end - 8..end] == [0; 8] {
        end -= 8;
    }
    while end > 0 && buf[end - 1] == 0 {
        end -= 1;
    }
    end
}

/// The record decoder, for fuzzing: any bytes give `Ok` or `Err`, never a panic.
pub fn fuzz_decode_record(bytes: &[u8]) -> Result<bool, String> {
    decode_record(bytes).map(|r| r.is_some())
}

/// Appends one record chained to `prev_crc`; returns its crc.
fn encode_record(out: &mut Vec<u8>, kind: Kind, payload: &[u8], prev_crc: u32) -> u32 {
    assert!(payload.len() <= RECORD_BYTES_MAX, "record of {} bytes over the bound", payload.len());
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&prev_crc.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + HEADER_BYTES + padded(payload.len()), 0);
    // Pair the write with a read: what we wrote must decode to what we meant.
    debug_assert!(matches!(decode_record(&out[start..]),
        Ok(Some(r)) if r.kind == kind && r.payload == payload && r.crc == crc && r.prev_crc == prev_crc));
    crc
}

fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 16 || first.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(seq, 16).ok()?, u64::from_str_radix(first, 16).ok()?))
}

struct Segment<F> {
    seq: u64,
    name: String,
    file: F,
    /// The highest entry index written into this segment (0 if none).
    last_index: u64,
}

pub struct Wal<D: Dir> {
    dir: D,
    options: WalOptions,
    /// Oldest first; the last one is being written.
    segments: Vec<Segment<D::File>>,
    /// Where the next record goes in the last segment.
    cursor: u64,
    /// Where the last segment's own header records end: a segment holding only those never
    /// rolls (a batch larger than a segment gets one to itself).
    segment_start: u64,
    /// Checksum of the last record written: the next one chains to it.
    chain: u32,
    /// Sequence number of the last `Commit` written.
    commit_seq: u64,
    /// Records appended since the last flush, encoded at flush so that a segment roll can put
    /// the new segment's header records before them in the chain.
    pending: Vec<(Kind, Vec<u8>)>,
    /// Whether records were written since the last `Commit`.
    uncommitted: bool,
    // What a new segment repeats at its start.
    metadata: Option<WalMetadata>,
    hard_state: HardState,
    snapshot: Option<SnapshotMetadata>,
    last_index: u64,
}

/// Encodes `records` chained from `chain`, then (with `commit`) a `Commit` numbered
/// `commit_seq + 1`. Returns the bytes, the new chain and the new commit sequence.
fn encode_batch(
    records: &[(Kind, Vec<u8>)],
    commit: bool,
    chain: u32,
    commit_seq: u64,
) -> (Vec<u8>, u32, u64) {
    let mut out = Vec::with_capacity(batch_bytes(records, commit) as usize);
    let mut chain = chain;
    let mut seq = commit_seq;
    for (kind, payload) in records {
        chain = encode_record(&mut out, *kind, payload, chain);
    }
    if commit {
        seq += 1;
        chain = encode_record(&mut out, Kind::Commit, &seq.to_le_bytes(), chain);
    }
    debug_assert_eq!(out.len() as u64, batch_bytes(records, commit));
    (out, chain, seq)
}

fn batch_bytes(records: &[(Kind, Vec<u8>)], commit: bool) -> u64 {
    let commit_bytes = if commit { HEADER_BYTES + 8 } else { 0 };
    (records.iter().map(|(_, p)| HEADER_BYTES + padded(p.len())).sum::<usize>() + commit_bytes) as u64
}

impl<D: Dir> Wal<D> {
    /// Opens the log in `dir`, recovering its contents and zeroing a torn tail.
    pub fn open(mut dir: D, options: WalOptions) -> Result<(Wal<D>, Replayed), WalError> {
        let where_ = dir.describe();
        let mut names: Vec<(u64, String)> = Vec::new();
        for name in dir.list().map_err(io_err(&where_))? {
            if let Some((seq, _)) = parse_segment_name(&name) {
                names.push((seq, name));
            }
        }
        names.sort();
        for pair in names.windows(2) {
            if pair[1].0 != pair[0].0 + 1 {
                return Err(WalError::Corrupt {
                    file: format!("{where_}/{}", pair[1].1),
                    offset: 0,
                    reason: format!(
                        "segment {} follows segment {}: a segment is missing",
                        pair[1].0, pair[0].0
                    ),
                });
            }
        }
        let mut replayed = Replayed::default();
        let mut scan = Scan { chain: None, commit_seq: 0 };
        let mut segments = Vec::new();
        let mut cursor = 0;
        let count = names.len();
        for (i, (seq, name)) in names.into_iter().enumerate() {
            let file = dir.open(&name).map_err(io_err(&where_))?;
            let mut segment = Segment { seq, name, file, last_index: 0 };
            match scan_segment(&mut segment, i + 1 == count, &mut scan, &mut replayed)? {
                Some(end) => {
                    cursor = end;
                    segments.push(segment);
                }
                None => {
                    // The newest segment never got a whole header: nothing in it was durable.
                    tracing::warn!(file = %segment.file.describe(), "removing a WAL segment with a torn header");
                    let name = segment.name.clone();
                    drop(segment);
                    dir.remove(&name).map_err(io_err(&where_))?;
                    dir.sync().map_err(io_err(&where_))?;
                }
            }
        }
        finish_replay(&mut replayed, &where_)?;
        let last_index = replayed
            .entries
            .last()
            .map(|e| e.index)
            .or(replayed.snapshot.as_ref().map(|s| s.index))
            .unwrap_or(0);
        let mut wal = Wal {
            dir,
            options,
            segments,
            cursor,
            segment_start: 0,
            chain: scan.chain.unwrap_or(0),
            commit_seq: scan.commit_seq,
            pending: Vec::new(),
            uncommitted: false,
            metadata: replayed.metadata.clone(),
            hard_state: replayed.hard_state,
            snapshot: replayed.snapshot.clone(),
            last_index,
        };
        if wal.segments.is_empty() {
            wal.start_segment()?;
        }
        Ok((wal, replayed))
    }

    pub fn append_metadata(&mut self, md: &WalMetadata) {
        self.metadata = Some(md.clone());
        self.pending.push((Kind::Metadata, md.encode_to_vec()));
    }

    pub fn append_hard_state(&mut self, hs: &HardState) {
        self.hard_state = *hs;
        self.pending.push((Kind::HardState, hs.encode_to_vec()));
    }

    pub fn append_entries(&mut self, entries: &[Entry]) {
        for e in entries {
            self.pending.push((Kind::Entry, e.encode_to_vec()));
        }
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
    }

    /// Records that the state machine's durable image covers the log through `snap.index`:
    /// replay starts after it, and [`Wal::release`] may then drop the segments it covers.
    pub fn append_snapshot(&mut self, snap: &SnapshotMetadata) {
        if self.snapshot.as_ref().is_some_and(|s| s.index >= snap.index) {
            return; // The starting point only moves forward.
        }
        self.snapshot = Some(snap.clone());
        self.last_index = self.last_index.max(snap.index);
        self.pending.push((Kind::Snapshot, snap.encode_to_vec()));
    }

    /// Writes what was appended since the last call, in one write; with `sync`, ends the batch
    /// with a `Commit` record and makes it durable. Without `sync` it reaches the disk with the
    /// next synced batch (or not at all).
    pub fn flush(&mut self, sync: bool) -> Result<(), WalError> {
        if self.pending.is_empty() && !(sync && self.uncommitted) {
            return Ok(());
        }
        let size = batch_bytes(&self.pending, sync);
        if self.cursor + size > self.options.segment_bytes && self.cursor > self.segment_start {
            self.seal()?;
            self.start_segment()?;
        }
        let (bytes, chain, seq) = encode_batch(&self.pending, sync, self.chain, self.commit_seq);
        self.pending.clear();
        let segment = self.segments.last_mut().expect("a segment is open");
        let file = segment.file.describe();
        segment.file.write_at(self.cursor, &bytes).map_err(io_err(&file))?;
        crate::metrics::WAL_WRITE_BYTES.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        segment.last_index = segment.last_index.max(self.last_index);
        self.cursor += bytes.len() as u64;
        self.chain = chain;
        self.commit_seq = seq;
        self.uncommitted = !sync;
        if sync {
            let started = std::time::Instant::now();
            segment.file.sync().map_err(io_err(&file))?;
            crate::metrics::WAL_FSYNC.observe(started.elapsed());
        }
        Ok(())
    }

    /// Ends the current segment: a `Commit` for anything written but not committed, synced, so
    /// that the segment is whole before the next one exists.
    fn seal(&mut self) -> Result<(), WalError> {
        let (bytes, chain, seq) = encode_batch(&[], true, self.chain, self.commit_seq);
        let segment = self.segments.last_mut().expect("a segment is open");
        let file = segment.file.describe();
        segment.file.write_at(self.cursor, &bytes).map_err(io_err(&file))?;
        segment.file.sync().map_err(io_err(&file))?;
        self.cursor += bytes.len() as u64;
        self.chain = chain;
        self.commit_seq = seq;
        self.uncommitted = false;
        Ok(())
    }

    /// Creates, preallocates and syncs the next segment, beginning with its header and the
    /// records that make it readable on its own (metadata, hard state, snapshot point).
    fn start_segment(&mut self) -> Result<(), WalError> {
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let name = segment_name(seq, self.last_index + 1);
        let where_ = self.dir.describe();
        let mut file = self.dir.open(&name).map_err(io_err(&where_))?;
        let described = file.describe();
        file.set_len(self.options.segment_bytes).map_err(io_err(&described))?;
        let mut header = Vec::with_capacity(20);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&seq.to_le_bytes());
        header.extend_from_slice(&(self.last_index + 1).to_le_bytes());
        let mut records = vec![(Kind::Segment, header)];
        if let Some(md) = &self.metadata {
            records.push((Kind::Metadata, md.encode_to_vec()));
        }
        if self.hard_state != HardState::default() {
            records.push((Kind::HardState, self.hard_state.encode_to_vec()));
        }
        if let Some(snap) = &self.snapshot {
            records.push((Kind::Snapshot, snap.encode_to_vec()));
        }
        let (bytes, chain, seq_after) = encode_batch(&records, true, self.chain, self.commit_seq);
        file.write_at(0, &bytes).map_err(io_err(&described))?;
        file.sync().map_err(io_err(&described))?;
        self.dir.sync().map_err(io_err(&where_))?;
        self.segments.push(Segment { seq, name, file, last_index: self.last_index });
        self.cursor = bytes.len() as u64;
        self.segment_start = self.cursor;
        self.chain = chain;
        self.commit_seq = seq_after;
        self.uncommitted = false;
        Ok(())
    }

    /// Removes the oldest segments whose every entry is at or below `index`, which a durable
    /// snapshot point (appended with [`Wal::append_snapshot`] and flushed with sync) covers.
    /// The segment being written is never removed. Returns how many were removed.
    pub fn release(&mut self, index: u64) -> Result<usize, WalError> {
        let covered = self.snapshot.as_ref().is_some_and(|s| s.index >= index);
        assert!(covered, "release({index}) beyond the snapshot point {:?}", self.snapshot);
        assert!(self.pending.is_empty() && !self.uncommitted, "release before the snapshot point is durable");
        let mut max_index = 0;
        let mut doomed = 0;
        for (i, s) in self.segments.iter().enumerate().take(self.segments.len() - 1) {
            max_index = max_index.max(s.last_index);
            if max_index > index {
                break;
            }
            doomed = i + 1;
        }
        let where_ = self.dir.describe();
        for s in self.segments.drain(..doomed) {
            self.dir.remove(&s.name).map_err(io_err(&where_))?;
        }
        if doomed > 0 {
            self.dir.sync().map_err(io_err(&where_))?;
        }
        Ok(doomed)
    }

    /// Bytes the log occupies on disk (preallocated space included).
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|s| s.file.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn dir(&self) -> &D {
        &self.dir
    }
}

/// State carried from one segment's scan to the next.
struct Scan {
    /// Checksum of the last record read; `None` before the first (whose predecessor may have
    /// been in a released segment).
    chain: Option<u32>,
    commit_seq: u64,
}

/// Reads one segment's records into `replayed`. Returns where the next record goes, or `None`
/// for a newest segment without a whole header. Damage in a sealed segment, or damage in the
/// newest followed by a later durable batch, is an error; other damage is a torn tail, zeroed.
fn scan_segment<F: Backend>(
    segment: &mut Segment<F>,
    newest: bool,
    scan: &mut Scan,
    replayed: &mut Replayed,
) -> Result<Option<u64>, WalError> {
    let file = segment.file.describe();
    let mut buf = vec![0; segment.file.len() as usize];
    segment.file.read_at(0, &mut buf).map_err(io_err(&file))?;
    let mut offset = 0usize;
    let failure = loop {
        let record = match decode_record(&buf[offset..]) {
            Ok(None) => break None,
            Ok(Some(r)) => r,
            Err(reason) => break Some(reason),
        };
        if scan.chain.is_some_and(|c| c != record.prev_crc) {
            break Some("record does not chain to the one before it".to_string());
        }
        if (offset == 0) != (record.kind == Kind::Segment) {
            break Some(format!("{:?} record where the segment header belongs, or the reverse", record.kind));
        }
        apply_record(segment, scan, replayed, &record, &file, offset as u64)?;
        scan.chain = Some(record.crc);
        offset += record.size;
    };
    if let Some(reason) = &failure {
        if !newest {
            return Err(WalError::Corrupt {
                file,
                offset: offset as u64,
                reason: format!("{reason} (sealed segment)"),
            });
        }
    }
    if newest {
        // Past the end of the chain: is there a batch that was made durable after it? Only the
        // bytes up to the last non-zero one can hold a record (the rest is preallocated zeros).
        let dirty_end = offset + last_nonzero_end(&buf[offset..]);
        let mut at = offset + 8;
        while at < dirty_end {
            if let Ok(Some(r)) = decode_record(&buf[at..]) {
                if r.kind == Kind::Commit && r.payload.len() == 8 {
                    let seq = u64::from_le_bytes(r.payload.try_into().expect("8 bytes"));
                    if seq >= scan.commit_seq + 2 {
                        return Err(WalError::Corrupt {
                            file,
                            offset: offset as u64,
                            reason: format!(
                                "{}; batch {seq}, made durable later, follows at offset {at}",
                                failure.unwrap_or_else(|| "missing records".to_string())
                            ),
                        });
                    }
                }
            }
            at += 8;
        }
        if offset == 0 {
            return Ok(None);
        }
        // Zero whatever an unfinished batch left behind, so no stale bytes follow new records.
        if dirty_end > offset {
            let dirty = dirty_end - offset;
            tracing::warn!(file = %file, offset, bytes = dirty, "zeroing a torn WAL tail");
            segment.file.write_at(offset as u64, &vec![0; dirty]).map_err(io_err(&file))?;
            segment.file.sync().map_err(io_err(&file))?;
            replayed.torn_bytes = dirty as u64;
        }
    }
    Ok(Some(offset as u64))
}

fn apply_record<F>(
    segment: &mut Segment<F>,
    scan: &mut Scan,
    replayed: &mut Replayed,
    record: &Record<'_>,
    file: &str,
    offset: u64,
) -> Result<(), WalError> {
    let payload = record.payload;
    let corrupt_at = |_: &str, reason: &str| WalError::Corrupt {
        file: file.to_string(),
        offset,
        reason: reason.to_string(),
    };
    let bad = |what: &str| -> String { format!("{what} does not decode") };
    match record.kind {
        Kind::Segment => {
            if payload.len() != 20 {
                return Err(corrupt_at(file, "segment header of the wrong size"));
            }
            let version = u32::from_le_bytes(payload[0..4].try_into().expect("4 bytes"));
            if version != FORMAT_VERSION {
                return Err(WalError::FormatVersion {
                    file: file.to_string(),
                    found: version,
                    expected: FORMAT_VERSION,
                });
            }
            let seq = u64::from_le_bytes(payload[4..12].try_into().expect("8 bytes"));
            if seq != segment.seq {
                return Err(corrupt_at(
                    file,
                    &format!("header says segment {seq}, the name {}", segment.seq),
                ));
            }
        }
        Kind::Metadata => {
            replayed.metadata =
                Some(WalMetadata::decode(payload).map_err(|_| corrupt_at(file, &bad("metadata")))?);
        }
        Kind::HardState => {
            replayed.hard_state =
                HardState::decode(payload).map_err(|_| corrupt_at(file, &bad("hard state")))?;
        }
        Kind::Snapshot => {
            let snap =
                SnapshotMetadata::decode(payload).map_err(|_| corrupt_at(file, &bad("snapshot point")))?;
            if replayed.snapshot.as_ref().is_none_or(|s| s.index <= snap.index) {
                replayed.entries.retain(|e| e.index > snap.index);
                replayed.snapshot = Some(snap);
            }
        }
        Kind::Entry => {
            let e = Entry::decode(payload).map_err(|_| corrupt_at(file, &bad("entry")))?;
            if let (Some(first), Some(last)) = (replayed.entries.first(), replayed.entries.last()) {
                if e.index > last.index + 1 {
                    let what = format!(
                        "entry {} does not follow the log ({}..={})",
                        e.index, first.index, last.index
                    );
                    return Err(corrupt_at(file, &what));
                }
                // A later entry replaces that entry and all after it. One before the first entry
                // read replaces all of them: what precedes it was in released segments, covered
                // by a snapshot point later in the log (checked when replay ends).
                let keep = e.index.saturating_sub(first.index) as usize;
                replayed.entries.truncate(keep);
            }
            segment.last_index = segment.last_index.max(e.index);
            replayed.entries.push(e);
        }
        Kind::Commit => {
            let seq = u64::from_le_bytes(
                payload.try_into().map_err(|_| corrupt_at(file, "commit of the wrong size"))?,
            );
            if seq != scan.commit_seq + 1 && scan.commit_seq != 0 {
                return Err(corrupt_at(file, &format!("commit {seq} after commit {}", scan.commit_seq)));
            }
            scan.commit_seq = seq;
        }
    }
    Ok(())
}

/// Checks the replayed log is whole: it starts right after the snapshot point (or at 1).
fn finish_replay(replayed: &mut Replayed, where_: &str) -> Result<(), WalError> {
    let start = replayed.snapshot.as_ref().map_or(1, |s| s.index + 1);
    replayed.entries.retain(|e| e.index >= start);
    match replayed.entries.first() {
        Some(first) if first.index != start => Err(WalError::Corrupt {
            file: where_.to_string(),
            offset: 0,
            reason: format!(
                "the log starts at entry {} but the snapshot point is {}",
                first.index,
                start - 1
            ),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CrashFault, SimDisk, SECTOR_BYTES};
    use bytes::Bytes;

    const SMALL: WalOptions = WalOptions { segment_bytes: 4096 };
    const BIG: WalOptions = WalOptions { segment_bytes: 64 << 10 };

    /// Entry `index`'s payload in every test log, so any replayed entry can be checked.
    fn data(index: u64) -> Bytes {
        Bytes::from(format!("value-{index}-{}", "x".repeat((index % 7) as usize * 20)))
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, entry_type: 0, data: data(index) }
    }

    fn open(disk: &SimDisk, options: WalOptions) -> Result<(Wal<SimDisk>, Replayed), WalError> {
        Wal::open(disk.clone(), options)
    }

    /// A log with metadata and entries 1..=n, one synced batch each with a hard state.
    fn write_log(n: u64, options: WalOptions) -> (SimDisk, Wal<SimDisk>) {
        let disk = SimDisk::new("t");
        let (mut wal, replayed) = open(&disk, options).unwrap();
        assert!(replayed.entries.is_empty() && replayed.metadata.is_none());
        wal.append_metadata(&WalMetadata { member_id: 1, cluster_id: 2, name: "n".into() });
        for i in 1..=n {
            wal.append_entries(&[entry(i, 1)]);
            wal.append_hard_state(&HardState { term: 1, vote: 1, commit: i });
            wal.flush(true).unwrap();
        }
        (disk, wal)
    }

    /// The replayed log is entries 1..=n, each with its own payload; returns n.
    fn check_prefix(r: &Replayed) -> u64 {
        for (i, e) in r.entries.iter().enumerate() {
            assert_eq!(e.index, i as u64 + 1, "the log is gapless from 1");
            assert_eq!(e.data, data(e.index), "entry {} replayed with its own bytes", e.index);
        }
        r.entries.len() as u64
    }

    #[test]
    fn replays_entries_and_latest_hard_state() {
        let (disk, _) = write_log(5, BIG);
        let (_, r) = open(&disk, BIG).unwrap();
        assert_eq!(check_prefix(&r), 5);
        assert_eq!(r.hard_state.commit, 5);
        assert_eq!(r.metadata.unwrap().name, "n");
        assert_eq!(r.torn_bytes, 0);
    }

    #[test]
    fn later_entry_replaces_the_suffix_it_conflicts_with() {
        let disk = SimDisk::new("t");
        let (mut wal, _) = open(&disk, BIG).unwrap();
        wal.append_entries(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        wal.append_entries(&[entry(2, 2)]);
        wal.flush(true).unwrap();
        let (_, r) = open(&disk, BIG).unwrap();
        assert_eq!(check_prefix(&r), 2);
        assert_eq!(r.entries[1].term, 2);
    }

    #[test]
    fn unsynced_batch_is_lost_synced_ones_survive() {
        let (disk, mut wal) = write_log(3, BIG);
        wal.append_entries(&[entry(4, 1)]);
        wal.flush(false).unwrap();
        let (_, r) = open(&disk.crash(&mut |_, _| CrashFault::LoseUnsynced), BIG).unwrap();
        assert_eq!(check_prefix(&r), 3);
    }

    /// A batch torn at every byte recovers to a whole prefix of its records, and the log takes
    /// appends again.
    #[test]
    fn torn_tail_at_every_offset_recovers_to_a_whole_prefix() {
        let (disk, mut wal) = write_log(3, BIG);
        wal.append_entries(&[entry(4, 1), entry(5, 1)]);
        wal.flush(false).unwrap();
        let unsynced = disk.unsynced_total();
        assert!(unsynced > 0);
        for keep in 0..=unsynced {
            let crashed = disk.crash(&mut |_, _| CrashFault::Torn { keep });
            let (mut wal, r) = open(&crashed, BIG).unwrap_or_else(|e| panic!("keep {keep}: {e}"));
            let n = check_prefix(&r);
            assert!((3..=5).contains(&n), "keep {keep}: {n} entries");
            wal.append_entries(&[entry(n + 1, 2)]);
            wal.flush(true).unwrap();
            let (_, again) = open(&crashed, BIG).unwrap();
            assert_eq!(check_prefix(&again), n + 1, "keep {keep}: appends after recovery replay");
            assert_eq!(again.torn_bytes, 0);
        }
    }

    /// A flipped bit anywhere in an unsynced batch — also with whole records after it — is
    /// never served and never stops the node: that data was never acknowledged.
    #[test]
    fn flipped_bit_in_an_unsynced_batch_is_cut_never_served() {
        let (disk, mut wal) = write_log(2, BIG);
        wal.append_entries(&[entry(3, 1), entry(4, 1)]);
        wal.append_hard_state(&HardState { term: 1, vote: 1, commit: 4 });
        wal.flush(false).unwrap();
        let unsynced = disk.unsynced_total();
        for bit in 0..unsynced * 8 {
            let crashed = disk.crash(&mut |_, _| CrashFault::TornFlipped { keep: unsynced, bit });
            let (_, r) = open(&crashed, BIG).unwrap_or_else(|e| panic!("bit {bit}: {e}"));
            assert!(check_prefix(&r) >= 2, "bit {bit}");
        }
    }

    #[test]
    fn scrambled_sectors_of_unsynced_batches_recover_to_a_prefix() {
        for seed in 0..200 {
            let (disk, mut wal) = write_log(2, SMALL);
            for i in 3..=40 {
                wal.append_entries(&[entry(i, 1)]);
                wal.flush(i % 3 == 0 && i < 20).unwrap();
            }
            let crashed = disk.crash(&mut |_, _| CrashFault::Scrambled { seed });
            let (_, r) = open(&crashed, SMALL).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(check_prefix(&r) >= 18, "seed {seed}: synced batches survive");
        }
    }

    /// Damage to a record of a synced batch that later durable batches follow is an error that
    /// names the file and offset; the log is not served.
    #[test]
    fn damage_before_a_later_durable_batch_is_an_error_naming_file_and_offset() {
        let (disk, _) = write_log(4, BIG);
        let name = disk.list().unwrap()[0].clone();
        // Find the second entry record's offset by decoding the segment.
        let target = disk.with_bytes(&name, |bytes| {
            let mut at = 0;
            let mut entries = 0;
            loop {
                let r = decode_record(&bytes[at..]).unwrap().unwrap();
                if r.kind == Kind::Entry {
                    entries += 1;
                    if entries == 2 {
                        bytes[at + HEADER_BYTES] ^= 0x40;
                        return at;
                    }
                }
                at += r.size;
            }
        });
        match open(&disk, BIG) {
            Err(WalError::Corrupt { file, offset, .. }) => {
                assert_eq!(file, format!("sim:t/{name}"));
                assert_eq!(offset, target as u64);
            }
            Err(e) => panic!("expected a corruption error, got {e}"),
            Ok((_, r)) => panic!("a damaged WAL was served with {} entries", r.entries.len()),
        }
    }

    #[test]
    fn segments_roll_replay_in_order_and_are_released_once_covered() {
        let (disk, mut wal) = write_log(200, SMALL);
        let segments = wal.segment_count();
        assert!(segments > 5, "{segments} segments of 4 KiB");
        assert_eq!(disk.list().unwrap().len(), segments);
        let (_, r) = open(&disk, SMALL).unwrap();
        assert_eq!(check_prefix(&r), 200);
        assert_eq!(r.hard_state.commit, 200);

        wal.append_snapshot(&SnapshotMetadata { index: 150, term: 1, conf_state: None });
        wal.flush(true).unwrap();
        let removed = wal.release(150).unwrap();
        assert!(removed > 0 && removed < segments, "removed {removed} of {segments}");
        let (mut wal, r) = open(&disk, SMALL).unwrap();
        assert_eq!(r.snapshot.as_ref().map(|s| s.index), Some(150));
        assert_eq!(r.entries.first().map(|e| e.index), Some(151));
        assert_eq!(r.entries.last().map(|e| e.index), Some(200));
        assert_eq!(r.metadata.unwrap().member_id, 1, "metadata survives its segment's release");
        assert_eq!(r.hard_state.commit, 200);
        // And the log goes on.
        wal.append_entries(&[entry(201, 1)]);
        wal.flush(true).unwrap();
        let (_, r) = open(&disk, SMALL).unwrap();
        assert_eq!(r.entries.last().map(|e| e.index), Some(201));
    }

    /// Whole records left over from an earlier write are not replayed after newer ones: they do
    /// not chain to them.
    #[test]
    fn stale_records_after_the_end_do_not_chain() {
        let (old, mut wal) = write_log(3, BIG);
        wal.append_entries(&[entry(4, 1), entry(5, 1), entry(6, 1)]);
        wal.flush(true).unwrap();
        let (new, mut wal) = write_log(3, BIG);
        wal.append_entries(&[entry(4, 2)]);
        wal.flush(false).unwrap();
        let name = only_segment(&new);
        let stale = old.with_bytes(&name, |b| b.clone());
        new.with_bytes(&name, |b| {
            // Entry 4 has the same size in both logs, so the old entries 5 and 6 and their
            // commit sit exactly where the new log's next record would start.
            let end = b.iter().rposition(|x| *x != 0).unwrap() + 1;
            let end = padded(end);
            b[end..].copy_from_slice(&stale[end..]);
        });
        let (_, r) = open(&new, BIG).unwrap();
        assert_eq!(check_prefix(&r), 4);
        assert_eq!(r.entries[3].term, 2, "the newer entry 4, and nothing after it");
    }

    fn only_segment(disk: &SimDisk) -> String {
        let names = disk.list().unwrap();
        assert_eq!(names.len(), 1, "{names:?}");
        names[0].clone()
    }

    /// Found by the simulator: a segment size that is not a multiple of 8 leaves fewer zero
    /// bytes than a header after the last record of a full segment; that is its clean end.
    #[test]
    fn a_segment_ending_in_less_than_a_header_of_zeros_is_whole() {
        let options = WalOptions { segment_bytes: 4101 };
        let (disk, wal) = write_log(300, options);
        assert!(wal.segment_count() > 5);
        let (_, r) = open(&disk, options).unwrap();
        assert_eq!(check_prefix(&r), 300);
    }

    /// Found by a 10,000-seed simulator run (SIM_SEED=7101): after old segments are released,
    /// the first remaining one can hold an entry and then a new leader's rewrite of an earlier
    /// index; both lie below a snapshot point recorded later, and replay must accept them.
    #[test]
    fn a_rewrite_reaching_into_released_segments_replays() {
        let (disk, mut wal) = write_log(10, SMALL);
        wal.append_entries(&[entry(11, 1)]);
        wal.flush(true).unwrap();
        // Roll to a fresh segment holding entry 12 (term 1), then a rewrite from 11 (term 2).
        let segments = wal.segment_count();
        while wal.segment_count() == segments {
            wal.append_hard_state(&HardState { term: 1, vote: 1, commit: 10 });
            wal.flush(true).unwrap();
        }
        wal.append_entries(&[entry(12, 1)]);
        wal.flush(true).unwrap();
        wal.append_entries(&[entry(11, 2), entry(12, 2), entry(13, 2)]);
        wal.flush(true).unwrap();
        // The image covers 12: the segments before the one holding entry 13 can go.
        wal.append_snapshot(&SnapshotMetadata { index: 12, term: 2, conf_state: None });
        wal.flush(true).unwrap();
        let segments = wal.segment_count();
        while wal.segment_count() == segments {
            wal.append_hard_state(&HardState { term: 2, vote: 1, commit: 12 });
            wal.flush(true).unwrap();
        }
        let removed = wal.release(12).unwrap();
        assert!(removed >= 1, "{removed}");
        let (_, r) = open(&disk, SMALL).unwrap();
        assert_eq!(r.snapshot.map(|s| s.index), Some(12));
        assert_eq!(r.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), vec![(13, 2)]);
    }

    #[test]
    fn damage_in_a_sealed_segment_is_an_error() {
        let (disk, wal) = write_log(60, SMALL);
        assert!(wal.segment_count() > 2);
        let first = disk.list().unwrap()[0].clone();
        disk.with_bytes(&first, |bytes| bytes[300] ^= 1);
        assert!(matches!(open(&disk, SMALL), Err(WalError::Corrupt { .. })));
    }

    #[test]
    fn a_missing_segment_is_an_error() {
        let (mut disk, wal) = write_log(60, SMALL);
        assert!(wal.segment_count() > 2);
        let second = disk.list().unwrap()[1].clone();
        disk.remove(&second).unwrap();
        let err = open(&disk, SMALL).err().expect("a gap in the segments is refused");
        assert!(err.to_string().contains("a segment is missing"), "{err}");
    }

    #[test]
    fn another_format_version_is_refused_by_name() {
        let (disk, _) = write_log(1, BIG);
        let name = disk.list().unwrap()[0].clone();
        disk.with_bytes(&name, |bytes| {
            // Rewrite the header record with version 9, chained and checksummed properly.
            let mut out = Vec::new();
            let mut header = 9u32.to_le_bytes().to_vec();
            header.extend_from_slice(&1u64.to_le_bytes());
            header.extend_from_slice(&1u64.to_le_bytes());
            encode_record(&mut out, Kind::Segment, &header, 0);
            bytes[..out.len()].copy_from_slice(&out);
        });
        match open(&disk, BIG) {
            Err(WalError::FormatVersion { found: 9, expected: FORMAT_VERSION, .. }) => {}
            other => panic!("expected a format version error, got {:?}", other.err()),
        }
    }

    /// Crash at every sync of a workload, with every kind of fault to what was unsynced:
    /// recovery never fails, replays a gapless prefix of what was written, and keeps every
    /// entry whose batch was acknowledged (its `flush(true)` returned).
    #[test]
    fn crash_at_every_sync_keeps_every_acknowledged_entry() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};

        /// A disk that, at its `target`-th sync, saves what a crash right then would leave.
        #[derive(Clone)]
        struct Tripwire {
            disk: SimDisk,
            syncs: Arc<AtomicUsize>,
            target: usize,
            fault: CrashFault,
            saved: Arc<Mutex<Option<SimDisk>>>,
        }
        impl Tripwire {
            fn tick(&self) {
                if self.syncs.fetch_add(1, Ordering::SeqCst) + 1 == self.target {
                    let fault = self.fault;
                    *self.saved.lock().unwrap() = Some(self.disk.crash(&mut |_, _| fault));
                }
            }
        }
        struct TripFile(crate::backend::SimBackend, Tripwire);
        impl Backend for TripFile {
            fn read_at(&self, o: u64, b: &mut [u8]) -> io::Result<()> {
                self.0.read_at(o, b)
            }
            fn write_at(&mut self, o: u64, d: &[u8]) -> io::Result<()> {
                self.0.write_at(o, d)
            }
            fn set_len(&mut self, l: u64) -> io::Result<()> {
                self.0.set_len(l)
            }
            fn sync(&mut self) -> io::Result<()> {
                self.1.tick();
                self.0.sync()
            }
            fn len(&self) -> u64 {
                self.0.len()
            }
            fn describe(&self) -> String {
                self.0.describe()
            }
        }
        impl Dir for Tripwire {
            type File = TripFile;
            fn list(&self) -> io::Result<Vec<String>> {
                self.disk.list()
            }
            fn open(&mut self, name: &str) -> io::Result<TripFile> {
                Ok(TripFile(self.disk.open(name)?, self.clone()))
            }
            fn remove(&mut self, name: &str) -> io::Result<()> {
                self.disk.remove(name)
            }
            fn sync(&mut self) -> io::Result<()> {
                self.tick();
                self.disk.sync()
            }
            fn describe(&self) -> String {
                self.disk.describe()
            }
        }

        let faults = |syncs: usize| {
            let mut f = vec![
                CrashFault::LoseUnsynced,
                CrashFault::Torn { keep: SECTOR_BYTES },
                CrashFault::Torn { keep: 37 },
                CrashFault::TornFlipped { keep: usize::MAX, bit: syncs * 131 },
            ];
            f.extend((0..4).map(|s| CrashFault::Scrambled { seed: s + syncs as u64 }));
            f
        };
        // The workload: batches of 1–4 entries, every third one not synced, with a snapshot
        // point and release half-way, over 2 KiB segments so that rolls happen mid-workload.
        // It stops at the crash and returns the last entry acknowledged before it.
        let options = WalOptions { segment_bytes: 2048 };
        fn workload(wal: &mut Wal<Tripwire>, crashed: &dyn Fn() -> bool) -> u64 {
            let (mut next, mut acked) = (1, 0);
            for batch in 0..40u64 {
                let n = batch % 4 + 1;
                let entries: Vec<Entry> = (next..next + n).map(|i| entry(i, 1)).collect();
                next += n;
                wal.append_entries(&entries);
                wal.append_hard_state(&HardState { term: 1, vote: 1, commit: next - 1 });
                let sync = batch % 3 != 2;
                wal.flush(sync).unwrap();
                if crashed() {
                    return acked;
                }
                if sync {
                    acked = next - 1;
                }
                if batch == 20 {
                    wal.append_snapshot(&SnapshotMetadata { index: 30, term: 1, conf_state: None });
                    wal.flush(true).unwrap();
                    wal.release(30).unwrap();
                }
            }
            acked
        }
        // Count the syncs of a clean run first.
        let probe = Tripwire {
            disk: SimDisk::new("t"),
            syncs: Arc::default(),
            target: 0,
            fault: CrashFault::LoseUnsynced,
            saved: Arc::default(),
        };
        let (mut wal, _) = Wal::open(probe.clone(), options).unwrap();
        workload(&mut wal, &|| false);
        let total = probe.syncs.load(Ordering::SeqCst);
        assert!(total > 40, "{total} syncs");
        let mut checked = 0;
        for target in 1..=total {
            for fault in faults(target) {
                let trip = Tripwire {
                    disk: SimDisk::new("t"),
                    syncs: Arc::default(),
                    target,
                    fault,
                    saved: Arc::default(),
                };
                let (mut wal, _) = Wal::open(trip.clone(), options).unwrap();
                let acked_at_crash = workload(&mut wal, &|| trip.saved.lock().unwrap().is_some());
                let crashed = trip.saved.lock().unwrap().take().expect("the crash point was reached");
                let (_, r) = Wal::open(crashed, options)
                    .unwrap_or_else(|e| panic!("crash at sync {target} with {fault:?}: {e}"));
                let start = r.snapshot.as_ref().map_or(1, |s| s.index + 1);
                for (i, e) in r.entries.iter().enumerate() {
                    assert_eq!(e.index, start + i as u64, "sync {target} {fault:?}: gapless");
                    assert_eq!(e.data, data(e.index), "sync {target} {fault:?}: entry {} intact", e.index);
                }
                let last = r.entries.last().map_or(start - 1, |e| e.index);
                assert!(
                    last >= acked_at_crash,
                    "crash at sync {target} with {fault:?}: acknowledged through {acked_at_crash}, replayed \
                     through {last}"
                );
                checked += 1;
            }
        }
        assert!(checked > 300, "{checked} crash points");
    }

    proptest::proptest! {
        /// Any bytes: the decoder answers, it never panics.
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = decode_record(&bytes);
        }

        /// Any segment contents: open answers Ok or Err, it never panics.
        #[test]
        fn open_never_panics_on_any_segment(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
                                            keep_header in proptest::bool::ANY) {
            let (disk, _) = write_log(2, BIG);
            let name = disk.list().unwrap()[0].clone();
            disk.with_bytes(&name, |b| {
                let from = if keep_header { 40.min(b.len()) } else { 0 };
                let to = (from + bytes.len()).min(b.len());
                b[from..to].copy_from_slice(&bytes[..to - from]);
            });
            let _ = open(&disk, BIG);
        }
    }
}
