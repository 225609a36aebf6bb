//! The write-ahead log: every hard state and log entry the node must not forget, framed and
//! checksummed, appended and synced before anything that depends on it is acknowledged.
//!
//! Record format (little-endian):
//!
//! ```text
//! +-------------+-------------+----------+-----------------------+
//! | len: u32    | crc32: u32  | kind: u8 | payload: len bytes    |
//! +-------------+-------------+----------+-----------------------+
//! ```
//!
//! `crc32` covers `kind` and `payload`. Payloads are protobuf (`keelpb`). Recovery reads records
//! until the first one that is incomplete or fails its checksum. If no valid record follows it,
//! it is a torn tail (a write that never completed its sync) and is cut off. If a valid record
//! follows it, the damage is in the middle of the log: recovery stops with an error naming the
//! file and offset rather than serve a log with a hole in it.
//!
//! This is the walking skeleton's single-file WAL; segmentation, preallocation and chained
//! checksums come with the storage engine (issue #5).

use crate::backend::Backend;
use keel_core::pb::keelpb::{Entry, HardState, WalMetadata};
use prost::Message as _;
use std::io;
use thiserror::Error;

const HEADER_BYTES: usize = 9;
/// Bound on one record's payload. Entries are bounded by the request size limit far below this;
/// a larger length can only be damage.
pub const RECORD_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Metadata = 1,
    HardState = 2,
    Entry = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Metadata),
            2 => Some(Kind::HardState),
            3 => Some(Kind::Entry),
            _ => None,
        }
    }
}

#[derive(Debug, Error)]
pub enum WalError {
    #[error("wal {file}: corrupt record at offset {offset} with valid records after it: {reason}")]
    Corrupt { file: String, offset: u64, reason: String },
    #[error("wal {file}: i/o error: {source}")]
    Io { file: String, source: io::Error },
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Replayed {
    pub metadata: Option<WalMetadata>,
    pub hard_state: HardState,
    /// The log as last written: a later entry at an index replaces that entry and all after it.
    pub entries: Vec<Entry>,
    /// Bytes cut off as a torn tail (0 when the log ended cleanly).
    pub torn_bytes: u64,
}

pub struct Wal<B: Backend> {
    backend: B,
    /// Records encoded since the last sync: one write and one sync carry a whole batch.
    pending: Vec<u8>,
}

/// Decodes the record at the start of `buf`: `Ok(Some((kind, payload, size)))`, `Ok(None)` at the
/// clean end, `Err(reason)` for a damaged or incomplete record.
/// A decoded record: its kind, its payload, and its size on disk.
type Record<'a> = (Kind, &'a [u8], usize);

fn decode_record(buf: &[u8]) -> Result<Option<Record<'_>>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.len() < HEADER_BYTES {
        return Err(format!("incomplete header ({} bytes)", buf.len()));
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    if len > RECORD_BYTES_MAX {
        return Err(format!("record length {len} over the bound"));
    }
    if buf.len() < HEADER_BYTES + len {
        return Err(format!("record of {len} bytes extends past the end"));
    }
    let body = &buf[8..HEADER_BYTES + len];
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".to_string());
    }
    let kind = Kind::from_u8(body[0]).ok_or_else(|| format!("unknown record kind {}", body[0]))?;
    Ok(Some((kind, &body[1..], HEADER_BYTES + len)))
}

fn encode_record(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) {
    assert!(payload.len() <= RECORD_BYTES_MAX, "record of {} bytes over the bound", payload.len());
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind as u8);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    // Pair the write with a read: what we wrote must decode to what we meant.
    debug_assert!(matches!(decode_record(&out[start..]), Ok(Some((k, p, _))) if k == kind && p == payload));
}

