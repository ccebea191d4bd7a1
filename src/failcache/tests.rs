use super::*;
use crate::category::Category;
use bytes::Bytes;

fn limits(max: u64) -> Limits {
    Limits {
        max_capacity: max,
        drop_expired_after: Duration::from_secs(3600),
        shed_on_full_disk: true,
    }
}

fn rec(n: u64) -> Record {
    Record::new(
        Category::Metric,
        false,
        n,
        Bytes::from(format!("body {n:03}")),
    )
}

fn open(path: &Path, l: Limits) -> (FailCache, Arc<Metrics>) {
    let m = Arc::new(Metrics::new());
    (FailCache::open(path, l, "ep".into(), m.clone()).unwrap(), m)
}

fn drain(c: &FailCache) -> Vec<u64> {
    let mut out = Vec::new();
    while let Head::Ready(k, r) = c.head().unwrap() {
        out.push(r.points);
        c.remove(k).unwrap();
    }
    out
}

fn dropped(m: &Metrics, reason: &str) -> u64 {
    m.failcache_dropped_total
        .with_label_values(&["ep", reason])
        .get()
}

#[test]
fn records_come_back_in_order_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ep.redb");
    {
        let (c, m) = open(&path, limits(1 << 20));
        for n in 1..=5 {
            c.push(&rec(n)).unwrap();
        }
        assert_eq!(c.len().0, 5);
        assert_eq!(m.failcache_records.with_label_values(&["ep"]).get(), 5);
        let Head::Ready(k, r) = c.head().unwrap() else {
            panic!("empty")
        };
        assert_eq!(r.points, 1);
        c.remove(k).unwrap();
    }
    let (c, _) = open(&path, limits(1 << 20));
    assert_eq!(c.len().0, 4);
    assert_eq!(drain(&c), [2, 3, 4, 5]);
    c.push(&rec(6)).unwrap();
    assert_eq!(drain(&c), [6], "keys keep increasing after a reopen");
}

#[test]
fn when_full_the_oldest_go_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let one = rec(1).encode().len() as u64;
    let (c, m) = open(&dir.path().join("ep.redb"), limits(one * 3));
    for n in 1..=10 {
        c.push(&rec(n)).unwrap();
    }
    assert_eq!(dropped(&m, "full"), 7);
    assert_eq!(
        m.dropped_points_total
            .with_label_values(&["metric", "failcache_full"])
            .get(),
        (1..=7).sum::<u64>()
    );
    assert_eq!(drain(&c), [8, 9, 10]);
}

#[test]
fn the_record_being_resent_is_not_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let one = rec(1).encode().len() as u64;
    let (c, m) = open(&dir.path().join("ep.redb"), limits(one * 3));
    for n in 1..=3 {
        c.push(&rec(n)).unwrap();
    }
    let Head::Ready(k, r) = c.head().unwrap() else {
        panic!("empty")
    };
    assert_eq!(r.points, 1);
    // While 1 is being resent, the cache fills: 2 and 3 go, 1 stays.
    c.push(&rec(4)).unwrap();
    c.push(&rec(5)).unwrap();
    assert_eq!(dropped(&m, "full"), 2);
    c.remove(k).unwrap(); // 1 delivered: never counted as dropped
    assert_eq!(
        m.dropped_points_total
            .with_label_values(&["metric", "failcache_full"])
            .get(),
        2 + 3
    );
    // A failed resend gives up the protection: the oldest goes first again.
    let Head::Ready(_, r) = c.head().unwrap() else {
        panic!("empty")
    };
    assert_eq!(r.points, 4);
    c.retry_later();
    c.push(&rec(6)).unwrap();
    c.push(&rec(7)).unwrap();
    assert_eq!(drain(&c), [5, 6, 7]);
}

/// Time is the test's: a record is kept up to `drop_expired_after` and dropped past it,
/// however long the fsynced commits take.
#[test]
fn expired_records_are_dropped_not_resent() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicI64::new(1_800_000_000_000));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let (c, m) = open(
        &dir.path().join("ep.redb"),
        Limits {
            max_capacity: 1 << 20,
            drop_expired_after: Duration::from_secs(60),
            shed_on_full_disk: true,
        },
    );
    let c = c.with_clock(clock);
    let at = |n: u64| {
        let mut r = rec(n);
        r.created_ms = now.load(Ordering::SeqCst);
        r
    };
    c.push(&at(1)).unwrap();
    now.fetch_add(30_000, Ordering::SeqCst);
    c.push(&at(2)).unwrap();
    now.fetch_add(30_000, Ordering::SeqCst);
    // 1 is exactly 60 s old: still kept.
    let Head::Ready(_, r) = c.head().unwrap() else {
        panic!("empty")
    };
    assert_eq!(r.points, 1);
    c.retry_later();
    assert_eq!(dropped(&m, "expired"), 0);
    now.fetch_add(1, Ordering::SeqCst);
    // Now 1 is past it, 2 is not.
    assert_eq!(drain(&c), [2]);
    assert_eq!(dropped(&m, "expired"), 1);
    assert_eq!(
        m.dropped_points_total
            .with_label_values(&["metric", "failcache_expired"])
            .get(),
        1
    );
}

