//! Room kept on the disk for the fail-cache to shed records when the disk is full.
//!
//! In: the cache file's path. Out: a file beside it (`<name>.reserve`, up to [`RESERVE_BYTES`]
//! of real, written blocks) that is deleted just before shedding and filled again afterwards.
//! Why: redb never deletes in place. Removing records is a copy-on-write transaction that
//! needs new pages for the changed B-tree nodes and the freed-page lists, and once the disk
//! is full those pages land past the end of what was written, where every write fails with
//! ENOSPC. Measured on a 2 MiB tmpfs filled to the last block: deleting 1 to 20 of the
//! oldest records failed every time, reopen or not. With this reserve deleted first, the
//! delete commits, the pages it frees take the next bodies, and shedding kept going through
//! hundreds of pushes without a failure; 64 KiB was too little, 256 KiB was enough for bodies
//! from 600 B to 100 kB.
//!
//! The reserve is filled as far as the disk allows (a partial reserve still helps) after
//! each write that succeeded, so the room one shed left is kept for the next one; once the
//! disk has room again it is whole again. On a copy-on-write file system (btrfs, ZFS with
//! snapshots) deleting a file may free nothing at once: shedding can then fail, and the body
//! is dropped as `write_error`, as without a reserve.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The reserve's full size (see the module doc for why this much).
pub(crate) const RESERVE_BYTES: u64 = 256 * 1024;

/// Whether `n` more bytes may be written to the reserve (tests: a disk of a fixed size).
pub(crate) type Room = Arc<dyn Fn(&Path, u64) -> bool + Send + Sync>;

pub(crate) struct Reserve {
    path: PathBuf,
    room: Option<Room>,
}

impl Reserve {
    pub(crate) fn new(cache: &Path, room: Option<Room>) -> Reserve {
        Reserve {
            path: path_for(cache),
            room,
        }
    }

    /// Frees the reserve's blocks (before a shed). Errors are ignored: no reserve, no room.
    pub(crate) fn release(&self) {
        drop(std::fs::remove_file(&self.path));
    }

    /// Writes the reserve up to its full size, or as far as the disk takes it (a partial
    /// reserve is kept). Cheap when it is whole: one `stat`.
    pub(crate) fn fill(&self) {
        use std::os::unix::fs::OpenOptionsExt;
        let have = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if have >= RESERVE_BYTES {
            return;
        }
        let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
        else {
            return;
        };
        // Zeros written, not a sparse `set_len`: a hole would reserve nothing.
        const CHUNK: [u8; 4096] = [0; 4096];
        let mut len = have;
        while len < RESERVE_BYTES {
            if self
                .room
                .as_ref()
                .is_some_and(|room| !room(&self.path, 4096))
            {
                break;
            }
            if f.write_all(&CHUNK).is_err() {
                break;
            }
            len += 4096;
        }
        // Blocks a failed write may have left half-taken are given back to the disk.
        drop(f.set_len(len.min(RESERVE_BYTES)));
        drop(f.sync_data());
    }
}

/// `<cache>.reserve`, beside the cache file.
pub(crate) fn path_for(cache: &Path) -> PathBuf {
    cache.with_extension("reserve")
}
