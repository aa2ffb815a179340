//! One process per data directory. Each daemon (`coffer-storage serve`/`dev`, `coffer-kms
//! serve`) takes an exclusive advisory lock (`flock`, through `std::fs::File::try_lock`) on a
//! lock file in its data dir before it touches anything there, and holds it until it exits; the
//! kernel drops it when the process dies, however it dies, so a stale file never blocks a start.
//! The holder writes its pid into the file, so a second process refuses to start with one line
//! naming that pid. The file is never removed (removing it would let two processes lock two
//! different files of the same name).
//!
//! Secret: none. Atomic: the lock is taken before the pid is written; a reader that races the
//! holder's write sees no pid and says so.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a data dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "data dir {dir} is in use by {holder} (pid {pid}, lock file {file}); refusing to start"
    )]
    Held {
        dir: PathBuf,
        holder: String,
        pid: String,
        file: PathBuf,
    },
    #[error("cannot lock data dir {dir} ({file}): {source}")]
    Io {
        dir: PathBuf,
        file: PathBuf,
        source: std::io::Error,
    },
}

/// A held data dir lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Lock `dir` (which must exist) through `dir/<name>.lock` for `holder` (e.g.
    /// `coffer-storage`), writing our pid into the file.
    pub fn acquire(dir: &Path, name: &str, holder: &str) -> Result<Self, LockError> {
        let path = dir.join(format!("{name}.lock"));
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            file: path.clone(),
            source,
        };
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
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let (who, pid) = parse_holder(&text);
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder: who.unwrap_or(holder).to_string(),
                    pid: pid.unwrap_or("unknown").to_string(),
                    file: path,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{} {}", std::process::id(), holder).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `"<pid> <holder>\n"` → (holder, pid).
fn parse_holder(text: &str) -> (Option<&str>, Option<&str>) {
    let line = text.lines().next().unwrap_or_default().trim();
    let (pid, who) = line.split_once(' ').unwrap_or((line, ""));
    let pid = (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid);
    let who = (!who.trim().is_empty()).then(|| who.trim());
    (who, pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_pid_and_a_released_one_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), "coffer-test", "coffer-test serve").unwrap();
        let text = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(text, format!("{} coffer-test serve\n", std::process::id()));
        // flock locks belong to the open file description: a second open in the same process
        // conflicts like another process would.
        let err = DataDirLock::acquire(dir.path(), "coffer-test", "other").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("coffer-test serve"), "{msg}");
        assert!(!msg.contains('\n'));
        drop(first);
        DataDirLock::acquire(dir.path(), "coffer-test", "again").unwrap();
    }

    #[test]
    fn holder_lines_parse() {
        assert_eq!(
            parse_holder("42 coffer-kms\n"),
            (Some("coffer-kms"), Some("42"))
        );
        assert_eq!(parse_holder(""), (None, None));
        assert_eq!(parse_holder("x y"), (Some("y"), None));
    }
}