#[test]
fn a_damaged_record_is_skipped_and_the_rest_drains() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ep.redb");
    {
        let (c, _) = open(&path, limits(1 << 20));
        for n in 1..=3 {
            c.push(&rec(n)).unwrap();
        }
    }
    // Flip a byte inside the second record's value, through redb (its own page checksums
    // stay valid, so only our record checksum can catch it).
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(BODIES).unwrap();
            let mut v = t.get(1).unwrap().unwrap().value().to_vec();
            let last = v.len() - 1;
            v[last] ^= 0xff;
            t.insert(1, v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let (c, m) = open(&path, limits(1 << 20));
    assert_eq!(drain(&c), [1, 3]);
    assert_eq!(dropped(&m, "corrupt"), 1);
}

#[test]
fn an_unreadable_file_is_moved_aside_and_a_new_cache_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ep.redb");
    std::fs::write(&path, vec![0xa5u8; 64 * 1024]).unwrap();
    let (c, m) = open(&path, limits(1 << 20));
    assert!(c.is_empty());
    assert_eq!(dropped(&m, "corrupt_file"), 1);
    c.push(&rec(1)).unwrap();
    assert_eq!(drain(&c), [1]);
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt-"))
        .count();
    assert_eq!(aside, 1, "the damaged file is kept for inspection");
}

#[test]
fn a_second_holder_of_the_same_file_is_told_it_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ep.redb");
    let (a, _) = open(&path, limits(1 << 20));
    let err = FailCache::open(
        &path,
        limits(1 << 20),
        "ep".into(),
        Arc::new(Metrics::new()),
    )
    .err()
    .expect("one holder at a time");
    assert!(err.is_busy(), "{err}");
    drop(a);
    assert!(
        FailCache::open(
            &path,
            limits(1 << 20),
            "ep".into(),
            Arc::new(Metrics::new())
        )
        .is_ok()
    );
}

/// A clock the test moves (ms since the epoch), for the reopen backoff and record ages.
fn manual_clock() -> (Clock, Arc<std::sync::atomic::AtomicI64>) {
    let now = Arc::new(std::sync::atomic::AtomicI64::new(record::now_ms()));
    let n = now.clone();
    (
        Arc::new(move || n.load(std::sync::atomic::Ordering::SeqCst)),
        now,
    )
}

fn advance(now: &std::sync::atomic::AtomicI64, ms: i64) {
    now.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
}

fn open_on(path: &Path, disk: &faulty::Disk) -> (FailCache, Arc<std::sync::atomic::AtomicI64>) {
    let (c, now, _) = open_counted_on(path, disk, 1 << 20);
    (c, now)
}

fn open_counted_on(
    path: &Path,
    disk: &faulty::Disk,
    max: u64,
) -> (FailCache, Arc<std::sync::atomic::AtomicI64>, Arc<Metrics>) {
    let (clock, now) = manual_clock();
    let m = Arc::new(Metrics::new());
    let c = FailCache::open_with(
        path,
        limits(max),
        "ep".into(),
        m.clone(),
        faulty::opener(disk),
        Some(disk.room()),
    )
    .unwrap()
    .with_clock(clock);
    (c, now, m)
}

/// A full disk: pushes fail (and are counted as storage errors); once it has room again the
/// cache takes pushes again by itself (it closes and reopens its file after the backoff; the
/// test never reopens it), and what was stored before the fault is all still there.
#[test]
fn after_a_full_disk_the_cache_reopens_itself() {
    let dir = tempfile::tempdir().unwrap();
    let disk = faulty::Disk::default();
    let (c, now) = open_on(&dir.path().join("ep.redb"), &disk);
    c.push(&rec(1)).unwrap();
    disk.fill();
    assert!(c.push(&rec(2)).is_err());
    assert!(c.push(&rec(3)).is_err(), "still full");
    assert!(c.storage_errors().0 >= 1);
    disk.free();
    // Within the backoff the file stays closed: no disk access, a quick error.
    let refused = disk.refused.load(std::sync::atomic::Ordering::SeqCst);
    let e = c.push(&rec(4)).unwrap_err().to_string();
    assert!(e.contains("reopening in"), "{e}");
    advance(&now, 60_000);
    c.push(&rec(5)).unwrap();
    assert_eq!(c.storage_errors().1, 1, "reopened once");
    assert_eq!(
        disk.refused.load(std::sync::atomic::Ordering::SeqCst),
        refused
    );
    assert_eq!(c.len().0, 2);
    assert_eq!(drain(&c), [1, 5]);
}

