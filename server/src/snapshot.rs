//! Snapshot files: what Maintenance.Snapshot streams (and `etcdctl snapshot save` writes), and
//! how a new cluster starts from one (`keelctl snapshot restore`, etcdutl's counterpart).
//!
//! A snapshot file is Keel's own format, not etcd's bbolt database: the state machine's whole
//! image (`keelpb.FullImage`) behind a small header, zero-padded to a multiple of 512 bytes,
//! followed, as etcd 3.5 sends it, by the SHA-256 of everything before it. etcdctl checks only
//! that the size is a multiple of 512 plus 32 (its `hasChecksum`) and keeps the file whole;
//! restore verifies the digest.
//!
//! ```text
//! offset  size  field
//! 0       8     magic          "KEELSNAP"
//! 8       4     version        u32 little-endian (1)
//! 12      4     zero
//! 16      8     image_bytes    u64 little-endian: the length of the encoded FullImage
//! 24      8     applied_index  u64 little-endian: the index the image stands for
//! 32      n     the encoded keelpb.FullImage
//! 32+n    pad   zeros up to a multiple of 512 bytes
//! then    32    SHA-256 of all the bytes above
//! ```

use crate::config::Config;
use bytes::Bytes;
use clap::Parser as _;
use keel_core::pb::keelpb::{ConfState, FullImage, HardState, SnapshotMetadata, WalMetadata};
use prost::Message as _;
use runtime::backend::{FileBackend, FsDir};
use runtime::image::Image;
use runtime::wal::{Wal, WalOptions};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"KEELSNAP";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 32;
/// The payload's length is a multiple of this, so that etcdctl finds the digest after it.
pub const ALIGN_BYTES: usize = 512;
/// Bytes per SnapshotResponse, as etcd sends them (`snapshotSendBufferSize`).
pub const CHUNK_BYTES: usize = 32 * 1024;
pub const DIGEST_BYTES: usize = 32;
const _: () = assert!(CHUNK_BYTES.is_multiple_of(ALIGN_BYTES) && HEADER_BYTES < ALIGN_BYTES);

/// A snapshot's payload (header, image, padding) read in chunks without copying the image
/// into one more buffer.
#[derive(Debug, Clone)]
pub struct Payload {
    header: [u8; HEADER_BYTES],
    image: Bytes,
}

impl Payload {
    pub fn new(image: Bytes, applied_index: u64) -> Payload {
        let mut header = [0u8; HEADER_BYTES];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[16..24].copy_from_slice(&(image.len() as u64).to_le_bytes());
        header[24..32].copy_from_slice(&applied_index.to_le_bytes());
        Payload { header, image }
    }

    /// Total bytes, padding included (the digest not).
    pub fn len(&self) -> u64 {
        let raw = (HEADER_BYTES + self.image.len()) as u64;
        raw.div_ceil(ALIGN_BYTES as u64) * ALIGN_BYTES as u64
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The bytes at `[offset, offset + max)`, cut at the end.
    pub fn chunk(&self, offset: u64, max: usize) -> Vec<u8> {
        let end = self.len().min(offset + max as u64);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let image_end = (HEADER_BYTES + self.image.len()) as u64;
        let mut pos = offset;
        while pos < end {
            if pos < HEADER_BYTES as u64 {
                let upto = end.min(HEADER_BYTES as u64);
                out.extend_from_slice(&self.header[pos as usize..upto as usize]);
                pos = upto;
            } else if pos < image_end {
                let upto = end.min(image_end);
                let base = HEADER_BYTES as u64;
                out.extend_from_slice(&self.image[(pos - base) as usize..(upto - base) as usize]);
                pos = upto;
            } else {
                out.resize(out.len() + (end - pos) as usize, 0);
                pos = end;
            }
        }
        out
    }
}

/// A snapshot file's payload checked and taken apart: the image and the index it stands for.
pub fn parse(payload: &[u8]) -> Result<(FullImage, u64), RestoreError> {
    let bad = |reason: &str| RestoreError::Format(reason.to_string());
    if payload.len() < HEADER_BYTES || &payload[..8] != MAGIC {
        return Err(bad("not a Keel snapshot (no KEELSNAP header)"));
    }
    let word = |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(bad(&format!("snapshot format {version}; this keel reads format {FORMAT_VERSION}")));
    }
    let (image_bytes, applied_index) = (word(16), word(24));
    let image_end = (HEADER_BYTES as u64).checked_add(image_bytes).filter(|&e| e <= payload.len() as u64);
    let Some(image_end) = image_end else {
        return Err(bad("the image is longer than the file"));
    };
    if payload[image_end as usize..].iter().any(|&b| b != 0) {
        return Err(bad("non-zero bytes after the image"));
    }
    let image = FullImage::decode(&payload[HEADER_BYTES..image_end as usize])
        .map_err(|e| bad(&format!("the image does not decode: {e}")))?;
    let state_index = image.state.as_ref().map(|s| s.applied_index);
    if state_index != Some(applied_index) {
        return Err(bad("the image's state record does not match the header"));
    }
    Ok((image, applied_index))
}

