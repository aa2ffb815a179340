//! Reading and writing secret files (passphrases, credentials, TLS keys).
//!
//! Secret files are written with mode 0600 and refused at read time when group or others can
//! read them (`mode & 0o077 != 0`), with a message that names the file and the fix.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Why a secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file is readable by group or others.
    #[error(
        "secret file {path} is accessible by group or others (mode {mode:o}); run: chmod 600 {path}"
    )]
    TooOpen { path: String, mode: u32 },
    /// The file could not be read or written.
    #[error("secret file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Read a secret file after checking that only its owner can access it.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let p = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Io {
        path: p.clone(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen { path: p, mode });
    }
    std::fs::read(path).map_err(|source| SecretFileError::Io { path: p, source })
}

/// Create a new secret file with mode 0600; refuses to overwrite an existing file.
pub fn write_new_secret_file(path: &Path, contents: &[u8]) -> Result<(), SecretFileError> {
    let p = path.display().to_string();
    let io = |source| SecretFileError::Io {
        path: p.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_world_readable_and_accepts_0600() {
        let dir = std::env::temp_dir().join(format!("coffer-sf-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let f = dir.join("s");
        let _ = std::fs::remove_file(&f);
        assert!(write_new_secret_file(&f, b"x").is_ok());
        assert_eq!(read_secret_file(&f).ok(), Some(b"x".to_vec()));
        assert!(
            write_new_secret_file(&f, b"y").is_err(),
            "must not overwrite"
        );
        let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644));
        let err = read_secret_file(&f)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("chmod 600"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