/// The 77-times bug: a record delivered while the disk was full could not be removed, and
/// was handed out (and resent) again at every retry. Now it is settled in memory: never
/// handed out again, and removed from the file once the disk takes writes.
#[test]
fn a_record_whose_removal_failed_is_not_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let disk = faulty::Disk::default();
    let path = dir.path().join("ep.redb");
    {
        let (c, now) = open_on(&path, &disk);
        for n in 1..=3 {
            c.push(&rec(n)).unwrap();
        }
        let Head::Ready(k, r) = c.head().unwrap() else {
            panic!("empty")
        };
        assert_eq!(r.points, 1);
        disk.fill();
        assert!(c.remove(k).is_err(), "the disk is full");
        // Every later look at the head, through the fault and after it, skips record 1.
        for _ in 0..5 {
            if let Ok(Head::Ready(_, r)) = c.head() {
                assert_ne!(r.points, 1, "delivered record handed out again");
            }
            advance(&now, 60_000);
        }
        disk.free();
        advance(&now, 60_000);
        assert_eq!(drain(&c), [2, 3]);
        assert!(c.is_empty());
    }
    // Its removal reached the file: not resent after a restart either.
    let (c, _) = open_on(&path, &disk);
    assert_eq!(drain(&c), Vec::<u64>::new());
}

/// Record `n` (with `n` points), its body `size` bytes that do not compress.
fn big(n: u64, size: usize) -> Record {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let body: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    Record::new(Category::Metric, true, n, Bytes::from(body))
}

fn store_metric(m: &Metrics, which: &str) -> u64 {
    match which {
        "io_errors" => m
            .store_io_errors_total
            .with_label_values(&["failcache", "ep"])
            .get(),
        result => m
            .store_reopens_total
            .with_label_values(&["failcache", "ep", result])
            .get(),
    }
}

