//! One daemon per data directory.
//!
//! Two daemons writing one fail-cache or WAL would resend each other's bodies, delete each
//! other's entries and corrupt nothing only by luck; on a fleet this happens when a service
//! and a hand-started copy (on another port) share the default paths. So each directory is
//! claimed with an advisory lock on `dataway.lock` in it, held for the daemon's life, and
//! the file says who holds it: a second daemon is refused at start with a message naming
//! the directory and the holder. The kernel drops the lock when the holder exits, however
//! it exits (kill -9 included), so a stale file never blocks a restart.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name inside a claimed directory.
pub const LOCK_FILE: &str = "dataway.lock";

/// A directory claimed by this daemon; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    _file: File,
}

impl DirLock {
    /// The claimed directory.
    pub fn dir(&self) -> &Path {
        &self.path
    }
}

/// Why a directory could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "{key}: {dir} is in use by another dataway ({holder}); stop it, or give this one a \
         directory of its own"
    )]
    Held {
        key: &'static str,
        dir: String,
        holder: String,
    },
    #[error("{key}: cannot lock {path}: {source}")]
    Io {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// Claims `dir` (made if missing) for this process, described by `me` (written into the
/// lock file for whoever is refused next). `key` is the config key that names `dir`, for
/// the error.
pub fn claim(dir: &Path, key: &'static str, me: &str) -> Result<DirLock, ClaimError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| ClaimError::Io {
        key,
        path: path.display().to_string(),
        source,
    };
    // The directories hold customer data: made 0700 here as their owners make them.
    crate::failcache::private_dir(dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // Best effort: the holder wrote who it is right after locking.
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(ClaimError::Held {
                key,
                dir: std::path::absolute(dir)
                    .unwrap_or_else(|_| dir.to_path_buf())
                    .display()
                    .to_string(),
                holder: if holder.is_empty() {
                    "it did not say who it is".to_string()
                } else {
                    holder.to_string()
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{me}").map_err(io)?;
    Ok(DirLock {
        path: dir.to_path_buf(),
        _file: file,
    })
}

/// This process, as a lock file describes it: `pid 1234, ingest 127.0.0.1:9529`.
pub fn describe_self(listen: &str) -> String {
    format!("pid {}, ingest {listen}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claimed directory is refused to a second claim, which names the holder; once the
    /// first is dropped it can be claimed again.
    #[test]
    fn a_directory_is_claimed_once_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("cache");
        let first = claim(&sub, "dataway.fail_cache.path", "pid 1, ingest a:1").unwrap();
        assert_eq!(first.dir(), sub);
        let err = claim(&sub, "dataway.fail_cache.path", "pid 2, ingest b:2").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("dataway.fail_cache.path: "), "{msg}");
        assert!(
            msg.contains("in use by another dataway (pid 1, ingest a:1)"),
            "{msg}"
        );
        drop(first);
        let again = claim(&sub, "dataway.fail_cache.path", "pid 3, ingest c:3").unwrap();
        assert_eq!(
            std::fs::read_to_string(sub.join(LOCK_FILE)).unwrap(),
            "pid 3, ingest c:3\n"
        );
        drop(again);
    }
}
