//! The byte stores Keel's storage writes through: real files in a directory, and a simulated
//! disk that can lose, tear or damage what was never synced.
//!
//! Storage code (the WAL, the B-tree) is written against [`Dir`] and [`Backend`] only, so the
//! crash tests and the simulator run the very code that ships.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// One file. `sync` makes every write before it durable; a write after the last `sync` may be
/// lost on a crash, survive in part (torn), survive damaged, or survive while an earlier
/// unsynced write does not (disks reorder).
pub trait Backend: Send {
    /// Fills `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Grows (with zeros) or shrinks the file. Durable with the next `sync`.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Where the bytes live, for error messages.
    fn describe(&self) -> String;
}

/// A directory of files. Creating or removing a file is durable once `sync` returns.
pub trait Dir: Send {
    type File: Backend;
    /// Names of the files present, sorted.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Opens a file, creating it (empty) if it does not exist.
    fn open(&mut self, name: &str) -> io::Result<Self::File>;
    fn remove(&mut self, name: &str) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    fn describe(&self) -> String;
}

/// A real file, synced with `fdatasync`.
pub struct FileBackend {
    file: File,
    path: PathBuf,
    len: u64,
}

impl FileBackend {
    /// Opens (creating if needed) the file at `path`. The caller syncs its directory.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let len = file.metadata()?.len();
        Ok(FileBackend { file, path: path.to_path_buf(), len })
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Backend for FileBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, data, offset)?;
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A directory on the real file system.
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    pub fn open(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        Ok(FsDir { path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Dir for FsDir {
    type File = FileBackend;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn open(&mut self, name: &str) -> io::Result<FileBackend> {
        FileBackend::open(&self.path.join(name))
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }

    fn sync(&mut self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// What survives of a file's unsynced writes when a simulated disk crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashFault {
    /// Every unsynced write is lost.
    LoseUnsynced,
    /// The unsynced writes reached the disk in order up to `keep` bytes in all: the write at
    /// that point is torn, later ones are lost.
    Torn { keep: usize },
    /// As `Torn`, and then one bit of the bytes that reached the disk flipped.
    TornFlipped { keep: usize, bit: usize },
    /// Each 512-byte sector of each unsynced write reached the disk or not, independently, as
    /// the bits of a generator seeded with `seed` decide (the disk reordered its writes).
    Scrambled { seed: u64 },
}

pub const SECTOR_BYTES: usize = 512;

/// One simulated file: the bytes a reader sees now, the bytes that are durable, and the writes
/// in between in the order they were made.
#[derive(Debug, Clone, Default)]
struct SimFile {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes (offset, bytes) and truncations (offset, empty + `Some(len)`) since the last sync.
    unsynced: Vec<Pending>,
    /// Created since the directory was last synced: lost entirely on a crash.
    created_unsynced: bool,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl SimFile {
    fn unsynced_bytes(&self) -> usize {
        self.unsynced.iter().map(|p| if let Pending::Write { data, .. } = p { data.len() } else { 0 }).sum()
    }

    fn crash(&self, fault: CrashFault) -> SimFile {
        let mut bytes = self.durable.clone();
        let write = |bytes: &mut Vec<u8>, offset: u64, data: &[u8]| {
            let end = offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[offset as usize..end].copy_from_slice(data);
        };
        let mut budget = match fault {
            CrashFault::LoseUnsynced => 0,
            CrashFault::Torn { keep } | CrashFault::TornFlipped { keep, .. } => keep,
            CrashFault::Scrambled { .. } => usize::MAX,
        };
        let mut rng = match fault {
            CrashFault::Scrambled { seed } => seed | 1,
            _ => 1,
        };
        let mut kept = Vec::new(); // (offset, len) of the bytes that reached the disk
        for p in &self.unsynced {
            match p {
                Pending::SetLen(len) => {
                    // Metadata: a length change persists unless nothing after it did.
                    if budget > 0 {
                        bytes.resize(*len as usize, 0);
                    }
                }
                Pending::Write { offset, data } => {
                    if let CrashFault::Scrambled { .. } = fault {
                        for (i, chunk) in data.chunks(SECTOR_BYTES).enumerate() {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            if rng & 1 == 1 {
                                let at = offset + (i * SECTOR_BYTES) as u64;
                                write(&mut bytes, at, chunk);
                            }
                        }
                        continue;
                    }
                    let n = budget.min(data.len());
                    if n > 0 {
                        write(&mut bytes, *offset, &data[..n]);
                        kept.push((*offset as usize, n));
                    }
                    budget -= n;
                }
            }
        }
        if let CrashFault::TornFlipped { bit, .. } = fault {
            let total: usize = kept.iter().map(|(_, n)| n).sum();
            if total > 0 {
                let mut bit = bit % (total * 8);
                for (offset, n) in kept {
                    if bit < n * 8 {
                        bytes[offset + bit / 8] ^= 1 << (bit % 8);
                        break;
                    }
                    bit -= n * 8;
                }
            }
        }
        SimFile { live: bytes.clone(), durable: bytes, unsynced: Vec::new(), created_unsynced: false }
    }
}

/// A simulated disk: a directory of [`SimFile`]s shared by every handle opened on it.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    inner: Arc<Mutex<BTreeMap<String, SimFile>>>,
    name: String,
}

impl SimDisk {
    pub fn new(name: &str) -> Self {
        SimDisk { inner: Arc::default(), name: name.to_string() }
    }

    fn files(&self) -> MutexGuard<'_, BTreeMap<String, SimFile>> {
        self.inner.lock().expect("sim disk lock")
    }

    /// Bytes written to `file` and not yet synced (0 for a file that does not exist).
    pub fn unsynced_len(&self, file: &str) -> usize {
        self.files().get(file).map_or(0, SimFile::unsynced_bytes)
    }

    /// Bytes written and not yet synced, over all files.
    pub fn unsynced_total(&self) -> usize {
        self.files().values().map(SimFile::unsynced_bytes).sum()
    }

    /// The disk as a restarted process would find it, each file's fate chosen by `fault`
    /// (called with the file's name and its unsynced byte count). Handles opened before the
    /// crash keep pointing at the old disk.
    pub fn crash(&self, fault: &mut dyn FnMut(&str, usize) -> CrashFault) -> SimDisk {
        let files = self.files();
        let mut after = BTreeMap::new();
        for (name, f) in files.iter() {
            if f.created_unsynced {
                continue;
            }
            let fate = if f.unsynced.is_empty() {
                CrashFault::LoseUnsynced
            } else {
                fault(name, f.unsynced_bytes())
            };
            after.insert(name.clone(), f.crash(fate));
        }
        SimDisk { inner: Arc::new(Mutex::new(after)), name: self.name.clone() }
    }

    /// A copy of the disk's current bytes as a new, independent disk with everything durable.
    pub fn snapshot(&self) -> SimDisk {
        self.crash(&mut |_, _| CrashFault::Torn { keep: usize::MAX })
    }

    /// Direct access to a file's bytes, for tests that damage a disk on purpose. The change is
    /// durable at once.
    pub fn with_bytes<R>(&self, file: &str, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let mut files = self.files();
        let file = files.get_mut(file).expect("sim file exists");
        let r = f(&mut file.live);
        file.durable = file.live.clone();
        file.unsynced.clear();
        r
    }
}

/// A handle on one file of a [`SimDisk`].
#[derive(Debug, Clone)]
pub struct SimBackend {
    disk: SimDisk,
    file: String,
}

impl SimBackend {
    /// A file on a disk of its own, for tests of one file.
    pub fn new(name: &str) -> Self {
        let mut disk = SimDisk::new(name);
        let file = disk.open(name).expect("sim open");
        disk.sync().expect("sim dir sync");
        file
    }

    pub fn disk(&self) -> &SimDisk {
        &self.disk
    }

    pub fn unsynced_len(&self) -> usize {
        self.disk.unsynced_len(&self.file)
    }

    fn with<R>(&self, f: impl FnOnce(&mut SimFile) -> R) -> io::Result<R> {
        let mut files = self.disk.files();
        match files.get_mut(&self.file) {
            Some(file) => Ok(f(file)),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("{} was removed", self.describe()))),
        }
    }
}

impl Backend for SimBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with(|f| {
            let start = offset as usize;
            match f.live.get(start..start + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    Ok(())
                }
                None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end")),
            }
        })?
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(|f| {
            let end = offset as usize + data.len();
            if f.live.len() < end {
                f.live.resize(end, 0);
            }
            f.live[offset as usize..end].copy_from_slice(data);
            f.unsynced.push(Pending::Write { offset, data: data.to_vec() });
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with(|f| {
            f.live.resize(len as usize, 0);
            f.unsynced.push(Pending::SetLen(len));
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        self.with(|f| {
            f.durable = f.live.clone();
            f.unsynced.clear();
        })
    }

    fn len(&self) -> u64 {
        self.with(|f| f.live.len() as u64).unwrap_or(0)
    }

    fn describe(&self) -> String {
        format!("sim:{}/{}", self.disk.name, self.file)
    }
}

impl Dir for SimDisk {
    type File = SimBackend;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.files().keys().cloned().collect())
    }

    fn open(&mut self, name: &str) -> io::Result<SimBackend> {
        self.files()
            .entry(name.to_string())
            .or_insert_with(|| SimFile { created_unsynced: true, ..Default::default() });
        Ok(SimBackend { disk: self.clone(), file: name.to_string() })
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        match self.files().remove(name) {
            Some(_) => Ok(()),
            None => Err(io::Error::new(io::ErrorKind::NotFound, format!("sim:{}/{name}", self.name))),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        for f in self.files().values_mut() {
            f.created_unsynced = false;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("sim:{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_with(data: &[u8]) -> (SimDisk, SimBackend) {
        let mut disk = SimDisk::new("d");
        let mut f = disk.open("f").unwrap();
        disk.sync().unwrap();
        f.write_at(0, data).unwrap();
        f.sync().unwrap();
        (disk, f)
    }

    fn read(disk: &SimDisk) -> Vec<u8> {
        let f = disk.clone().open("f").unwrap();
        let mut buf = vec![0; f.len() as usize];
        f.read_at(0, &mut buf).unwrap();
        buf
    }

    #[test]
    fn synced_writes_survive_unsynced_ones_follow_the_fault() {
        let (disk, mut f) = disk_with(b"durable");
        f.write_at(7, b"-later").unwrap();
        assert_eq!(read(&disk.crash(&mut |_, _| CrashFault::LoseUnsynced)), b"durable");
        assert_eq!(read(&disk.crash(&mut |_, _| CrashFault::Torn { keep: 3 })), b"durable-la");
        let flipped = read(&disk.crash(&mut |_, _| CrashFault::TornFlipped { keep: 6, bit: 0 }));
        assert_eq!(&flipped[..8], b"durable,", "bit 0 of '-' flipped");
    }

    #[test]
    fn scrambled_keeps_whole_sectors_in_any_subset() {
        let (disk, mut f) = disk_with(&[]);
        f.write_at(0, &vec![7u8; SECTOR_BYTES * 8]).unwrap();
        let mut seen_partial = false;
        for seed in 0..16 {
            let bytes = read(&disk.crash(&mut |_, _| CrashFault::Scrambled { seed }));
            for sector in bytes.chunks(SECTOR_BYTES) {
                assert!(sector.iter().all(|b| *b == 7) || sector.iter().all(|b| *b == 0));
            }
            seen_partial |= bytes.len() == SECTOR_BYTES * 8 && bytes.contains(&0);
        }
        assert!(seen_partial, "some seed keeps a later sector and loses an earlier one");
    }

    #[test]
    fn a_file_created_without_a_directory_sync_is_lost() {
        let mut disk = SimDisk::new("d");
        let mut f = disk.open("new").unwrap();
        f.write_at(0, b"x").unwrap();
        f.sync().unwrap();
        assert!(disk.crash(&mut |_, _| CrashFault::LoseUnsynced).list().unwrap().is_empty());
        disk.sync().unwrap();
        assert_eq!(disk.crash(&mut |_, _| CrashFault::LoseUnsynced).list().unwrap(), vec!["new"]);
    }
}
