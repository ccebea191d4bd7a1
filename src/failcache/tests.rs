use super::*;
use crate::category::Category;
use bytes::Bytes;

fn limits(max: u64) -> Limits {
    Limits {
        max_capacity: max,
        drop_expired_after: Duration::from_secs(3600),
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
    let (clock, now) = manual_clock();
    let m = Arc::new(Metrics::new());
    let c = FailCache::open_with(path, limits(1 << 20), "ep".into(), m, faulty::opener(disk))
        .unwrap()
        .with_clock(clock);
    (c, now)
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
