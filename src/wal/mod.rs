//! The write-ahead log (opt-in, `[dataway.wal]`): ingest acknowledges a write only once its
//! points are on disk, so a crash (kill -9, power loss) loses nothing that was acknowledged.
//!
//! In: the points of an accepted write, before they are queued. Out: a [`Ticket`] that the
//! write's batches hold; when the last of them is done (delivered, refused, or handed to a
//! fail-cache, which is itself durable), the ticket drops and the entry is removed. A body
//! the fail-cache cannot take (a full disk) keeps its ticket: the endpoint holds it and sends
//! it again until it is delivered or cached, so a full disk delays it, never loses it. At start
//! the entries left by a previous run are replayed through the router. A crash between a
//! delivery and the removal replays that write again: delivery is at least once.
//!
//! Storage: a redb file, as the fail-cache (see there for why), with the same versioned,
//! checksummed records; appends are fsynced, removals are not (a removal lost in a crash
//! only means one more replay). After an I/O error (a full disk: appends fail, and ingest
//! answers 503) the file is closed and reopened by itself with backoff
//! ([`crate::failcache::store`]), so writes are taken again once the disk has room; removals
//! that failed meanwhile are retried with the next commit. The WAL sheds nothing on a full
//! disk (what it holds was acknowledged); errors and reopens are counted as
//! `dataway_store_io_errors_total{store="wal",name="wal"}` and `dataway_store_reopens_total`.
//!
//! Group commit: writes that arrive while an fsync is in progress wait for it to finish and
//! are then committed together, with one fsync. Each writer still returns only once its
//! own entry is on disk, but the fsyncs per second no longer cap the writes per second.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::category::Category;
use crate::failcache::store::{Counters, Opener, Store};
use crate::failcache::{Clock, Decoded, Record, open_or_move_aside};
use crate::metrics::Metrics;
use crate::point::{ParseOptions, Point, Text, encode_points, parse};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("writes");

/// The log.
pub struct Wal {
    store: Store,
    /// Entries below this id were left by a previous run (the ones to replay).
    replay_end: u64,
    appends: Mutex<Appends>,
    /// Signalled when a group has been committed (or failed).
    committed: Condvar,
    /// Entries to remove, and whether a removal task is running. Removals are grouped
    /// too: one transaction for all the entries whose writes finished meanwhile.
    removals: Mutex<(Vec<u64>, bool)>,
    /// Entries whose removal failed (the disk was full, say): removed with the next commit
    /// that succeeds, so a write delivered during the fault is not replayed at the next
    /// start.
    unremoved: Mutex<Vec<u64>>,
    /// Writes logged but not queued ([`Wal::spill`]), oldest first.
    spill: Mutex<Spill>,
    /// Told when a write is spilled (the drainer waits on it).
    spilled: tokio::sync::Notify,
    /// The most bytes of spilled writes the log holds; 0: none (writes are refused).
    max_spill: std::sync::atomic::AtomicU64,
    metrics: Option<Arc<Metrics>>,
}

/// Writes in the log that wait for room in memory (see [`Wal::spill`]).
#[derive(Default)]
struct Spill {
    /// (entry id, bytes), oldest first.
    ids: std::collections::VecDeque<(u64, u64)>,
    /// Bytes of `ids`, plus spills being committed.
    bytes: u64,
}

/// The group commit's state. Groups are numbered; writers join the open group, and one of
/// them (the leader) commits it while the next group fills up.
#[derive(Default)]
struct Appends {
    next_id: u64,
    /// Entries of the open group.
    waiting: Vec<(u64, Record)>,
    /// The number of the open group.
    open: u64,
    /// Groups below this number are finished.
    done: u64,
    /// A leader is committing group `open - 1`.
    leading: bool,
    /// Why a group failed, and how many of its writers have yet to read it.
    failed: HashMap<u64, (String, usize)>,
}

/// An entry in the log, removed when dropped. Shared by every batch of one write.
pub struct Ticket {
    wal: Option<Arc<Wal>>,
    id: u64,
    /// Set when some part of the write was given up on: the entry stays for a replay.
    keep: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wal::Ticket({})", self.id)
    }
}

