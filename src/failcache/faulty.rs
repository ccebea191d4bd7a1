//! Tests only: a redb file whose writes fail with "no space left on device" while a switch is
//! on, to test what a full disk does without root (no tmpfs needed). Reads keep working, as
//! on a real full disk.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redb::backends::FileBackend;
use redb::{Builder, StorageBackend};

use super::OpenFailure;
use super::store::Opener;

/// The switch, shared by the test and every backend opened through [`opener`].
#[derive(Clone, Default)]
pub(crate) struct Disk {
    full: Arc<AtomicBool>,
    /// Writes refused so far.
    pub(crate) refused: Arc<AtomicU64>,
}

impl Disk {
    pub(crate) fn fill(&self) {
        self.full.store(true, Ordering::SeqCst);
    }
    pub(crate) fn free(&self) {
        self.full.store(false, Ordering::SeqCst);
    }
    fn check(&self) -> std::io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
        } else {
            Ok(())
        }
    }
}

#[derive(Debug)]
struct Faulty {
    file: FileBackend,
    disk: Disk,
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
        self.disk.check()?;
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
        };
        Builder::new()
            .create_with_backend(backend)
            .map(|db| (db, false))
            .map_err(|e| failed(e.to_string()))
    })
}
