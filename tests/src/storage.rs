//! Process harness for `coffer-storage serve`: builds the binary once when stale (or uses
//! `COFFER_BIN_DIR`), runs it on 127.0.0.1:0 with a data dir in a temp dir and the given
//! arguments and environment, learns its URL from the `listening on` line (no sleeps), and keeps
//! every byte it prints; the logs are dumped when a test panics. `kill9` is SIGKILL (a crash).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::process::{Child, Command};

use crate::kms::ensure_built;

/// Path of the coffer-storage binary (built when older than its sources).
pub fn storage_bin() -> PathBuf {
    ensure_built(
        "coffer-storage",
        "coffer-storage",
        &[
            "storage/src",
            "storage/Cargo.toml",
            "common/src",
            "migrations/storage",
            "migrations/storage_pg",
        ],
    )
    .join("coffer-storage")
}

/// A `coffer-storage serve` data dir and (when started) its process.
pub struct Storage {
    /// Label of the logs dumped on a panic.
    pub name: String,
    pub tmp: tempfile::TempDir,
    pub data_dir: PathBuf,
    /// Arguments after `serve --data-dir D --listen 127.0.0.1:0`.
    pub args: Vec<String>,
    /// Environment (e.g. `COFFER_S3_ACCESS_KEY`, `COFFER_S3_SECRET_KEY`).
    pub env: Vec<(String, String)>,
    /// `http://127.0.0.1:PORT` once started.
    pub url: String,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<u8>>>,
}

impl Storage {
    /// A node in a fresh temp dir; not started.
    pub fn new(name: &str, args: &[String], env: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        Self {
            name: name.to_string(),
            tmp,
            data_dir,
            args: args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            url: String::new(),
            child: None,
            logs: Arc::default(),
        }
    }

    /// `host:port` of the listener (after `start`).
    pub fn host(&self) -> &str {
        self.url.split("://").nth(1).unwrap_or_default()
    }

    /// Start `serve` and wait for its `listening on` line.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(storage_bin());
        cmd.args([
            "serve",
            "--data-dir",
            self.data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(&self.args)
        .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let what = format!("coffer-storage ({})", self.name);
        let (child, url) = crate::proc::spawn_listening(cmd, &what, &self.logs).await;
        self.url = url.trim_end_matches('/').to_string();
        self.child = Some(child);
    }

    /// SIGKILL the process and reap it.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.start_kill().unwrap();
            let _ = c.wait().await;
        }
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== coffer-storage {} logs ({}) =====\n{}\n===== end =====",
                self.name,
                self.data_dir.display(),
                self.logs()
            );
        }
    }
}
