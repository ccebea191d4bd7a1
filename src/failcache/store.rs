//! A redb file that reopens itself after an I/O error (used by the fail-cache and the WAL).
//!
//! In: operations on the database, as closures. Out: their results, or an error that says
//! what failed. Why: after any failed read, write or fsync (a full disk, say), redb fails
//! every later operation with "Previous I/O error occurred. Please close and re-open the
//! database" until the `Database` is dropped and opened again; without this, a disk that
//! filled up once left both stores failing until the daemon was restarted.
//!
//! After such an error the database is closed, and the next operation once a backoff has
//! passed opens it again (redb repairs a file that was not closed cleanly as it opens) and
//! checks it (`check_integrity`). Until then operations fail at once, without touching the
//! disk. The backoff doubles while reopening or writing keeps failing (250 ms up to 10 s) and
//! starts again once a write succeeds. Each error and each reopen is logged and counted
//! ([`Store::io_errors`], [`Store::reopens`], and `dataway_store_io_errors_total` /
//! `dataway_store_reopens_total` when the store was given [`Counters`]). An error that says the
//! disk is full is told apart ([`Failure::no_space`]): the fail-cache sheds its oldest records
//! then, and reopens at once ([`Store::reopen_now`]) to do it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use redb::Database;

use super::{Clock, OpenFailure};
use crate::metrics::Metrics;

/// Where a store's errors and reopens are counted: `store` is `failcache` or `wal`, `name`
/// the endpoint (fail-cache) or `wal`.
pub(crate) struct Counters {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) store: &'static str,
    pub(crate) name: String,
}

/// Why an operation failed.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    /// The disk (or the file system's quota, or the file size limit) is full: this error, or
    /// the one that closed the store.
    pub(crate) no_space: bool,
    /// The store was already closed by an earlier error (nothing was tried now).
    pub(crate) closed: bool,
}

/// Opens (or creates) the database file: [`super::open_or_move_aside`], or in tests one
/// whose storage fails on demand.
pub(crate) type Opener = Arc<dyn Fn(&Path) -> Result<(Database, bool), OpenFailure> + Send + Sync>;

/// The first wait before a reopen, and the longest.
const FIRST_BACKOFF_MS: i64 = 250;
const MAX_BACKOFF_MS: i64 = 10_000;

pub(crate) struct Store {
    path: PathBuf,
    opener: Opener,
    /// `None` while closed after an I/O error. Operations hold the read lock, a reopen the
    /// write lock: so no transaction is alive while the database is dropped and reopened.
    db: RwLock<Option<Database>>,
    health: Mutex<Health>,
    pub(crate) clock: Clock,
    io_errors: AtomicU64,
    reopens: AtomicU64,
    counters: Option<Counters>,
}

#[derive(Default)]
struct Health {
    /// Set after an I/O error: why, and when (ms, `clock`) to try reopening.
    broken: Option<(String, i64)>,
    /// The error that closed the store said the disk is full.
    no_space: bool,
    /// The wait before the next reopen after another failure.
    backoff_ms: i64,
}

/// Whether an error means the database must be closed and opened again: an I/O error, the
/// latched "previous I/O error", or redb's allocator state discarded by a failed commit.
fn needs_reopen(e: &redb::Error) -> bool {
    matches!(
        e,
        redb::Error::Io(_)
            | redb::Error::PreviousIo
            | redb::Error::DatabaseClosed
            | redb::Error::Corrupted(_)
            | redb::Error::Backend(_)
    )
}

/// Whether an error says there is no room: ENOSPC, EDQUOT (quota) or EFBIG (file size limit).
/// redb reports them as plain I/O errors, on the write or on `set_len`.
fn is_no_space(e: &redb::Error) -> bool {
    let redb::Error::Io(io) = e else {
        return false;
    };
    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
    matches!(io.kind(), StorageFull | QuotaExceeded | FileTooLarge)
        || matches!(
            io.raw_os_error(),
            Some(27 /* EFBIG */ | 28 /* ENOSPC */ | 122 /* EDQUOT */)
        )
}

impl Store {
    /// The file's size on disk now; `None` if it cannot be read (it is being reopened).
    pub(crate) fn file_size(&self) -> Option<u64> {
        std::fs::metadata(&self.path).ok().map(|m| m.len())
    }

    /// Opens the file. `moved_aside`: the file was damaged and a new one started.
    pub(crate) fn open(
        path: &Path,
        opener: Opener,
        clock: Clock,
    ) -> Result<(Store, bool), OpenFailure> {
        let (db, moved_aside) = opener(path)?;
        Ok((
            Store {
                path: path.to_path_buf(),
                opener,
                db: RwLock::new(Some(db)),
                health: Mutex::new(Health::default()),
                clock,
                io_errors: AtomicU64::new(0),
                reopens: AtomicU64::new(0),
                counters: None,
            },
            moved_aside,
        ))
    }

    /// Counts errors and reopens in `counters` from now on.
    pub(crate) fn counted(mut self, counters: Counters) -> Store {
        // The series exist from the start, at zero, so an alert can rely on them.
        let m = &counters.metrics;
        m.store_io_errors_total
            .with_label_values(&[counters.store, &counters.name]);
        for result in ["ok", "error"] {
            m.store_reopens_total
                .with_label_values(&[counters.store, &counters.name, result]);
        }
        self.counters = Some(counters);
        self
    }