impl Ticket {
    /// Leaves the entry in the log when the ticket drops, because some of the write was not
    /// delivered (at a stop: cut by the shutdown deadline, or held because the fail-cache
    /// could not take it): it is replayed at the next start.
    pub fn keep(&self) {
        self.keep.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Undoes [`Ticket::keep`]: the entry goes when the ticket drops.
    pub fn unkeep(&self) {
        self.keep.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Leaves the entry in the log, as a crash would (tests).
    #[cfg(test)]
    fn abandon(mut self) {
        self.wal = None;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(wal) = self.wal.take() else {
            return;
        };
        if self.keep.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        wal.schedule_removal(self.id);
    }
}

impl Drop for Wal {
    /// Removals whose task never ran (the runtime shut down first; its closure held the
    /// last reference) are done now, or those delivered writes would be replayed.
    fn drop(&mut self) {
        let r = self.removals.get_mut().unwrap_or_else(|e| e.into_inner());
        let ids = std::mem::take(&mut r.0);
        if !ids.is_empty()
            && let Err(e) = self.remove(&ids)
        {
            tracing::warn!(
                writes = ids.len(),
                "could not remove delivered writes from the WAL (they will be replayed): {e}"
            );
        }
    }
}

/// A write encoded for the log, not yet on disk.
pub struct Prepared(Record);

/// A page of the entries left by a previous run.
#[derive(Default)]
pub struct Page {
    pub entries: Vec<Pending>,
    /// Where the next page starts (`None`: this was the last).
    pub next: Option<u64>,
}

/// A write found in the log at start.
pub struct Pending {
    pub id: u64,
    pub category: Category,
    pub points: Vec<Point>,
}

/// Why the WAL could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct OpenError {
    message: String,
    /// Another holder has the file open: in this process, the last tasks of a daemon
    /// that was stopped, which let go of it in a moment.
    busy: bool,
}

impl OpenError {
    /// Whether the file is only held by another holder for now (worth trying again).
    pub fn is_busy(&self) -> bool {
        self.busy
    }
}

impl From<String> for OpenError {
    fn from(message: String) -> OpenError {
        OpenError {
            message,
            busy: false,
        }
    }
}

impl Wal {
    /// Opens (or creates) the log file at `path`.
    pub fn open(path: &Path) -> Result<Arc<Wal>, OpenError> {
        Wal::open_with(
            path,
            Arc::new(open_or_move_aside),
            Arc::new(crate::failcache::now_ms),
            None,
        )
    }

    /// [`Wal::open`], with its storage errors and reopens counted in `metrics`.
    pub fn open_counted(path: &Path, metrics: Arc<Metrics>) -> Result<Arc<Wal>, OpenError> {
        Wal::open_with(
            path,
            Arc::new(open_or_move_aside),
            Arc::new(crate::failcache::now_ms),
            Some(metrics),
        )
    }

