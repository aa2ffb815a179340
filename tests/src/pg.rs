//! A throwaway PostgreSQL 15 server for the integration tests (`scripts/pg-test-server`: initdb
//! into a temp dir, loopback only, trust authentication, fsync off), and fresh databases on it.
//! [`PgServer::start`] gives a server stopped and removed when the value drops;
//! [`PgServer::shared`] one server per test process, stopped when the process exits (a watchdog
//! shell waits for EOF on a pipe only this process holds, so even a panicking or killed test
//! binary leaves no server behind). Test support: a failure to start panics the test.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

/// A running test server.
pub struct PgServer {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    dir: String,
    /// `Some` for the shared server: its stop is the watchdog's, at process exit.
    watchdog: Option<(ChildStdin, Child)>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("scripts/pg-test-server")
}

impl PgServer {
    /// Start a server of one's own (stopped and removed on drop).
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let out = Command::new(script())
            .args(["start", &port.to_string()])
            .output()
            .expect("run scripts/pg-test-server");
        assert!(
            out.status.success(),
            "pg-test-server: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8 output");
        let mut lines = text.lines();
        Self {
            url: lines.next().expect("url line").to_string(),
            dir: lines.next().expect("dir line").to_string(),
            watchdog: None,
        }
    }

    /// The test process's one shared server (started on first use).
    pub fn shared() -> &'static PgServer {
        static SERVER: OnceLock<PgServer> = OnceLock::new();
        SERVER.get_or_init(|| {
            let mut s = Self::start();
            let mut child = Command::new("sh")
                .arg("-c")
                .arg("cat >/dev/null; exec \"$0\" stop \"$1\"")
                .arg(script())
                .arg(&s.dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn the watchdog");
            let stdin = child.stdin.take().expect("watchdog stdin");
            s.watchdog = Some((stdin, child));
            s
        })
    }

    /// Create database `name` (a plain identifier); its URL.
    pub async fn database(&self, name: &str) -> String {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect to the test server");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .expect("create database");
        let base = self.url.rsplit_once('/').expect("url has a path").0;
        format!("{base}/{name}")
    }

    /// A new database with a random name; its URL.
    pub async fn fresh_database(&self) -> String {
        self.database(&format!("t_{}", uuid::Uuid::new_v4().simple()))
            .await
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.watchdog.is_none() {
            let _ = Command::new(script()).args(["stop", &self.dir]).status();
        }
    }
}
