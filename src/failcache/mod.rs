//! The fail-cache: bodies an endpoint could not deliver, kept on disk and resent later.
//!
//! In: a body that still failed after the sender's retries with a retryable error
//! (transport error, 429, 5xx except 501). Out: the same bytes, resent in order with
//! `X-Fail-Cache-Retry: 1` to **that endpoint only** (DataKit resent to all endpoints and
//! duplicated data, `lessons.md` #4), until they are delivered, refused, too old, or pushed
//! out by newer ones when the cache is full.
//!
//! Storage is one [redb] database per endpoint: an embedded, ACID, crash-safe B-tree
//! store (copy-on-write pages with checksums, `fsync` on each commit), so a crash leaves
//! either the whole record or none of it. Each record also carries its own format
//! version and CRC-32, so a damaged record is skipped and counted without losing the rest;
//! a database that cannot be opened at all is moved aside and a new one started, so the
//! daemon always starts. After an I/O error (a full disk, say) the file is closed and opened
//! again by itself, with backoff ([`store`]), so the cache recovers without a restart once
//! the disk takes writes again. On a full disk a new body makes room by shedding the oldest
//! records (counted as `disk_full`), with the help of a small reserve file ([`reserve`]). Records are written with format version 1; a later version will
//! read version-1 records too, so an upgrade never asks users to delete their cache
//! (DataKit's did, `lessons.md` #7).

#[cfg(test)]
pub(crate) mod faulty;
mod record;
pub(crate) mod reserve;
pub(crate) mod store;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use reserve::{Reserve, Room};
use store::{Counters, Failure, Opener, Store};

pub(crate) use record::now_ms;
pub use record::{Decoded, Record};

use crate::metrics::Metrics;

const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");

/// Sheds on a full disk before a new body is given up on (each round frees at least
/// [`SHED_MIN_BYTES`] or twice the body): bounded, so a disk that stays full whatever is
/// deleted (another program filling it) costs a few reopens per body, not a loop.
const MAX_SHED_ROUNDS: usize = 4;
/// Shedding frees at least this much, so the next bodies fit in the freed pages without a
/// reopen each (a shed reopens the file).
const SHED_MIN_BYTES: u64 = 64 * 1024;

/// The time, in ms since the Unix epoch, that record ages are measured against: the
/// system clock, or one a test advances.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Limits of one endpoint's cache.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of records kept; past it the oldest are dropped.
    pub max_capacity: u64,
    /// Records older than this are dropped instead of resent.
    pub drop_expired_after: Duration,
    /// On a full disk, drop the oldest records to keep a new one (`disk_full`). Off when
    /// the WAL is on: the records in the cache were acknowledged and have left the WAL, so
    /// shedding them would lose them; a body the cache cannot take stays in the WAL instead
    /// (the endpoint holds it and sends it again).
    pub shed_on_full_disk: bool,
}

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
#[error("fail-cache {path}: {message}")]
pub struct Error {
    path: PathBuf,
    message: String,
    /// Another holder (e.g. the endpoint this one replaces) still has the file open.
    busy: bool,
}

impl Error {
    /// Whether the file is only held by another holder for now (worth trying again).
    pub fn is_busy(&self) -> bool {
        self.busy
    }
}

/// Why a redb file could not be opened.
pub(crate) struct OpenFailure {
    busy: bool,
    message: String,
}

impl OpenFailure {
    /// Whether another holder has the file open (worth trying again).
    pub(crate) fn is_busy(&self) -> bool {
        self.busy
    }
}

impl From<OpenFailure> for String {
    fn from(f: OpenFailure) -> String {
        f.message
    }
}

/// One endpoint's fail-cache.
pub struct FailCache {
    path: PathBuf,
    store: Store,
    limits: Limits,
    /// The endpoint, as its metrics label it (token redacted).
    label: String,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    clock: Clock,
    reserve: Reserve,
}

#[derive(Default)]
struct State {
    next: u64,
    records: u64,
    bytes: u64,
    /// The record being resent (from [`FailCache::head`] until it is removed or
    /// [`FailCache::retry_later`]): not evicted meanwhile, or a body that is delivered
    /// would also be counted as dropped.
    in_flight: Option<u64>,
    /// Records delivered (or refused, or skipped) whose removal has not been committed yet,
    /// e.g. because the disk is full: never handed out again by [`FailCache::head`], and
    /// removed with the next write that succeeds. Without this, a body delivered while its
    /// removal failed was resent at every retry (one was delivered 77 times). Kept in memory
    /// only: after a crash such a body is resent once more (at least once, as the WAL).
    settled: BTreeSet<u64>,
    /// The last shed could not commit (the disk gives no room even so): until a write
    /// succeeds, pushes wait for the store's backoff instead of reopening it at once.
    shed_failed: bool,
}

