//! The byte stores the WAL writes through: a real file and a simulated disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// An append-mostly byte store. `sync` makes everything appended before it durable; nothing
/// appended after the last `sync` is promised to survive a crash, and it may survive torn.
pub trait Backend: Send {
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    /// Truncates to `len` bytes (recovery cuts a torn tail this way) and syncs.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Where the bytes live, for error messages.
    fn describe(&self) -> String;
}

/// A real file, synced with `fdatasync`.
pub struct FileBackend {
    file: File,
    path: PathBuf,
    len: u64,
}

impl FileBackend {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let len = file.metadata()?.len();
        let backend = FileBackend { file, path: path.to_path_buf(), len };
        if let Some(dir) = path.parent() {
            // Make the file's directory entry durable, or a crash could lose the whole file.
            File::open(dir)?.sync_all()?;
        }
        Ok(backend)
    }
}

impl Backend for FileBackend {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(self.len as usize);
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        self.file.sync_all()
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A simulated disk: keeps what has been synced (`durable`) apart from what has only been
/// written (`live`). A crash keeps the durable bytes and, of the unsynced suffix, whatever the
/// caller's fault model decides: nothing, a prefix (a torn write), or a prefix with a flipped bit.
#[derive(Debug, Clone, Default)]
pub struct SimBackend {
    live: Vec<u8>,
    durable_len: usize,
    name: String,
}

/// What survives of the unsynced suffix when a [`SimBackend`] crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashFault {
    /// Every unsynced byte is lost.
    LoseUnsynced,
    /// The first `keep` unsynced bytes reached the disk (a torn write).
    Torn { keep: usize },
    /// The first `keep` unsynced bytes reached the disk and the bit at `bit` of them flipped.
    TornFlipped { keep: usize, bit: usize },
}

impl SimBackend {
    pub fn new(name: &str) -> Self {
        SimBackend { name: name.to_string(), ..Default::default() }
    }

    pub fn unsynced_len(&self) -> usize {
        self.live.len() - self.durable_len
    }

    /// The disk as a restarted process would find it.
    pub fn crash(&self, fault: CrashFault) -> SimBackend {
        let mut bytes = self.live[..self.durable_len].to_vec();
        let unsynced = &self.live[self.durable_len..];
        match fault {
            CrashFault::LoseUnsynced => {}
            CrashFault::Torn { keep } => bytes.extend_from_slice(&unsynced[..keep.min(unsynced.len())]),
            CrashFault::TornFlipped { keep, bit } => {
                let kept = &unsynced[..keep.min(unsynced.len())];
                let start = bytes.len();
                bytes.extend_from_slice(kept);
                if !kept.is_empty() {
                    let bit = bit % (kept.len() * 8);
                    bytes[start + bit / 8] ^= 1 << (bit % 8);
                }
            }
        }
        let durable_len = bytes.len();
        SimBackend { live: bytes, durable_len, name: self.name.clone() }
    }

    /// Direct access to the bytes, for tests that corrupt a disk on purpose.
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.live
    }
}

impl Backend for SimBackend {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        Ok(self.live.clone())
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.live.extend_from_slice(data);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.durable_len = self.live.len();
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.live.truncate(len as usize);
        self.durable_len = self.live.len();
        Ok(())
    }

    fn len(&self) -> u64 {
        self.live.len() as u64
    }

    fn describe(&self) -> String {
        format!("sim:{}", self.name)
    }
}
