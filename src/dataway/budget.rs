//! The memory budget: one count of the bytes the daemon holds for data in flight, from the
//! first byte of a request body read to the last endpoint done with its points.
//!
//! Everything that grows with what clients send is charged here before it is held: request
//! bodies as they are read (compressed or not), the window they are decompressed through,
//! the points parsed from them (by [`crate::point::Point::memory_size`], since a parsed point
//! costs far more than its bytes), and the batches waiting in endpoint queues. When the
//! budget is spent a write is refused (503) before it costs more, or, for a body already
//! validated and being queued chunk by chunk, waits for room.
//!
//! Two limits inside the one budget keep it from deadlocking: bodies being read and
//! decoded may hold at most half of it ([`Budget::try_reading`]), so points always have
//! the other half to move through; and one large body at a time is parsed in chunks
//! ([`Budget::large`]), so two of them never wait on each other's room.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget; see the module doc.
#[derive(Debug)]
pub struct Budget {
    all: Arc<Semaphore>,
    total: usize,
    reading: Arc<Semaphore>,
    reading_total: usize,
    large: Arc<Semaphore>,
}

/// Bytes of request bodies held from the budget: counted in both the whole budget and its
/// reading half; given back when dropped.
#[derive(Debug, Default)]
pub struct Reading {
    all: Option<OwnedSemaphorePermit>,
    reading: Option<OwnedSemaphorePermit>,
}

/// Permits are `u32` in a tokio semaphore; a budget is at most this many bytes.
const MAX: usize = u32::MAX as usize;

impl Budget {
    /// A budget of `total` bytes (at most 4 GiB).
    pub fn new(total: usize) -> Budget {
        let total = total.clamp(2, MAX);
        let reading_total = total / 2;
        Budget {
            all: Arc::new(Semaphore::new(total)),
            total,
            reading: Arc::new(Semaphore::new(reading_total)),
            reading_total,
            large: Arc::new(Semaphore::new(1)),
        }
    }

    /// Its size in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes held now, of which `.1` by bodies being read and decoded.
    pub fn used(&self) -> (usize, usize) {
        (
            self.total - self.all.available_permits(),
            self.reading_total - self.reading.available_permits(),
        )
    }

    /// The most that bodies being read and decoded may hold at once: a body larger than
    /// this can never be taken.
    pub fn reading_total(&self) -> usize {
        self.reading_total
    }

    /// Charges `n` bytes of a body being read, if there is room now.
    pub fn try_reading(&self, n: usize) -> Option<Reading> {
        let mut r = Reading::default();
        self.grow(&mut r, n).then_some(r)
    }

    /// Adds `n` bytes to `r`, if there is room now.
    pub fn grow(&self, r: &mut Reading, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        let Ok(reading) = self.reading.clone().try_acquire_many_owned(n) else {
            return false;
        };
        let Ok(all) = self.all.clone().try_acquire_many_owned(n) else {
            return false;
        };
        merge(&mut r.reading, reading);
        merge(&mut r.all, all);
        true
    }

    /// Charges `n` bytes of points, if there is room now.
    pub fn try_points(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(n.clamp(1, self.total)).expect("at most MAX");
        self.all.clone().try_acquire_many_owned(n).ok()
    }

    /// Charges `n` bytes of points (at most the whole budget), waiting for room.
    pub async fn points(&self, n: usize) -> OwnedSemaphorePermit {
        let n = u32::try_from(n.clamp(1, self.total)).expect("at most MAX");
        self.all
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the budget is never closed")
    }

    /// The turn of one large body to be parsed and queued in chunks; waits for it.
    pub async fn large(&self) -> OwnedSemaphorePermit {
        self.large
            .clone()
            .acquire_owned()
            .await
            .expect("the budget is never closed")
    }

    /// Makes `held` exactly `n` bytes (at most the whole budget): gives back what is over, or
    /// takes the difference if there is room now. On `Err` the permit comes back unchanged.
    pub fn resize(
        &self,
        mut held: OwnedSemaphorePermit,
        n: usize,
    ) -> Result<OwnedSemaphorePermit, OwnedSemaphorePermit> {
        let n = n.clamp(1, self.total);
        let have = held.num_permits();
        if have > n {
            drop(held.split(have - n));
        } else if have < n {
            let more = u32::try_from(n - have).expect("at most MAX");
            match self.all.clone().try_acquire_many_owned(more) {
                Ok(p) => held.merge(p),
                Err(_) => return Err(held),
            }
        }
        Ok(held)
    }

    /// As [`Budget::resize`], waiting for room.
    pub async fn resize_wait(
        &self,
        mut held: OwnedSemaphorePermit,
        n: usize,
    ) -> OwnedSemaphorePermit {
        let n = n.clamp(1, self.total);
        let have = held.num_permits();
        if have > n {
            drop(held.split(have - n));
        } else if have < n {
            held.merge(self.points(n - have).await);
        }
        held
    }
}

impl Reading {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.all.as_ref().map_or(0, |p| p.num_permits())
    }
}

fn merge(into: &mut Option<OwnedSemaphorePermit>, p: OwnedSemaphorePermit) {
    match into {
        Some(held) => held.merge(p),
        None => *into = Some(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_being_read_hold_at_most_half_and_everything_comes_back_when_dropped() {
        let b = Budget::new(1000);
        let r = b.try_reading(400).unwrap();
        assert!(b.try_reading(200).is_none(), "over the reading half");
        let mut r2 = b.try_reading(99).unwrap();
        assert!(b.grow(&mut r2, 1));
        assert!(!b.grow(&mut r2, 1), "the reading half is spent");
        assert_eq!(b.used(), (500, 500));
        let p = b.try_points(500).unwrap();
        assert!(b.try_points(1).is_none(), "the whole budget is spent");
        drop((r, r2, p));
        assert_eq!(b.used(), (0, 0));
    }

    #[test]
    fn resize_gives_back_or_takes_the_difference() {
        let b = Budget::new(1000);
        let p = b.try_points(300).unwrap();
        let p = b.resize(p, 100).unwrap();
        assert_eq!(b.used().0, 100);
        let p = b.resize(p, 900).unwrap();
        assert_eq!(p.num_permits(), 900);
        let _other = b.try_points(100).unwrap();
        let p = b.resize(p, 901).unwrap_err();
        assert_eq!(p.num_permits(), 900, "unchanged when there is no room");
        assert_eq!(b.resize(p, 5000).unwrap_err().num_permits(), 900);
    }
}