/// What happened to the oldest record when it was looked at.
pub enum Head {
    /// Empty.
    Empty,
    /// The record to resend next, and its key for [`FailCache::remove`].
    Ready(u64, Record),
}

impl FailCache {
    /// Opens (or creates) the cache at `path`. A file that is not a readable database is
    /// moved aside to `<path>.corrupt-<unix time>` and a new cache started (counted).
    pub fn open(
        path: &Path,
        limits: Limits,
        label: String,
        metrics: Arc<Metrics>,
    ) -> Result<FailCache, Error> {
        FailCache::open_with(
            path,
            limits,
            label,
            metrics,
            Arc::new(open_or_move_aside),
            None,
        )
    }

    /// [`FailCache::open`], with the database opened (and reopened) by `opener`, and the
    /// reserve's writes limited by `room` (tests: a disk of a fixed size).
    pub(crate) fn open_with(
        path: &Path,
        limits: Limits,
        label: String,
        metrics: Arc<Metrics>,
        opener: Opener,
        room: Option<Room>,
    ) -> Result<FailCache, Error> {
        let err = |message: String| Error {
            path: path.to_path_buf(),
            message,
            busy: false,
        };
        if let Some(dir) = path.parent() {
            private_dir(dir).map_err(|e| err(e.to_string()))?;
        }
        let clock: Clock = Arc::new(record::now_ms);
        let (store, moved_aside) = Store::open(path, opener, clock.clone()).map_err(|f| Error {
            path: path.to_path_buf(),
            busy: f.busy,
            message: f.message,
        })?;
        let store = store.counted(Counters {
            metrics: metrics.clone(),
            store: "failcache",
            name: label.clone(),
        });
        if moved_aside {
            metrics
                .failcache_dropped_total
                .with_label_values(&[&label, "corrupt_file"])
                .inc();
        }
        let cache = FailCache {
            path: path.to_path_buf(),
            store,
            limits,
            label,
            metrics,
            state: Mutex::new(State::default()),
            clock,
            reserve: Reserve::new(path, room),
        };
        cache.load_state().map_err(err)?;
        cache.reserve.fill();
        Ok(cache)
    }

