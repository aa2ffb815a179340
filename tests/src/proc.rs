//! Starting a daemon of the harness ([`crate::kms::Kms`], [`crate::storage::Storage`]): spawn
//! it with piped output, collect everything it prints into a shared log buffer, and wait for its
//! `listening on URL` line (the daemons print it once the listener is bound), no sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// Spawn `cmd` (killed on drop; `NO_COLOR`), append its stderr and stdout lines to `logs`, and
/// return it with the URL of its `listening on` line. Panics with `what` and the logs when the
/// process exits before printing it.
pub async fn spawn_listening(
    mut cmd: Command,
    what: &str,
    logs: &Arc<Mutex<Vec<u8>>>,
) -> (Child, String) {
    cmd.env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let stdout_line = |logs: &Arc<Mutex<Vec<u8>>>, line: &str| {
        logs.lock()
            .unwrap()
            .extend_from_slice(format!("[stdout] {line}\n").as_bytes());
    };
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut url = None;
    while let Ok(Some(line)) = lines.next_line().await {
        stdout_line(logs, &line);
        if let Some(u) = line.strip_prefix("listening on ") {
            url = Some(u.trim().to_string());
            break;
        }
    }
    let sink = logs.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            stdout_line(&sink, &line);
        }
    });
    match url {
        Some(u) => (child, u),
        None => {
            let status = child.wait().await;
            let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
            panic!("{what} exited before ready ({status:?}):\n{text}");
        }
    }
}