impl<B: Backend> Wal<B> {
    /// Opens the log, recovering its contents and cutting off a torn tail.
    pub fn open(mut backend: B) -> Result<(Wal<B>, Replayed), WalError> {
        let file = backend.describe();
        let io_err = |source| WalError::Io { file: file.clone(), source };
        let bytes = backend.read_all().map_err(io_err)?;
        let mut replayed = Replayed::default();
        let mut offset = 0usize;
        loop {
            match decode_record(&bytes[offset..]) {
                Ok(None) => break,
                Ok(Some((kind, payload, size))) => {
                    let at = offset as u64;
                    let corrupt =
                        |reason: String| WalError::Corrupt { file: file.clone(), offset: at, reason };
                    apply_record(&mut replayed, kind, payload).map_err(corrupt)?;
                    offset += size;
                }
                Err(reason) => {
                    if let Some(next) = next_valid_record(&bytes, offset + 1) {
                        return Err(WalError::Corrupt {
                            file,
                            offset: offset as u64,
                            reason: format!("{reason}; a valid record follows at offset {next}"),
                        });
                    }
                    tracing::warn!(file = %file, offset, reason = %reason, "cutting off a torn WAL tail");
                    replayed.torn_bytes = (bytes.len() - offset) as u64;
                    backend.truncate(offset as u64).map_err(io_err)?;
                    break;
                }
            }
        }
        Ok((Wal { backend, pending: Vec::new() }, replayed))
    }

    pub fn append_metadata(&mut self, md: &WalMetadata) {
        encode_record(&mut self.pending, Kind::Metadata, &md.encode_to_vec());
    }

    pub fn append_hard_state(&mut self, hs: &HardState) {
        encode_record(&mut self.pending, Kind::HardState, &hs.encode_to_vec());
    }

    pub fn append_entries(&mut self, entries: &[Entry]) {
        for e in entries {
            encode_record(&mut self.pending, Kind::Entry, &e.encode_to_vec());
        }
    }