    /// Counts what is on disk (at open).
    fn load_state(&self) -> Result<(), String> {
        let st = self.store.with(true, |db| {
            let txn = db.begin_write()?;
            let mut st = State::default();
            {
                let table = txn.open_table(BODIES)?;
                for entry in table.iter()? {
                    let (k, v) = entry?;
                    st.next = st.next.max(k.value() + 1);
                    st.records += 1;
                    st.bytes += v.value().len() as u64;
                }
            }
            txn.commit()?;
            Ok(st)
        })?;
        *self.lock() = st;
        self.publish();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Measures record ages against `clock` instead of the system clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> FailCache {
        self.store.clock = clock.clone();
        self.clock = clock;
        self
    }

    /// I/O errors seen, and reopens after them, since open (tests and diagnostics).
    pub fn storage_errors(&self) -> (u64, u64) {
        (self.store.io_errors(), self.store.reopens())
    }

    /// Records and bytes held now.
    pub fn len(&self) -> (u64, u64) {
        let st = self.lock();
        (st.records, st.bytes)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len().0 == 0
    }

    fn publish(&self) {
        let st = self.lock();
        let m = &self.metrics;
        m.failcache_records
            .with_label_values(&[&self.label])
            .set(st.records as i64);
        m.failcache_disk_bytes
            .with_label_values(&[&self.label])
            .set(st.bytes as i64);
    }

    fn drop_count(&self, reason: &str, record: Option<&Record>) {
        self.metrics
            .failcache_dropped_total
            .with_label_values(&[&self.label, reason])
            .inc();
        if let Some(r) = record {
            self.metrics
                .dropped_points_total
                .with_label_values(&[r.category.name(), &format!("failcache_{reason}")])
                .inc_by(r.points);
        }
    }

    fn err(&self, message: String) -> Error {
        Error {
            path: self.path.clone(),
            message,
            busy: false,
        }
    }

    /// Appends a record, durably (the commit is fsynced), then drops the oldest records
    /// while the cache is over `max_capacity`. Settled records still on disk go first.
    ///
    /// On a full disk the oldest records are shed to make room (counted as `disk_full`) and
    /// the push is tried again, up to [`MAX_SHED_ROUNDS`] times; the error returned means the
    /// body was not stored (the caller counts it as `write_error`). Each body is so either
    /// kept or counted once, never both: a shed commits before the retry, and only records
    /// it removed are counted.
    pub fn push(&self, record: &Record) -> Result<(), Error> {
        let result = self.try_push(record);
        if result.is_err() {
            // The record only: its points are counted by the caller, which drops the body
            // (`dataway_dropped_points_total{reason="failcache_write_error"}`).
            self.drop_count("write_error", None);
        }
        result
    }

    fn try_push(&self, record: &Record) -> Result<(), Error> {
        let bytes = record.encode();
        // The state lock is held across the commits (redb has one writer anyway) and the
        // counts change only once a commit succeeded, so they always match the disk.
        let mut st = self.lock();
        let mut rounds = 0;
        let mut reopened = false;
        let (records, total, dropped) = loop {
            match self.insert(&st, &bytes) {
                Ok(done) => break done,
                // Closed by an earlier "no space" (a failed removal, say): the disk may have
                // room by now, so reopen and try before shedding anything.
                Err(f) if f.closed && f.no_space && !st.shed_failed && !reopened => {
                    reopened = true;
                    self.store.reopen_now().map_err(|e| self.err(e))?;
                }
                Err(f)
                    if f.no_space
                        && !f.closed
                        && self.limits.shed_on_full_disk
                        && rounds < MAX_SHED_ROUNDS
                        && sheddable(&st) =>
                {
                    rounds += 1;
                    let want = SHED_MIN_BYTES.max(2 * bytes.len() as u64);
                    if let Err(e) = self.shed(&mut st, want) {
                        st.shed_failed = true;
                        return Err(self.err(format!(
                            "{}; shedding the oldest records to make room failed too: {e}",
                            f.message
                        )));
                    }
                }
                Err(f) => {
                    let hint = if f.no_space {
                        "; free space on that disk, or lower max_capacity: the cache reopens its file by itself"
                    } else {
                        ""
                    };
                    return Err(self.err(format!("{}{hint}", f.message)));
                }
            }
        };
        st.shed_failed = false;
        st.next += 1;
        st.records = records;
        st.bytes = total;
        st.settled.clear();
        drop(st);
        for r in &dropped {
            self.drop_count("full", r.as_ref());
        }
        self.publish();
        // Room taken back for the next shed (after a shed, or once the disk has room again).
        self.reserve.fill();
        Ok(())
    }

    /// The push's transaction: the settled records removed, the body inserted at key
    /// `st.next`, the oldest dropped while over capacity. Returns the new counts and what
    /// was dropped; `st` is changed by the caller once this committed.
    fn insert(&self, st: &State, bytes: &[u8]) -> Result<(u64, u64, Vec<Option<Record>>), Failure> {
        let key = st.next;
        self.store.run(true, |db| {
            let (mut records, mut total) = (st.records, st.bytes);
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let mut dropped: Vec<Option<Record>> = Vec::new();
            {
                let mut table = txn.open_table(BODIES)?;
                for &k in &st.settled {
                    if let Some(v) = table.remove(k)? {
                        records -= 1;
                        total = total.saturating_sub(v.value().len() as u64);
                    }
                }
                table.insert(key, bytes)?;
                records += 1;
                total += bytes.len() as u64;
                // Over capacity: the oldest go first (the newest data is the most
                // useful), except the one being resent.
                while total > self.limits.max_capacity && records > 1 {
                    let Some(victim) = oldest_but(&table, key, st.in_flight)? else {
                        break;
                    };
                    let Some(v) = table.remove(victim)? else {
                        break;
                    };
                    let v = v.value();
                    records -= 1;
                    total = total.saturating_sub(v.len() as u64);
                    dropped.push(match Record::decode(v) {
                        Decoded::Ok(r) => Some(r),
                        _ => None,
                    });
                }
            }
            txn.commit()?;
            Ok((records, total, dropped))
        })
    }

    /// Makes room on a full disk: removes the settled records, then the oldest (except the
    /// one being resent) until `want` bytes are freed, in one transaction, and counts those
    /// as dropped (`disk_full`) once it committed.
    ///
    /// The failed push left redb latched on "previous I/O error", so the file is reopened
    /// first, at once (the backoff is for a disk that gives no room; this makes room). The
    /// reserve is deleted before that: the deleting transaction itself needs a few fresh
    /// pages, which a full disk does not have ([`reserve`] says what was measured).
    fn shed(&self, st: &mut State, want: u64) -> Result<(), String> {
        self.reserve.release();
        self.store.reopen_now()?;
        let (removed, bytes, shed) = self.store.with(true, |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let (mut removed, mut bytes) = (0u64, 0u64);
            let mut shed: Vec<Option<Record>> = Vec::new();
            {
                let mut table = txn.open_table(BODIES)?;
                for &k in &st.settled {
                    if let Some(v) = table.remove(k)? {
                        removed += 1;
                        bytes += v.value().len() as u64;
                    }
                }
                while bytes < want {
                    let Some(victim) = oldest_but(&table, u64::MAX, st.in_flight)? else {
                        break;
                    };
                    let Some(v) = table.remove(victim)? else {
                        break;
                    };
                    let v = v.value();
                    removed += 1;
                    bytes += v.len() as u64;
                    shed.push(match Record::decode(v) {
                        Decoded::Ok(r) => Some(r),
                        _ => None,
                    });
                }
            }
            txn.commit()?;
            Ok((removed, bytes, shed))
        })?;
        st.records = st.records.saturating_sub(removed);
        st.bytes = st.bytes.saturating_sub(bytes);
        st.settled.clear();
        let points: u64 = shed.iter().flatten().map(|r| r.points).sum();
        tracing::warn!(endpoint = %self.label, records = shed.len(), points, "disk full: the oldest fail-cache records dropped to make room");
        for r in &shed {
            self.drop_count("disk_full", r.as_ref());
        }
        Ok(())
    }