    /// [`Wal::open`], with the database opened (and reopened) by `opener`, and the reopen
    /// backoff timed by `clock`.
    pub(crate) fn open_with(
        path: &Path,
        opener: Opener,
        clock: Clock,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Arc<Wal>, OpenError> {
        if let Some(dir) = path.parent() {
            crate::failcache::private_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let (mut store, _) = Store::open(path, opener, clock).map_err(|f| OpenError {
            busy: f.is_busy(),
            message: f.into(),
        })?;
        if let Some(metrics) = &metrics {
            store = store.counted(Counters {
                metrics: metrics.clone(),
                store: "wal",
                name: "wal".to_string(),
            });
        }
        let next = store.with(true, |db| {
            let txn = db.begin_write()?;
            let last = {
                let t = txn.open_table(ENTRIES)?;
                t.last()?.map(|(k, _)| k.value())
            };
            txn.commit()?;
            Ok(last.map_or(0, |k| k + 1))
        })?;
        Ok(Arc::new(Wal {
            store,
            replay_end: next,
            appends: Mutex::new(Appends {
                next_id: next,
                ..Appends::default()
            }),
            committed: Condvar::new(),
            removals: Mutex::new((Vec::new(), false)),
            unremoved: Mutex::new(Vec::new()),
            spill: Mutex::new(Spill::default()),
            spilled: tokio::sync::Notify::new(),
            max_spill: std::sync::atomic::AtomicU64::new(0),
            metrics,
        }))
    }

    /// The log's file size on disk (`dataway_wal_disk_bytes`).
    pub fn disk_size(&self) -> Option<u64> {
        self.store.file_size()
    }

    /// Lets the log hold up to `bytes` of spilled writes ([`Wal::spill`]; 0: none).
    pub fn set_spill_limit(&self, bytes: u64) {
        self.max_spill
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether some writes wait in the log only: a new write then spills too, behind
    /// them, so the oldest go out first.
    pub fn spilling(&self) -> bool {
        !self.lock_spill().ids.is_empty()
    }

    /// Whether a write could be spilled now (the spill limit is not reached).
    pub fn can_spill(&self) -> bool {
        self.lock_spill().bytes < self.max_spill.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock_spill(&self) -> std::sync::MutexGuard<'_, Spill> {
        self.spill.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spill_gauges(&self, s: &Spill) {
        if let Some(m) = &self.metrics {
            m.wal_spilled_writes.set(s.ids.len() as i64);
            m.wal_spilled_bytes.set(s.bytes as i64);
        }
    }

    /// Logs a write durably without queueing it: the WAL is the buffer when memory or the
    /// queues are full. [`Wal::next_spilled`] hands spilled writes back, oldest first, as
    /// there is room. Blocks until the entry is on disk. `Err` when the spill limit is
    /// reached (`None`) or the append failed (`Some(why)`).
    pub fn spill(self: &Arc<Self>, prepared: Prepared) -> Result<(), Option<String>> {
        let size = prepared.0.payload.len() as u64;
        {
            let mut s = self.lock_spill();
            if s.bytes + size > self.max_spill.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(None);
            }
            s.bytes += size;
        }
        match self.commit(prepared) {
            Ok(mut ticket) => {
                // No batch holds the entry: it stays until the drainer takes it.
                ticket.wal = None;
                let mut s = self.lock_spill();
                s.ids.push_back((ticket.id, size));
                self.spill_gauges(&s);
                drop(s);
                self.spilled.notify_one();
                Ok(())
            }
            Err(e) => {
                self.lock_spill().bytes -= size;
                Err(Some(e))
            }
        }
    }

    /// Waits until a write is spilled (or was before the call, since the last wait).
    pub async fn spilled(&self) {
        self.spilled.notified().await
    }

    /// The oldest spilled write, read back from the log, with the ticket that removes it
    /// once delivered; `None` when none waits. A damaged or missing entry is skipped
    /// (logged).
    pub fn next_spilled(self: &Arc<Self>) -> Result<Option<(Ticket, Category, Text)>, String> {
        loop {
            let Some(&(id, size)) = self.lock_spill().ids.front() else {
                return Ok(None);
            };
            let found = self.store.with(false, |db| {
                let txn = db.begin_read()?;
                let t = txn.open_table(ENTRIES)?;
                Ok(t.get(id)?.map(|v| Record::decode(v.value())))
            })?;
            {
                let mut s = self.lock_spill();
                s.ids.pop_front();
                s.bytes -= size;
                self.spill_gauges(&s);
            }
            let ticket = Ticket {
                wal: Some(self.clone()),
                id,
                keep: Default::default(),
            };
            match found {
                Some(Decoded::Ok(r)) => match Text::from_joined(&r.payload) {
                    Some(text) => return Ok(Some((ticket, r.category, text))),
                    None => tracing::error!(id, "spilled WAL entry is not UTF-8; skipped"),
                },
                Some(Decoded::Corrupt(why)) => {
                    tracing::error!(id, "damaged spilled WAL entry skipped: {why}")
                }
                None => tracing::error!(id, "spilled WAL entry missing; skipped"),
            }
        }
    }

    /// Writes `points` durably (fsynced) and returns the ticket that removes them.
    pub fn append(
        self: &Arc<Self>,
        category: Category,
        points: &[Point],
    ) -> Result<Ticket, String> {
        self.commit(Wal::prepare(category, points))
    }

    /// Encodes a write for the log without touching the disk (cheap; the points can then
    /// be routed, and the write logged with [`Wal::commit`] once it is sure to be taken).
    pub fn prepare(category: Category, points: &[Point]) -> Prepared {
        let mut lp = Vec::with_capacity(points.len() * 64);
        encode_points(points, &mut lp);
        Prepared(Record::new(
            category,
            false,
            points.len() as u64,
            Bytes::from(lp),
        ))
    }

    /// As [`Wal::prepare`], for points kept as text (no copy: the log holds the same
    /// line protocol).
    pub fn prepare_text(category: Category, text: &Text) -> Prepared {
        Prepared(Record::new(
            category,
            false,
            text.len() as u64,
            text.joined(),
        ))
    }

    /// Writes a prepared entry durably (fsynced) and returns the ticket that removes it.
    /// Blocks until the entry is on disk; concurrent callers share fsyncs (module doc).
    pub fn commit(self: &Arc<Self>, prepared: Prepared) -> Result<Ticket, String> {
        let mut s = self.appends.lock().unwrap_or_else(|e| e.into_inner());
        let id = s.next_id;
        s.next_id += 1;
        let group = s.open;
        s.waiting.push((id, prepared.0));
        loop {
            if s.done > group {
                let Some((error, unread)) = s.failed.get_mut(&group) else {
                    return Ok(Ticket {
                        wal: Some(self.clone()),
                        id,
                        keep: Default::default(),
                    });
                };
                let error = error.clone();
                *unread -= 1;
                if *unread == 0 {
                    s.failed.remove(&group);
                }
                return Err(error);
            }
            if s.leading {
                s = self.committed.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // No commit in progress, so the open group is ours: commit it, letting later
            // writers gather in the next one meanwhile.
            let entries = std::mem::take(&mut s.waiting);
            let number = s.open;
            s.open += 1;
            s.leading = true;
            drop(s);
            // A panic must not leave `leading` set: every later writer would wait forever.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.write_group(&entries)
            }))
            .unwrap_or_else(|_| Err("the WAL commit panicked".to_string()));
            s = self.appends.lock().unwrap_or_else(|e| e.into_inner());
            s.leading = false;
            s.done = number + 1;
            if let Err(e) = result {
                s.failed.insert(number, (e, entries.len()));
            }
            self.committed.notify_all();
        }
    }

    /// Writes a group of entries in one transaction, fsynced.
    fn write_group(&self, entries: &[(u64, Record)]) -> Result<(), String> {
        let unremoved = self.take_unremoved();
        let result = self.store.with(true, |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut t = txn.open_table(ENTRIES)?;
                for (id, record) in entries {
                    t.insert(id, record.encode().as_slice())?;
                }
                for id in &unremoved {
                    t.remove(id)?;
                }
            }
            txn.commit()?;
            Ok(())
        });
        if result.is_err() {
            self.keep_unremoved(unremoved);
        }
        result
    }