    /// Writes what was appended since the last call, in one write; with `sync`, also makes it
    /// durable. Without `sync` it reaches the disk with the next synced batch (or not at all).
    pub fn flush(&mut self, sync: bool) -> Result<(), WalError> {
        let file = self.backend.describe();
        let io_err = |source| WalError::Io { file: file.clone(), source };
        if !self.pending.is_empty() {
            self.backend.append(&self.pending).map_err(io_err)?;
            self.pending.clear();
        }
        if sync {
            self.backend.sync().map_err(io_err)?;
        }
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.backend.len() + self.pending.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
}

fn apply_record(replayed: &mut Replayed, kind: Kind, payload: &[u8]) -> Result<(), String> {
    match kind {
        Kind::Metadata => {
            let md = WalMetadata::decode(payload).map_err(|e| format!("metadata does not decode: {e}"))?;
            replayed.metadata = Some(md);
        }
        Kind::HardState => {
            replayed.hard_state =
                HardState::decode(payload).map_err(|e| format!("hard state does not decode: {e}"))?;
        }
        Kind::Entry => {
            let e = Entry::decode(payload).map_err(|e| format!("entry does not decode: {e}"))?;
            let first = replayed.entries.first().map_or(e.index, |f| f.index);
            let last = replayed.entries.last().map_or(e.index - 1, |l| l.index);
            if e.index < first || e.index > last + 1 {
                return Err(format!("entry {} does not follow the log ({first}..={last})", e.index));
            }
            replayed.entries.truncate((e.index - first) as usize);
            replayed.entries.push(e);
        }
    }
    Ok(())
}

/// The offset of the first well-formed record at or after `from`, if any.
fn next_valid_record(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).find(|&at| matches!(decode_record(&bytes[at..]), Ok(Some(_))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CrashFault, SimBackend};
    use bytes::Bytes;

    fn entry(index: u64, term: u64, data: &str) -> Entry {
        Entry { index, term, entry_type: 0, data: Bytes::copy_from_slice(data.as_bytes()) }
    }

    fn write_log(n: u64) -> SimBackend {
        let (mut wal, replayed) = Wal::open(SimBackend::new("t")).unwrap();
        assert!(replayed.entries.is_empty());
        for i in 1..=n {
            wal.append_entries(&[entry(i, 1, &format!("value-{i}"))]);
            wal.append_hard_state(&HardState { term: 1, vote: 1, commit: i });
            wal.flush(true).unwrap();
        }
        wal.backend().clone()
    }

    #[test]
    fn replays_entries_and_latest_hard_state() {
        let disk = write_log(5);
        let (_, r) = Wal::open(disk).unwrap();
        assert_eq!(r.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(r.hard_state.commit, 5);
        assert_eq!(r.torn_bytes, 0);
    }

    #[test]
    fn later_entry_replaces_the_suffix_it_conflicts_with() {
        let (mut wal, _) = Wal::open(SimBackend::new("t")).unwrap();
        wal.append_entries(&[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")]);
        wal.append_entries(&[entry(2, 2, "B")]);
        wal.flush(true).unwrap();
        let (_, r) = Wal::open(wal.backend().clone()).unwrap();
        assert_eq!(r.entries.len(), 2);
        assert_eq!((r.entries[1].term, &r.entries[1].data[..]), (2, &b"B"[..]));
    }

    #[test]
    fn unsynced_batch_is_lost_synced_ones_survive() {
        let mut disk = write_log(3);
        disk.append(&[1, 2, 3]).unwrap(); // never synced
        let (_, r) = Wal::open(disk.crash(CrashFault::LoseUnsynced)).unwrap();
        assert_eq!(r.entries.len(), 3);
        assert_eq!(r.torn_bytes, 0);
    }

    /// A write torn at every possible byte recovers to the last whole record, never further.
    #[test]
    fn torn_tail_at_every_offset_recovers_to_last_good_record() {
        let (mut wal, _) = Wal::open(write_log(3)).unwrap();
        wal.append_entries(&[entry(4, 1, "four"), entry(5, 1, "five")]);
        wal.flush(false).unwrap();
        let disk = wal.backend().clone();
        let unsynced = disk.unsynced_len();
        let mut four = Vec::new();
        encode_record(&mut four, Kind::Entry, &entry(4, 1, "four").encode_to_vec());
        for keep in 0..=unsynced {
            let (mut wal, r) = Wal::open(disk.crash(CrashFault::Torn { keep })).unwrap();
            let n = r.entries.len();
            // Whole records survive; a partial one is cut and the log is usable again.
            let whole = if keep == unsynced {
                5
            } else if keep >= four.len() {
                4
            } else {
                3
            };
            assert_eq!(n, whole, "keep {keep}");
            wal.append_entries(&[entry(n as u64 + 1, 2, "after")]);
            wal.flush(true).unwrap();
            let (_, again) = Wal::open(wal.backend().clone()).unwrap();
            assert_eq!(again.entries.len(), n + 1, "keep {keep}: appends after recovery replay");
            assert_eq!(again.torn_bytes, 0);
        }
    }

    #[test]
    fn flipped_bit_in_the_tail_is_cut_never_served() {
        let (mut wal, _) = Wal::open(write_log(2)).unwrap();
        wal.append_entries(&[entry(3, 1, "three")]);
        wal.flush(false).unwrap();
        let disk = wal.backend().clone();
        let unsynced = disk.unsynced_len();
        for bit in 0..unsynced * 8 {
            let (_, r) = Wal::open(disk.crash(CrashFault::TornFlipped { keep: unsynced, bit })).unwrap();
            assert_eq!(r.entries.len(), 2, "bit {bit}: a damaged record must not be replayed");
        }
    }

    #[test]
    fn corruption_in_the_middle_is_an_error_naming_file_and_offset() {
        let mut disk = write_log(4);
        let (_, r) = Wal::open(disk.clone()).unwrap();
        assert_eq!(r.entries.len(), 4);
        // Damage the second record (the first hard state); valid records follow it.
        let first_len =
            u32::from_le_bytes(disk.bytes_mut()[0..4].try_into().unwrap()) as usize + HEADER_BYTES;
        disk.bytes_mut()[first_len + HEADER_BYTES] ^= 0x40;
        match Wal::open(disk) {
            Err(WalError::Corrupt { file, offset, .. }) => {
                assert_eq!(file, "sim:t");
                assert_eq!(offset, first_len as u64);
            }
            Err(e) => panic!("expected a corruption error, got {e}"),
            Ok((_, r)) => panic!("corrupt WAL was served with {} entries", r.entries.len()),
        }
    }
}
