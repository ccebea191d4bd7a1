//! Tests only: a redb file whose writes fail with "no space left on device" while a switch is
//! on, to test what a full disk does without root (no tmpfs needed). Reads keep working, as
//! on a real full disk.
//!
//! Two kinds of full: [`Disk::fill`] refuses every write; [`Disk::limit`] fixes the disk's
//! size at what the redb file and its reserve file take now, as a real full disk (tmpfs)
//! does: blocks already written can be written again, growing the file is free (sparse),
//! and a write past the written extent fails unless deleting the reserve made room.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redb::backends::FileBackend;
use redb::{Builder, StorageBackend};

use super::OpenFailure;
use super::store::Opener;

/// The switch, shared by the test and every backend opened through [`opener`].
#[derive(Clone)]
pub(crate) struct Disk {
    full: Arc<AtomicBool>,
    /// Writes refused so far.
    pub(crate) refused: Arc<AtomicU64>,
    /// The disk's size in bytes ([`Disk::limit`]); `u64::MAX`: unlimited.
    capacity: Arc<AtomicU64>,
    /// The end of what was written to the redb file (its blocks taken on the disk).
    written: Arc<AtomicU64>,
}

impl Default for Disk {
    fn default() -> Disk {
        Disk {
            full: Default::default(),
            refused: Default::default(),
            capacity: Arc::new(AtomicU64::new(u64::MAX)),
            written: Default::default(),
        }
    }
}

fn no_space() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::StorageFull)
}

fn len_of(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

impl Disk {
    pub(crate) fn fill(&self) {
        self.full.store(true, Ordering::SeqCst);
    }
    /// Ends [`Disk::fill`] only (a [`Disk::limit`] stays).
    pub(crate) fn unfill(&self) {
        self.full.store(false, Ordering::SeqCst);
    }
    /// Ends both kinds of full.
    pub(crate) fn free(&self) {
        self.full.store(false, Ordering::SeqCst);
        self.capacity.store(u64::MAX, Ordering::SeqCst);
    }
    /// The disk is full now: its size is what the file at `cache` and its reserve take.
    pub(crate) fn limit(&self, cache: &Path) {
        let used = self.written.load(Ordering::SeqCst) + len_of(&super::reserve::path_for(cache));
        self.capacity.store(used, Ordering::SeqCst);
    }
    fn check(&self) -> std::io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Err(no_space())
        } else {
            Ok(())
        }
    }
    /// Whether `more` bytes fit beside the redb file and the reserve at `reserve`.
    fn fits(&self, end_written: u64, reserve: &Path, more: u64) -> bool {
        end_written
            .saturating_add(len_of(reserve))
            .saturating_add(more)
            <= self.capacity.load(Ordering::SeqCst)
    }
    /// A write of `offset..end` to the redb file.
    fn check_write(&self, offset: u64, end: u64, reserve: &Path) -> std::io::Result<()> {
        self.check()?;
        let written = self.written.load(Ordering::SeqCst);
        if end <= written {
            return Ok(());
        }
        // Only what is past the written extent takes new blocks.
        if !self.fits(written.max(offset), reserve, end - written.max(offset)) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(no_space());
        }
        self.written.fetch_max(end, Ordering::SeqCst);
        Ok(())
    }
    /// What limits the reserve's writes to this disk.
    pub(crate) fn room(&self) -> super::reserve::Room {
        let disk = self.clone();
        Arc::new(move |reserve: &Path, more: u64| {
            disk.fits(disk.written.load(Ordering::SeqCst), reserve, more)
        })
    }
}

#[derive(Debug)]
struct Faulty {
    file: FileBackend,
    disk: Disk,
    /// The reserve file beside it, which takes room on the same disk.
    reserve: std::path::PathBuf,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Disk(full: {})", self.full.load(Ordering::SeqCst))
    }
}

type Bound = std::ops::Bound<u64>;

impl StorageBackend for Faulty {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        if len > self.file.len()? {
            self.disk.check()?;
        }
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.disk.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.disk
            .check_write(offset, offset + data.len() as u64, &self.reserve)?;
        self.file.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }
    fn try_lock_range(&self, s: Bound, e: Bound) -> Result<bool, redb::BackendError> {
        self.file.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound, e: Bound) -> Result<bool, redb::BackendError> {
        self.file.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound, e: Bound) -> Result<(), redb::BackendError> {
        self.file.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound, e: Bound) -> Result<(), redb::BackendError> {
        self.file.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound, e: Bound) -> Result<(), redb::BackendError> {
        self.file.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound, e: Bound) -> Result<bool, redb::BackendError> {
        self.file.query_lock_range(s, e)
    }
}

/// Opens the database on `disk` (what the stores use instead of the plain file).
pub(crate) fn opener(disk: &Disk) -> Opener {
    let disk = disk.clone();
    Arc::new(move |path: &Path| {
        let failed = |message: String| OpenFailure {
            busy: false,
            message,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| failed(e.to_string()))?;
        let backend = Faulty {
            file: FileBackend::new(file).map_err(|e| failed(e.to_string()))?,
            disk: disk.clone(),
            reserve: super::reserve::path_for(path),
        };
        Builder::new()
            .create_with_backend(backend)
            .map(|db| (db, false))
            .map_err(|e| failed(e.to_string()))
    })
}