/// Issue 11: a full disk dropped every new body (`write_error`) and resent one record 77
/// times. Now, with the disk as full as a real one (written blocks can be rewritten, nothing
/// more fits), each new body makes room by shedding the oldest records, counted as
/// `disk_full`; a resender running meanwhile gets each record at most once; and once the
/// disk has room again what is left drains. In the end every record was delivered exactly
/// once or counted as shed, never both and never neither.
#[test]
fn a_full_disk_sheds_the_oldest_counted_and_each_record_is_delivered_once() {
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ep.redb");
    let disk = faulty::Disk::default();
    let (c, now, m) = open_counted_on(&path, &disk, 1 << 30);
    let mut delivered: BTreeMap<u64, u32> = BTreeMap::new();
    let mut tries = 0;
    let mut deliver_one = |c: &FailCache| {
        if let Ok(Head::Ready(k, r)) = c.head() {
            *delivered.entry(r.points).or_default() += 1;
            // Every other removal fails (the 77-times case): the record is settled anyway,
            // and the next push reopens the file that failure closed.
            tries += 1;
            if tries % 2 == 0 {
                disk.fill();
                assert!(c.remove(k).is_err());
                disk.unfill();
            } else {
                drop(c.remove(k));
            }
        }
    };
    for n in 1..=40 {
        c.push(&big(n, 3000)).unwrap();
    }
    deliver_one(&c); // 1
    disk.limit(&path);
    // While full: every push is kept (room made by shedding); a resend every 4th push.
    for n in 41..=200 {
        c.push(&big(n, 3000))
            .unwrap_or_else(|e| panic!("push {n} on the full disk: {e}"));
        if n % 4 == 0 {
            // Twice: the second look comes while the failed removal left the file closed.
            deliver_one(&c);
            deliver_one(&c);
        }
    }
    let shed = dropped(&m, "disk_full");
    assert!(shed > 0, "the disk filled up and nothing was shed");
    assert_eq!(dropped(&m, "write_error"), 0);
    assert!(store_metric(&m, "io_errors") >= 1);
    assert!(store_metric(&m, "ok") >= 1, "shedding reopens the file");
    disk.free();
    advance(&now, 60_000);
    c.push(&big(201, 3000)).unwrap();
    let left = drain(&c);
    assert!(c.is_empty());
    assert_eq!(left.last(), Some(&201));
    assert!(left.windows(2).all(|w| w[0] < w[1]), "in order: {left:?}");
    for &n in &left {
        *delivered.entry(n).or_default() += 1;
    }
    let twice: Vec<_> = delivered.iter().filter(|&(_, &k)| k > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    // Each record delivered or shed: the shed ones are exactly the missing ones, and they
    // are older than every record left after them (oldest first).
    let missing: Vec<u64> = (1..=201).filter(|n| !delivered.contains_key(n)).collect();
    assert_eq!(missing.len() as u64, shed, "shed count vs missing records");
    assert_eq!(
        m.dropped_points_total
            .with_label_values(&["metric", "failcache_disk_full"])
            .get(),
        missing.iter().sum::<u64>(),
        "points of the shed records"
    );
    let first_left = left[0];
    assert!(
        missing.iter().all(|&n| n < first_left),
        "shed {missing:?}, yet {first_left} was kept: not oldest first"
    );
    // The file agrees (nothing counted as shed is still on disk), after a restart too.
    drop(c);
    let (c, _, _) = open_counted_on(&path, &disk, 1 << 30);
    assert!(c.is_empty());
}

/// With the WAL on (`shed_on_full_disk = false`) a full disk sheds nothing: what the cache
/// holds has left the WAL already, so shedding it would lose acknowledged points. New bodies
/// are refused instead (the endpoint leaves them in the WAL and sends them again), and
/// every record stored before is still there, in order, once the disk has room.
#[test]
fn with_the_wal_on_a_full_disk_sheds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ep.redb");
    let disk = faulty::Disk::default();
    let (clock, now) = manual_clock();
    let m = Arc::new(Metrics::new());
    let no_shed = Limits {
        shed_on_full_disk: false,
        ..limits(1 << 30)
    };
    let c = FailCache::open_with(
        &path,
        no_shed,
        "ep".into(),
        m.clone(),
        faulty::opener(&disk),
        Some(disk.room()),
    )
    .unwrap()
    .with_clock(clock);
    for n in 1..=40 {
        c.push(&big(n, 3000)).unwrap();
    }
    disk.limit(&path);
    let refused: Vec<u64> = (41..=100)
        .filter(|&n| c.push(&big(n, 3000)).is_err())
        .collect();
    assert!(!refused.is_empty(), "the disk never filled");
    assert_eq!(dropped(&m, "disk_full"), 0, "shed with the WAL on");
    disk.free();
    advance(&now, 60_000);
    c.push(&big(101, 3000)).unwrap();
    let left = drain(&c);
    let stored: Vec<u64> = (1..=101).filter(|n| !refused.contains(n)).collect();
    assert_eq!(left, stored, "every record stored is still there, in order");
}

/// A disk full in a way shedding cannot help (every write refused): the new body is not
/// stored (the caller counts it as `write_error`), nothing is counted as shed, and every
/// record stored before is still there once the disk has room again.
#[test]
fn when_shedding_cannot_commit_nothing_is_counted_shed_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ep.redb");
    let disk = faulty::Disk::default();
    let (c, now, m) = open_counted_on(&path, &disk, 1 << 30);
    for n in 1..=5 {
        c.push(&rec(n)).unwrap();
    }
    disk.fill();
    let e = c.push(&rec(6)).unwrap_err().to_string();
    assert!(e.contains("shedding"), "{e}");
    assert_eq!(dropped(&m, "disk_full"), 0);
    assert_eq!(dropped(&m, "write_error"), 1, "the new body, not stored");
    disk.free();
    advance(&now, 60_000);
    c.push(&rec(7)).unwrap();
    assert_eq!(drain(&c), [1, 2, 3, 4, 5, 7]);
}

/// The record being resent is never shed (it would be delivered and counted as dropped).
#[test]
fn the_record_being_resent_is_not_shed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ep.redb");
    let disk = faulty::Disk::default();
    let (c, _, m) = open_counted_on(&path, &disk, 1 << 30);
    for n in 1..=20 {
        c.push(&big(n, 3000)).unwrap();
    }
    let Head::Ready(k, r) = c.head().unwrap() else {
        panic!("empty")
    };
    assert_eq!(r.points, 1);
    disk.limit(&path);
    let mut n = 21;
    while dropped(&m, "disk_full") == 0 {
        c.push(&big(n, 3000)).unwrap();
        n += 1;
        assert!(n < 500, "never shed");
    }
    disk.free();
    c.remove(k).unwrap(); // 1 delivered
    let left = drain(&c);
    assert!(!left.contains(&1));
    let shed = (2..n).filter(|x| !left.contains(x)).count() as u64;
    assert_eq!(shed, dropped(&m, "disk_full"), "1 was not counted as shed");
}