    /// The oldest record to resend. Damaged records and records older than
    /// `drop_expired_after` are removed on the way (logged and counted).
    pub fn head(&self) -> Result<Head, Error> {
        // Settled records left on disk by a failed removal: removed now if the disk takes
        // writes again (the store reopens itself), so they do not wait for the next push.
        if !self.lock().settled.is_empty() {
            drop(self.flush_settled());
        }
        loop {
            // Records are handed out in key order and settled one at a time, so every
            // settled key is below the next one to resend: start after the last.
            let from = self.lock().settled.last().map_or(0, |k| k + 1);
            let first = self
                .store
                .with(false, |db| {
                    let txn = db.begin_read()?;
                    let table = match txn.open_table(BODIES) {
                        Ok(t) => t,
                        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    };
                    let first = table.range(from..)?.next().transpose()?;
                    Ok(first.map(|(k, v)| (k.value(), Record::decode(v.value()))))
                })
                .map_err(|e| self.err(e))?;
            let Some(first) = first else {
                return Ok(Head::Empty);
            };
            let now = (self.clock)();
            match first {
                (key, Decoded::Ok(r)) if r.age_at(now) <= self.limits.drop_expired_after => {
                    self.lock().in_flight = Some(key);
                    return Ok(Head::Ready(key, r));
                }
                (key, Decoded::Ok(r)) => {
                    tracing::warn!(endpoint = %self.label, category = %r.category, points = r.points, age = ?r.age_at(now), "fail-cache record expired; dropped");
                    self.settle(key);
                    self.drop_count("expired", Some(&r));
                }
                (key, Decoded::Corrupt(why)) => {
                    tracing::error!(endpoint = %self.label, key, "fail-cache record damaged ({why}); skipped");
                    self.settle(key);
                    self.drop_count("corrupt", None);
                }
            }
        }
    }

    /// Settles a record and removes it, or leaves the removal for a later write (logged):
    /// it is never handed out again either way.
    fn settle(&self, key: u64) {
        if let Err(e) = self.remove(key) {
            tracing::error!(endpoint = %self.label, key, "{e}; removed once the disk takes writes again");
        }
    }

    /// Removes a record (delivered, refused or skipped). It is not handed out again even
    /// when this fails (the disk is full, say): the removal is retried with the next write.
    pub fn remove(&self, key: u64) -> Result<(), Error> {
        {
            let mut st = self.lock();
            st.settled.insert(key);
            if st.in_flight == Some(key) {
                st.in_flight = None;
            }
        }
        self.flush_settled()
    }

