//! The write-ahead log (opt-in, `[dataway.wal]`): ingest acknowledges a write only once its
//! points are on disk, so a crash (kill -9, power loss) loses nothing that was acknowledged.
//!
//! In: the points of an accepted write, before they are queued. Out: a [`Ticket`] that the
//! write's batches hold; when the last of them is done (delivered, refused, or handed to a
//! fail-cache, which is itself durable), the ticket drops and the entry is removed. At start
//! the entries left by a previous run are replayed through the router. A crash between a
//! delivery and the removal replays that write again: delivery is at least once.
//!
//! Storage: a redb file, as the fail-cache (see there for why), with the same versioned,
//! checksummed records; appends are fsynced, removals are not (a removal lost in a crash
//! only means one more replay).

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::category::Category;
use crate::failcache::{Decoded, Record, open_or_move_aside};
use crate::point::{ParseOptions, Point, encode_points, parse};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("writes");

/// The log.
pub struct Wal {
    db: Database,
    next: Mutex<u64>,
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
    /// delivered (e.g. abandoned at the shutdown deadline with no fail-cache): it is
    /// replayed at the next start.
    pub fn keep(&self) {
        self.keep.store(true, std::sync::atomic::Ordering::Relaxed);
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
        let id = self.id;
        let remove = move || {
            if let Err(e) = wal.remove(id) {
                tracing::warn!(
                    id,
                    "could not remove a delivered write from the WAL (it will be replayed): {e}"
                );
            }
        };
        // Tickets drop on async workers; the removal waits for redb's writer (which an
        // append may hold through an fsync), so it runs on the blocking pool.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// A write encoded for the log, not yet on disk.
pub struct Prepared(Record);

/// A write found in the log at start.
pub struct Pending {
    pub id: u64,
    pub category: Category,
    pub points: Vec<Point>,
}

impl Wal {
    /// Opens (or creates) the log file at `path`.
    pub fn open(path: &Path) -> Result<Arc<Wal>, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let (db, _) = open_or_move_aside(path)?;
        let next = {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            let last = {
                let t = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
                t.last().map_err(|e| e.to_string())?.map(|(k, _)| k.value())
            };
            txn.commit().map_err(|e| e.to_string())?;
            last.map_or(0, |k| k + 1)
        };
        Ok(Arc::new(Wal {
            db,
            next: Mutex::new(next),
        }))
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

    /// Writes a prepared entry durably (fsynced) and returns the ticket that removes it.
    pub fn commit(self: &Arc<Self>, prepared: Prepared) -> Result<Ticket, String> {
        let record = prepared.0;
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let id = *next;
        let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| e.to_string())?;
        {
            let mut t = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
            t.insert(id, record.encode().as_slice())
                .map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())?;
        *next += 1;
        Ok(Ticket {
            wal: Some(self.clone()),
            id,
            keep: Default::default(),
        })
    }

    fn remove(&self, id: u64) -> Result<(), String> {
        let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(Durability::None)
            .map_err(|e| e.to_string())?;
        {
            let mut t = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
            t.remove(id).map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())
    }

    /// The writes a previous run left (damaged entries are skipped and logged).
    pub fn pending(&self) -> Result<Vec<Pending>, String> {
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = match txn.open_table(ENTRIES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| e.to_string())? {
            let (k, v) = entry.map_err(|e| e.to_string())?;
            let id = k.value();
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
                    drop(self.forget(id));
                }
            }
        }
        Ok(out)
    }

    /// Removes a replayed (or damaged) entry.
    pub fn forget(&self, id: u64) -> Result<(), String> {
        self.remove(id)
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
}