    fn count_reopen(&self, result: &str) {
        if let Some(c) = &self.counters {
            c.metrics
                .store_reopens_total
                .with_label_values(&[c.store, &c.name, result])
                .inc();
        }
    }

    /// I/O errors seen since open.
    pub(crate) fn io_errors(&self) -> u64 {
        self.io_errors.load(Ordering::Relaxed)
    }

    /// Successful reopens since open.
    pub(crate) fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Relaxed)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the database (reopened first if it was closed by an error and the
    /// backoff has passed). `writes`: `f` commits, so its success proves the disk takes
    /// writes again and resets the backoff (a read succeeds on a full disk too).
    pub(crate) fn with<T>(
        &self,
        writes: bool,
        f: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, String> {
        self.run(writes, f).map_err(|f| f.message)
    }

    /// [`Store::with`], telling a full disk apart.
    pub(crate) fn run<T>(
        &self,
        writes: bool,
        f: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, Failure> {
        let closed = |message| Failure {
            message,
            no_space: self.health().no_space,
            closed: true,
        };
        self.reopen_if_due().map_err(closed)?;
        let result = {
            let db = self.db.read().unwrap_or_else(|e| e.into_inner());
            let Some(db) = db.as_ref() else {
                return Err(closed(self.closed_message()));
            };
            f(db)
        };
        match result {
            Ok(v) => {
                if writes {
                    self.health().backoff_ms = 0;
                }
                Ok(v)
            }
            Err(e) => {
                let message = e.to_string();
                // A "previous I/O error" is the one that closed the store: as full as it.
                let no_space = is_no_space(&e)
                    || (matches!(e, redb::Error::PreviousIo) && self.health().no_space);
                if needs_reopen(&e) {
                    self.failed(&message, no_space);
                }
                Err(Failure {
                    message,
                    no_space,
                    closed: false,
                })
            }
        }
    }

    /// Closes the database after an error; the next operation after the backoff reopens it.
    fn failed(&self, why: &str, no_space: bool) {
        self.io_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = &self.counters {
            c.metrics
                .store_io_errors_total
                .with_label_values(&[c.store, &c.name])
                .inc();
        }
        let mut h = self.health();
        if h.broken.is_some() {
            return; // another operation saw it first
        }
        h.no_space = no_space;
        h.backoff_ms = (h.backoff_ms * 2).clamp(FIRST_BACKOFF_MS, MAX_BACKOFF_MS);
        let at = (self.clock)() + h.backoff_ms;
        tracing::error!(path = %self.path.display(), retry_in_ms = h.backoff_ms, "storage error ({why}); closing the file to reopen it");
        h.broken = Some((why.to_string(), at));
    }

    fn closed_message(&self) -> String {
        let h = self.health();
        match &h.broken {
            Some((why, at)) => format!(
                "closed after a storage error ({why}); reopening in {} ms",
                (at - (self.clock)()).max(0)
            ),
            None => "closed".to_string(),
        }
    }

    /// Reopens the database now if it was closed by an error, without waiting for the
    /// backoff: for the fail-cache's shedding on a full disk, which cannot delete anything
    /// until the file is open again, and which makes room by deleting.
    pub(crate) fn reopen_now(&self) -> Result<(), String> {
        self.reopen(true)
    }

    /// Reopens the database if it was closed by an error and the backoff has passed.
    fn reopen_if_due(&self) -> Result<(), String> {
        self.reopen(false)
    }

    fn reopen(&self, now: bool) -> Result<(), String> {
        {
            let h = self.health();
            match &h.broken {
                None => return Ok(()),
                Some((_, at)) if !now && (self.clock)() < *at => {
                    drop(h);
                    return Err(self.closed_message());
                }
                Some(_) => {}
            }
        }
        // Waits for the operations in progress: none holds a transaction during the reopen.
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if self.health().broken.is_none() {
            return Ok(()); // another caller reopened it meanwhile
        }
        // Dropped first: the file can be open only once.
        drop(slot.take());
        let opened =
            (self.opener)(&self.path)
                .map_err(String::from)
                .and_then(|(mut db, _)| match db.check_integrity() {
                    Ok(true) => Ok(db),
                    Ok(false) => {
                        tracing::warn!(path = %self.path.display(), "repaired while reopening");
                        Ok(db)
                    }
                    Err(e) => Err(format!("check: {e}")),
                });
        let mut h = self.health();
        match opened {
            Ok(db) => {
                *slot = Some(db);
                h.broken = None;
                h.no_space = false;
                self.reopens.fetch_add(1, Ordering::Relaxed);
                self.count_reopen("ok");
                tracing::info!(path = %self.path.display(), "reopened after a storage error");
                Ok(())
            }
            Err(e) => {
                self.count_reopen("error");
                h.backoff_ms = (h.backoff_ms * 2).clamp(FIRST_BACKOFF_MS, MAX_BACKOFF_MS);
                let at = (self.clock)() + h.backoff_ms;
                tracing::error!(path = %self.path.display(), retry_in_ms = h.backoff_ms, "reopening failed: {e}");
                h.broken = Some((format!("reopening failed: {e}"), at));
                Err(format!(
                    "closed after a storage error; reopening failed ({e}), next try in {} ms",
                    h.backoff_ms
                ))
            }
        }
    }
}