    /// Removes the settled records from the disk.
    fn flush_settled(&self) -> Result<(), Error> {
        let mut st = self.lock();
        let removed = self
            .store
            .with(true, |db| {
                let txn = db.begin_write()?;
                let mut removed = (0, 0);
                {
                    let mut table = txn.open_table(BODIES)?;
                    for &k in &st.settled {
                        if let Some(v) = table.remove(k)? {
                            removed.0 += 1;
                            removed.1 += v.value().len() as u64;
                        }
                    }
                }
                // Fsynced like every redb commit by default: a removal lost in a crash
                // would resend that body once more.
                txn.commit()?;
                Ok(removed)
            })
            .map_err(|e| self.err(e))?;
        st.records = st.records.saturating_sub(removed.0);
        st.bytes = st.bytes.saturating_sub(removed.1);
        st.settled.clear();
        drop(st);
        self.publish();
        self.reserve.fill();
        Ok(())
    }

    /// The resend of the head failed and waits: the head may be evicted again if the
    /// cache fills up meanwhile.
    pub fn retry_later(&self) {
        self.lock().in_flight = None;
    }

    /// Drops a record the server refused for good (a 4xx): counted, not resent.
    pub fn reject(&self, key: u64, record: &Record) -> Result<(), Error> {
        self.remove(key)?;
        self.drop_count("rejected", Some(record));
        Ok(())
    }

    /// The database file (for tests and diagnostics).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether a shed can free anything: a settled record, or one not being resent.
fn sheddable(st: &State) -> bool {
    !st.settled.is_empty() || st.records > u64::from(st.in_flight.is_some())
}

/// The oldest key below `end` that is not `in_flight`.
fn oldest_but(
    table: &redb::Table<u64, &[u8]>,
    end: u64,
    in_flight: Option<u64>,
) -> Result<Option<u64>, redb::Error> {
    for entry in table.range(..end)? {
        let k = entry?.0.value();
        if Some(k) != in_flight {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

/// The cache file of an endpoint: named by a hash of its full URL (token included: two
/// workspaces on one host are two queues), so it is found again after a restart.
pub fn file_for(dir: &Path, url_with_token: &str) -> PathBuf {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(url_with_token.as_bytes()));
    dir.join(format!("{}.redb", &h[..16]))
}

/// Opens or creates a redb file; one that cannot be opened is moved aside to
/// `<path>.corrupt-<unix time>` (kept for inspection) and a new one created, so the daemon
/// always starts. `true` when that happened.
pub(crate) fn open_or_move_aside(path: &Path) -> Result<(Database, bool), OpenFailure> {
    use redb::{DatabaseError, StorageError};
    match create_private(path) {
        Ok(db) => Ok((db, false)),
        // Only damage moves a file aside. Another process holding it, a needed redb
        // upgrade or an I/O error (permissions, no space) are reported and change nothing.
        Err(
            e @ (DatabaseError::Storage(StorageError::Corrupted(_)) | DatabaseError::RepairAborted),
        ) => move_aside(path, &e.to_string()),
        Err(DatabaseError::Storage(StorageError::Io(e)))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            move_aside(path, &e.to_string())
        }
        Err(e) => Err(OpenFailure {
            busy: matches!(e, DatabaseError::DatabaseAlreadyOpen),
            message: format!("{}: {e}", path.display()),
        }),
    }
}

/// Keeps a damaged file for inspection under a unique name and starts a new one.
fn move_aside(path: &Path, why: &str) -> Result<(Database, bool), OpenFailure> {
    let failed = |message: String| OpenFailure {
        busy: false,
        message,
    };
    let aside = path.with_extension(format!("corrupt-{}", unix_nanos()));
    tracing::error!(path = %path.display(), moved_to = %aside.display(), "damaged ({why}); starting a new file");
    std::fs::rename(path, &aside).map_err(|e| failed(e.to_string()))?;
    create_private(path)
        .map(|db| (db, true))
        .map_err(|e| failed(e.to_string()))
}

/// Makes `dir` (and any parent it has to make) mode 0700, and tightens it to 0700 if it
/// already exists: it holds customer data, whatever the umask. The fail-cache and WAL
/// directories are the daemon's own (`dataway-data/failcache`, `dataway-data/wal`); parents
/// that already exist are left as they are.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `Database::create` with the file made (or tightened to) mode 0600 first: redb would
/// create it 0666 less the umask, readable by everyone under the usual 022.
fn create_private(path: &Path) -> Result<Database, redb::DatabaseError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .and_then(|f| {
            let mode = f.metadata()?.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(())
        });
    if let Err(e) = made {
        return Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)));
    }
    Database::create(path)
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests;
