//! Whether the data dir's file system has room: a blob write that failed with ENOSPC/EDQUOT or a
//! metadata write that failed with SQLITE_FULL marks it full; writes are then answered
//! `503 ServiceUnavailable` with `Retry-After` and `/ready` names the full disk. Nothing needs a
//! restart: writes are tried as they come (each fails or succeeds on its own), and while the
//! mark is set each `/ready` probes by writing, syncing and removing a small file under `tmp/`,
//! clearing the mark when that succeeds.
//!
//! Secret: none. Atomic: the probe file is removed whether or not the probe succeeds.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::meta::DbError;

/// SQLite's primary result code for "database or disk is full".
const SQLITE_FULL: i32 = 13;

/// Bytes the readiness probe writes: enough for a metadata commit of a few pages.
const PROBE_BYTES: usize = 64 * 1024;

/// True for an I/O error that means the file system has no room (ENOSPC) or the quota is spent.
pub fn io_is_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(
            rustix::io::Errno::from_io_error(e),
            Some(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT)
        )
}

/// True for a metadata error that means the disk is full (SQLITE_FULL, or ENOSPC below it).
pub fn db_is_full(e: &DbError) -> bool {
    match e {
        DbError::Database(d) if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == SQLITE_FULL),
        DbError::Database(_) => super::db::pg_is_full(e),
        DbError::Io(io) => io_is_full(io),
        _ => false,
    }
}

/// The data dir's "disk full" mark.
pub struct DiskHealth {
    full: AtomicBool,
    tmp: PathBuf,
}

impl DiskHealth {
    /// Probes write under `tmp` (the data dir's `tmp/`).
    pub fn new(tmp: &Path) -> Self {
        Self {
            full: AtomicBool::new(false),
            tmp: tmp.to_path_buf(),
        }
    }

    /// A write failed for lack of space.
    pub fn mark_full(&self) {
        if !self.full.swap(true, Ordering::AcqRel) {
            tracing::warn!(dir = %self.tmp.display(), "data dir file system is full: writes answer 503 until space is freed");
        }
    }

    /// A write committed: there was room.
    pub fn mark_ok(&self) {
        if self.full.swap(false, Ordering::AcqRel) {
            tracing::info!("data dir file system has room again");
        }
    }

    pub fn is_marked_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Whether the disk is still full: when marked, probe with a small synced write and clear
    /// the mark if it fits. Never marks full by itself when unmarked.
    pub async fn still_full(&self) -> bool {
        if !self.is_marked_full() {
            return false;
        }
        let path = self
            .tmp
            .join(format!("ready-probe-{}", uuid::Uuid::new_v4().simple()));
        let fits = tokio::task::spawn_blocking(move || {
            let r = (|| {
                let mut f = std::fs::File::create(&path)?;
                f.write_all(&[0u8; PROBE_BYTES])?;
                f.sync_all()
            })();
            let _ = std::fs::remove_file(&path);
            r.is_ok()
        })
        .await
        .unwrap_or(false);
        if fits {
            self.mark_ok();
        }
        !fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    #[test]
    fn classifies_enospc_and_sqlite_full() {
        assert!(io_is_full(&std::io::Error::from(Errno::NOSPC)));
        assert!(io_is_full(&std::io::Error::from(Errno::DQUOT)));
        assert!(!io_is_full(&std::io::Error::from(Errno::IO)));
        assert!(db_is_full(&DbError::Io(std::io::Error::from(Errno::NOSPC))));
        assert!(!db_is_full(&DbError::RowNotFound));
    }

    #[tokio::test]
    async fn mark_clears_when_a_probe_fits() {
        let dir = tempfile::tempdir().unwrap();
        let h = DiskHealth::new(dir.path());
        assert!(!h.still_full().await);
        h.mark_full();
        assert!(h.is_marked_full());
        assert!(
            !h.still_full().await,
            "a directory with room clears the mark"
        );
        assert!(!h.is_marked_full());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