    fn take_unremoved(&self) -> Vec<u64> {
        std::mem::take(&mut *self.unremoved.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn keep_unremoved(&self, ids: Vec<u64>) {
        let mut u = self.unremoved.lock().unwrap_or_else(|e| e.into_inner());
        u.extend(ids);
    }

    /// Removes entry `id` soon, grouped with other removals. Tickets drop on async
    /// workers and a removal waits for redb's writer (which an append may hold through an
    /// fsync), so the removals run on the blocking pool (inline outside a runtime).
    fn schedule_removal(self: Arc<Self>, id: u64) {
        {
            let mut r = self.removals.lock().unwrap_or_else(|e| e.into_inner());
            r.0.push(id);
            if r.1 {
                return; // the running task takes it
            }
            r.1 = true;
        }
        let run = move || self.remove_scheduled();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(run)),
            Err(_) => run(),
        }
    }

    fn remove_scheduled(&self) {
        loop {
            let ids = {
                let mut r = self.removals.lock().unwrap_or_else(|e| e.into_inner());
                if r.0.is_empty() {
                    r.1 = false;
                    return;
                }
                std::mem::take(&mut r.0)
            };
            if let Err(e) = self.remove(&ids) {
                tracing::warn!(
                    writes = ids.len(),
                    "could not remove delivered writes from the WAL (they will be replayed): {e}"
                );
            }
        }
    }