#[derive(Debug, Error)]
pub enum RestoreError {
    /// etcdutl's words.
    #[error("data-dir {0:?} not empty or could not be read")]
    DataDirNotEmpty(String),
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    #[error("expected sha256 {}, got {}", go_bytes(expected), go_bytes(got))]
    HashMismatch { expected: Vec<u8>, got: Vec<u8> },
    #[error("open {path}: {}", go_io_error(source))]
    Open { path: String, source: std::io::Error },
    #[error("{0}")]
    Format(String),
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    #[error("{0}")]
    Flags(String),
    #[error("write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error(transparent)]
    Image(#[from] runtime::image::ImageError),
    #[error(transparent)]
    Wal(#[from] runtime::wal::WalError),
}

/// Bytes as Go's `%v` prints them (etcdutl's digest mismatch message): `[1 2 3]`.
fn go_bytes(b: &[u8]) -> String {
    let parts: Vec<String> = b.iter().map(u8::to_string).collect();
    format!("[{}]", parts.join(" "))
}

/// An OS error as Go prints it: `no such file or directory`, without Rust's `(os error 2)`.
fn go_io_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

/// etcdutl's `snapshot restore` flags.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub data_dir: PathBuf,
    pub wal_dir: Option<PathBuf>,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: String,
    pub skip_hash_check: bool,
}

/// Writes a fresh data directory for the first member of a new cluster started from the
/// snapshot in `file`, as etcdutl does: the keys, their revisions and the leases are kept; the
/// membership is the one `--initial-cluster` describes (ids derived as at a cluster's start);
/// the log starts anew. Like etcdutl, the restored state stands at index = number of members,
/// term 1 (where the configuration entries of a new cluster would end), so `keel` started with
/// the same flags treats the directory as its own and serves the data.
pub fn restore(file: &Path, opts: &RestoreOptions) -> Result<(), RestoreError> {
    let data_dir = &opts.data_dir;
    let dir_shown = data_dir.display().to_string();
    if data_dir.exists() && std::fs::read_dir(data_dir).map_or(true, |mut d| d.next().is_some()) {
        return Err(RestoreError::DataDirNotEmpty(dir_shown));
    }
    let mut bytes = std::fs::read(file)
        .map_err(|source| RestoreError::Open { path: file.display().to_string(), source })?;
    let has_hash = bytes.len() % ALIGN_BYTES == DIGEST_BYTES;
    if has_hash {
        let body = bytes.len() - DIGEST_BYTES;
        if !opts.skip_hash_check {
            let got = Sha256::digest(&bytes[..body]).to_vec();
            let expected = bytes[body..].to_vec();
            if got != expected {
                return Err(RestoreError::HashMismatch { expected, got });
            }
        }
        bytes.truncate(body);
    } else if !opts.skip_hash_check {
        return Err(RestoreError::MissingHash);
    }
    let (mut image, _) = parse(&bytes)?;
    drop(bytes);

    // The new membership, with the ids etcd derives at a cluster's start.
    let config = Config::try_parse_from([
        "keel".to_string(),
        format!("--name={}", opts.name),
        format!("--data-dir={dir_shown}"),
        format!("--initial-cluster={}", opts.initial_cluster),
        format!("--initial-cluster-token={}", opts.initial_cluster_token),
        format!("--initial-advertise-peer-urls={}", opts.initial_advertise_peer_urls),
    ])
    .map_err(|e| RestoreError::Flags(e.to_string()))?;
    let resolved = config.resolve()?;
    let mut voters: Vec<u64> = resolved.initial_members.iter().map(|m| m.id).collect();
    voters.sort_unstable();
    let conf_state = ConfState { voters, learners: Vec::new() };
    let index = resolved.initial_members.len() as u64;
    const TERM: u64 = 1;
    let state = image.state.as_mut().ok_or_else(|| RestoreError::Format("no state record".into()))?;
    state.applied_index = index;
    state.applied_term = TERM;
    state.conf_state = Some(conf_state.clone());
    state.members = resolved.initial_members.clone();
    state.removed_members.clear();
    // Request ids de-duplicate retried proposals of the old cluster; none can reach this one.
    state.recent_ids.clear();

    let write_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| RestoreError::Write { path, source }
    };
    let snap_dir = data_dir.join("member").join("snap");
    let wal_dir = opts.wal_dir.clone().unwrap_or_else(|| data_dir.join("member").join("wal"));
    std::fs::create_dir_all(&snap_dir).map_err(write_err(&snap_dir))?;
    let db_path = snap_dir.join("db");
    let img = Image::open(FileBackend::open(&db_path).map_err(write_err(&db_path))?)?;
    let meta = keel_core::pb::keelpb::SnapshotMetadata {
        conf_state: Some(conf_state.clone()),
        index: state.applied_index,
        term: state.applied_term,
    };
    img.install(&image.encode_to_vec(), &meta, keel_core::lease::LessorConfig::default())?;
    drop(image);
    FsDir::open(&snap_dir)
        .and_then(|mut d| runtime::backend::Dir::sync(&mut d))
        .map_err(write_err(&snap_dir))?;

    // The log starts at the image: metadata, hard state and the snapshot point, made durable
    // only after the image is (the order recovery relies on).
    let (mut wal, _) = Wal::open(FsDir::open(&wal_dir).map_err(write_err(&wal_dir))?, WalOptions::default())?;
    wal.append_metadata(&WalMetadata {
        member_id: resolved.member_id,
        cluster_id: resolved.cluster_id,
        name: opts.name.clone(),
    });
    wal.append_hard_state(&HardState { term: TERM, vote: 0, commit: index });
    wal.append_snapshot(&SnapshotMetadata { conf_state: Some(conf_state), index, term: TERM });
    wal.flush(true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_chunks_cover_header_image_and_padding() {
        let image = Bytes::from(vec![7u8; 1000]);
        let p = Payload::new(image, 9);
        assert_eq!(p.len(), 1536);
        let mut all = Vec::new();
        let mut offset = 0;
        while offset < p.len() {
            let c = p.chunk(offset, 100);
            offset += c.len() as u64;
            all.extend(c);
        }
        assert_eq!(all.len(), 1536);
        assert_eq!(&all[..8], MAGIC);
        assert!(all[32..1032].iter().all(|&b| b == 7));
        assert!(all[1032..].iter().all(|&b| b == 0));
        assert_eq!(all, p.chunk(0, 1 << 20));
    }

    #[test]
    fn parse_refuses_what_is_not_a_snapshot() {
        assert!(matches!(parse(b"not a snapshot at all, not at all"), Err(RestoreError::Format(_))));
        let image = FullImage {
            state: Some(keel_core::pb::keelpb::StateImage { applied_index: 4, ..Default::default() }),
            keys: Vec::new(),
        };
        let p = Payload::new(Bytes::from(image.encode_to_vec()), 4);
        let bytes = p.chunk(0, 1 << 20);
        assert_eq!(parse(&bytes).unwrap().1, 4);
        let mut wrong = bytes.clone();
        wrong[24] = 5;
        assert!(parse(&wrong).is_err());
    }
}