    /// Removes entries (with those whose removal failed before); what fails is kept for the
    /// next commit.
    fn remove(&self, ids: &[u64]) -> Result<(), String> {
        let mut all = self.take_unremoved();
        all.extend_from_slice(ids);
        let result = self.store.with(true, |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::None)?;
            {
                let mut t = txn.open_table(ENTRIES)?;
                for &id in &all {
                    t.remove(id)?;
                }
            }
            txn.commit()?;
            Ok(())
        });
        if result.is_err() {
            self.keep_unremoved(all);
        }
        result
    }

    /// Every entry in the log, this run's too (damaged entries are skipped and logged).
    pub fn pending(&self) -> Result<Vec<Pending>, String> {
        Ok(self.entries(0, u64::MAX, usize::MAX)?.entries)
    }

    /// How many entries a previous run left (for the replay's log line).
    pub fn pending_count(&self) -> Result<u64, String> {
        self.store.with(false, |db| {
            let txn = db.begin_read()?;
            match txn.open_table(ENTRIES) {
                Ok(t) => Ok(t.range(..self.replay_end)?.count() as u64),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Up to `max` entries a previous run left, from id `from` on, oldest first: the
    /// replay reads them a page at a time, so a large log is never all in memory.
    pub fn pending_from(&self, from: u64, max: usize) -> Result<Page, String> {
        self.entries(from, self.replay_end, max)
    }

    fn entries(&self, from: u64, end: u64, max: usize) -> Result<Page, String> {
        let (page, damaged) = self.store.with(false, |db| {
            let txn = db.begin_read()?;
            let t = match txn.open_table(ENTRIES) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => {
                    return Ok((Page::default(), Vec::new()));
                }
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            let mut damaged = Vec::new();
            let mut next = None;
            for (n, entry) in t.range(from..end)?.enumerate() {
                let (k, v) = entry?;
                let id = k.value();
                if n >= max {
                    next = Some(id);
                    break;
                }
                let parsed = match Record::decode(v.value()) {
                    Decoded::Ok(r) => parse(&r.payload, ParseOptions::default())
                        .map(|points| (r.category, points))
                        .map_err(|e| e.to_string()),
                    Decoded::Corrupt(why) => Err(why),
                };
                match parsed {
                    Ok((category, points)) => out.push(Pending {
                        id,
                        category,
                        points,
                    }),
                    Err(why) => {
                        tracing::error!(id, "damaged WAL entry skipped: {why}");
                        damaged.push(id);
                    }
                }
            }
            Ok((Page { entries: out, next }, damaged))
        })?;
        for id in damaged {
            drop(self.forget(id));
        }
        Ok(page)
    }

    /// Removes a replayed (or damaged) entry.
    pub fn forget(&self, id: u64) -> Result<(), String> {
        self.remove(&[id])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::FieldValue;

    fn pts(n: usize) -> Vec<Point> {
        (0..n)
            .map(|i| Point {
                measurement: "cpu".into(),
                tags: vec![("host".into(), format!("h{i}"))],
                fields: vec![("v".into(), FieldValue::Int(i as i64))],
                time: 1_700_000_000_000_000_000 + i as i64,
            })
            .collect()
    }

    #[test]
    fn entries_stay_until_their_ticket_drops_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        {
            let wal = Wal::open(&path).unwrap();
            let a = wal.append(Category::Metric, &pts(3)).unwrap();
            let b = wal.append(Category::Logging, &pts(2)).unwrap();
            assert_eq!(wal.pending().unwrap().len(), 2);
            drop(a);
            let left = wal.pending().unwrap();
            assert_eq!(left.len(), 1);
            assert_eq!(left[0].category, Category::Logging);
            assert_eq!(left[0].points, pts(2));
            b.abandon(); // a crash: never removed
        }
        let wal = Wal::open(&path).unwrap();
        let left = wal.pending().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].points, pts(2));
        let c = wal.append(Category::Metric, &pts(1)).unwrap();
        assert!(c.id > left[0].id, "ids keep increasing after a reopen");
    }

    #[test]
    fn the_replay_reads_a_page_at_a_time_and_not_this_run_s_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        {
            let wal = Wal::open(&path).unwrap();
            for n in 1..=5 {
                wal.append(Category::Metric, &pts(n)).unwrap().abandon();
            }
        }
        let wal = Wal::open(&path).unwrap();
        let _new = wal.append(Category::Metric, &pts(9)).unwrap(); // this run's: not replayed
        assert_eq!(wal.pending_count().unwrap(), 5);
        let mut sizes = Vec::new();
        let mut from = Some(0);
        while let Some(f) = from {
            let page = wal.pending_from(f, 2).unwrap();
            assert!(page.entries.len() <= 2);
            sizes.extend(page.entries.iter().map(|p| p.points.len()));
            from = page.next;
        }
        assert_eq!(sizes, vec![1, 2, 3, 4, 5]);
    }

    /// A full disk: appends fail (ingest answers 503) and removals fail; once the disk has
    /// room again the log takes writes by itself (it reopens its file after the backoff; the
    /// test never reopens it), and removals that failed meanwhile reach the file.
    #[test]
    fn after_a_full_disk_the_wal_reopens_itself() {
        use crate::failcache::faulty;
        use std::sync::atomic::{AtomicI64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        let disk = faulty::Disk::default();
        let metrics = Arc::new(Metrics::new());
        let now = Arc::new(AtomicI64::new(0));
        let n = now.clone();
        let wal = Wal::open_with(
            &path,
            faulty::opener(&disk),
            Arc::new(move || n.load(Ordering::SeqCst)),
            Some(metrics.clone()),
        )
        .unwrap();
        let kept = wal.append(Category::Metric, &pts(1)).unwrap();
        let delivered = wal.append(Category::Metric, &pts(2)).unwrap();
        disk.fill();
        assert!(wal.append(Category::Metric, &pts(3)).is_err());
        drop(delivered); // its removal fails: the disk is full
        assert!(wal.append(Category::Metric, &pts(4)).is_err(), "still full");
        disk.free();
        let e = wal.append(Category::Metric, &pts(5)).unwrap_err();
        assert!(e.contains("reopening in"), "within the backoff: {e}");
        now.fetch_add(60_000, Ordering::SeqCst);
        let _six = wal.append(Category::Metric, &pts(6)).unwrap();
        assert_eq!(wal.store.reopens(), 1);
        let reopens = |result: &str| {
            metrics
                .store_reopens_total
                .with_label_values(&["wal", "wal", result])
                .get()
        };
        assert_eq!((reopens("ok"), reopens("error")), (1, 0));
        let io_errors = metrics
            .store_io_errors_total
            .with_label_values(&["wal", "wal"])
            .get();
        assert_eq!(io_errors, wal.store.io_errors());
        assert!(io_errors >= 1);
        let left: Vec<usize> = wal
            .pending()
            .unwrap()
            .iter()
            .map(|p| p.points.len())
            .collect();
        assert_eq!(left, [1, 6], "the delivered write's removal was retried");
        kept.abandon();
    }

    /// Many writers at once (their commits grouped): each gets its own entry, on disk when
    /// it returns, and each entry is removed exactly when its ticket drops.
    #[test]
    fn concurrent_appends_are_each_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(&dir.path().join("wal.redb")).unwrap();
        let start = Arc::new(std::sync::Barrier::new(8));
        let tickets: Vec<Vec<Ticket>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let (wal, start) = (wal.clone(), start.clone());
                    scope.spawn(move || {
                        start.wait();
                        (0..25)
                            .map(|i| {
                                let ticket = wal.append(Category::Metric, &pts(t * 25 + i + 1));
                                ticket.unwrap()
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut ids: Vec<u64> = tickets.iter().flatten().map(|t| t.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200, "one id per write");
        let pending = wal.pending().unwrap();
        assert_eq!(pending.len(), 200);
        // Each entry holds its own write (sizes 1..=200, each once).
        let mut sizes: Vec<usize> = pending.iter().map(|p| p.points.len()).collect();
        sizes.sort();
        assert_eq!(sizes, (1..=200).collect::<Vec<_>>());
        // Dropping one thread's tickets removes exactly its entries (no runtime here, so
        // the removal runs inline).
        let mut tickets = tickets;
        let gone: Vec<u64> = tickets[3].iter().map(|t| t.id).collect();
        tickets[3].clear();
        let left: Vec<u64> = wal.pending().unwrap().iter().map(|p| p.id).collect();
        assert_eq!(left.len(), 175);
        assert!(gone.iter().all(|id| !left.contains(id)));
    }
}
