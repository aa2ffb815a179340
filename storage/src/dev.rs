//! `coffer-storage dev`: the whole system on one machine for local use. Prepares a data dir
//! (dev passphrase, local CA and loopback certificates, S3 credentials), initializes a KMS the
//! first time, runs `coffer-kms serve` as a separate child process over TLS, enrolls this node as
//! a service identity, and writes `dev.env`. A second run reuses everything.
//!
//! The KMS child is supervised: restarted with back-off when it dies ([`Supervisor`]), stopped
//! when `dev` dies (it watches its stdin, a pipe only `dev` holds), and one left running by an
//! earlier `dev` is replaced at start ([`replace_stale_kms`]).
//!
//! Secret: the dev passphrase, TLS keys, the service credential and the S3 secret; all are files
//! with mode 0600 under the data dir, loudly labelled dev-only. This is CLI code (anyhow errors).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use coffer_common::secret_file::write_new_secret_file;
use rand::RngCore;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// Files of a dev deployment.
pub struct DevPaths {
    pub root: PathBuf,
    pub kms_dir: PathBuf,
    pub storage_dir: PathBuf,
    pub passphrase: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub kms_cert: PathBuf,
    pub kms_key: PathBuf,
    pub s3_cert: PathBuf,
    pub s3_key: PathBuf,
    pub service_credential: PathBuf,
    pub s3_credentials: PathBuf,
    pub env_file: PathBuf,
}

impl DevPaths {
    /// Paths under `root`, made absolute so that `dev.env` works from any directory.
    pub fn new(root: &Path) -> Self {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let root = root.as_path();
        let tls = root.join("tls");
        Self {
            root: root.to_path_buf(),
            kms_dir: root.join("kms"),
            storage_dir: root.join("storage"),
            passphrase: root.join("DEV-ONLY-kms-passphrase"),
            ca_cert: tls.join("ca.pem"),
            ca_key: tls.join("ca.key"),
            kms_cert: tls.join("kms.pem"),
            kms_key: tls.join("kms.key"),
            s3_cert: tls.join("s3.pem"),
            s3_key: tls.join("s3.key"),
            service_credential: root.join("storage.credential"),
            s3_credentials: root.join("s3-credentials"),
            env_file: root.join("dev.env"),
        }
    }
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

/// S3 access key and secret of the dev deployment.
pub struct DevS3Credentials {
    pub access_key: String,
    pub secret_key: String,
}

/// Create what is missing: dirs, dev passphrase, CA + certificates, S3 credentials.
pub fn prepare(p: &DevPaths) -> Result<DevS3Credentials> {
    for d in [&p.root, &p.storage_dir, &p.root.join("tls")] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    if !p.passphrase.exists() {
        let pass = format!("DEV-ONLY-{}\n", random_token(40));
        write_new_secret_file(&p.passphrase, pass.as_bytes())?;
        eprintln!(
            "WARNING: generated a DEVELOPMENT-ONLY KMS passphrase in {} (never use dev mode in production)",
            p.passphrase.display()
        );
    }
    if !p.ca_cert.exists() {
        let ca = coffer_common::tls::generate_ca()?;
        write_new_secret_file(&p.ca_key, ca.key_pem.as_bytes())?;
        std::fs::write(&p.ca_cert, &ca.cert_pem)?;
    }
    let ca_key = zeroize::Zeroizing::new(String::from_utf8(
        coffer_common::secret_file::read_secret_file(&p.ca_key)?,
    )?);
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for (cert, key) in [(&p.kms_cert, &p.kms_key), (&p.s3_cert, &p.s3_key)] {
        if !cert.exists() {
            let c = coffer_common::tls::issue_server_cert(&ca_key, &names)?;
            let _ = std::fs::remove_file(key);
            write_new_secret_file(key, c.key_pem.as_bytes())?;
            std::fs::write(cert, &c.cert_pem)?;
        }
    }
    if !p.s3_credentials.exists() {
        let body = format!(
            "{}\n{}\n",
            random_token(20).to_ascii_uppercase(),
            random_token(40)
        );
        write_new_secret_file(&p.s3_credentials, body.as_bytes())?;
    }
    let raw = String::from_utf8(coffer_common::secret_file::read_secret_file(
        &p.s3_credentials,
    )?)?;
    let mut lines = raw.lines();
    match (lines.next(), lines.next()) {
        (Some(a), Some(s)) => Ok(DevS3Credentials {
            access_key: a.trim().into(),
            secret_key: s.trim().into(),
        }),
        _ => bail!(
            "{} is not 'ACCESS_KEY\\nSECRET_KEY'",
            p.s3_credentials.display()
        ),
    }
}

/// The coffer-kms binary next to this executable.
pub fn kms_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("coffer-kms");
    if !bin.exists() {
        bail!(
            "coffer-kms not found next to {} (build the workspace: cargo build --release --workspace)",
            me.display()
        );
    }
    Ok(bin)
}

/// Initialize the KMS if its data dir is new.
pub async fn init_kms_if_needed(p: &DevPaths, kms: &Path) -> Result<()> {
    if p.kms_dir.join("admin.credential").exists() {
        return Ok(());
    }
    let status = Command::new(kms)
        .arg("init")
        .arg("--data-dir")
        .arg(&p.kms_dir)
        .arg("--passphrase-file")
        .arg(&p.passphrase)
        // dev has its own CA and KMS certificate under DIR/tls (passed to serve).
        .arg("--no-tls-certs")
        .stdout(Stdio::null())
        .status()
        .await
        .context("running coffer-kms init")?;
    if !status.success() {
        bail!("coffer-kms init failed ({status})");
    }
    Ok(())
}

/// A running `coffer-kms serve` child.
pub struct KmsChild {
    pub child: Child,
    /// The write end of the child's stdin: the child stops when it closes, so when `dev` dies,
    /// however it dies, the kernel closes it and the child follows.
    pub stdin: ChildStdin,
    pub url: String,
}

/// Start `coffer-kms serve` over TLS and wait for its `listening on` line.
pub async fn start_kms(p: &DevPaths, kms: &Path, listen: &str) -> Result<KmsChild> {
    let mut child = Command::new(kms)
        .arg("serve")
        .arg("--data-dir")
        .arg(&p.kms_dir)
        .arg("--listen")
        .arg(listen)
        .arg("--passphrase-file")
        .arg(&p.passphrase)
        .arg("--tls-cert")
        .arg(&p.kms_cert)
        .arg("--tls-key")
        .arg(&p.kms_key)
        .arg("--exit-on-stdin-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C reaches only `dev`, which then stops the
        // child in order (SIGTERM, last audit checkpoint) instead of both dying at once.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting coffer-kms serve")?;
    let stdin = child.stdin.take().context("no stdin")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.strip_prefix("listening on ") {
            let url = url.trim().to_string();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(KmsChild { child, stdin, url });
        }
    }
    bail!(
        "coffer-kms exited before it was ready ({})",
        child.wait().await?
    )
}

/// The command line of process `pid`, arguments joined by spaces (empty if it is gone).
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// True while `dir` is locked by a KMS (its lock is held).
fn kms_dir_locked(dir: &Path) -> Option<coffer_common::data_dir_lock::LockError> {
    coffer_common::data_dir_lock::DataDirLock::acquire(dir, "coffer-kms", "coffer-kms").err()
}

/// A `coffer-kms serve` left running on this deployment's KMS data dir by an earlier `dev`
/// (this `dev` holds the deployment's lock, so no live `dev` owns it) is stopped (SIGTERM, then
/// SIGKILL after 10 s) and replaced. Anything else holding the dir is named in the error.
pub async fn replace_stale_kms(p: &DevPaths) -> Result<()> {
    use coffer_common::data_dir_lock::LockError;
    if !p.kms_dir.is_dir() {
        return Ok(());
    }
    let (pid, holder) = match kms_dir_locked(&p.kms_dir) {
        None => return Ok(()),
        Some(LockError::Held { pid, holder, .. }) => (pid, holder),
        Some(e) => return Err(e.into()),
    };
    let Some(n) = pid.parse::<u32>().ok().filter(|n| *n > 1) else {
        bail!(
            "the KMS data dir {} is in use by {holder} (pid {pid}); stop it first",
            p.kms_dir.display()
        );
    };
    let cmd = cmdline(n);
    let ours = cmd.contains("coffer-kms")
        && cmd.contains(" serve ")
        && cmd.contains(&*p.kms_dir.to_string_lossy());
    if !ours {
        bail!(
            "the KMS data dir {} is in use by pid {n} ({}); stop it first",
            p.kms_dir.display(),
            if cmd.is_empty() { holder } else { cmd }
        );
    }
    tracing::warn!(
        pid = n,
        "a coffer-kms left running by an earlier dev holds the KMS data dir: stopping it"
    );
    for (signal, wait) in [(Signal::TERM, 100), (Signal::KILL, 50)] {
        signal_pid(n, signal);
        for _ in 0..wait {
            if kms_dir_locked(&p.kms_dir).is_none() {
                eprintln!("replaced a stale coffer-kms (pid {n}) left by an earlier dev run");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    bail!(
        "the stale coffer-kms (pid {n}) on {} did not exit",
        p.kms_dir.display()
    )
}

/// Send `signal` to process `pid` (errors, such as the process being gone, are ignored).
pub fn signal_pid(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// First and longest pause before restarting a KMS child that died.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// A child that ran this long before dying restarts after the shortest pause again.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// Keeps the KMS child running: when it dies, key requests answer 503 (cached keys are
/// dropped), and it is restarted on the same address after a pause that doubles from 0.5 s to
/// 30 s while restarts fail or the child keeps dying young. [`Supervisor::stop`] stops it.
pub struct Supervisor {
    pid: Arc<AtomicU32>,
    stopping: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Supervise `first`, restarting it as `kms` on its address.
    pub fn start(
        p: DevPaths,
        kms: PathBuf,
        first: KmsChild,
        keys: Arc<crate::crypto::key_cache::BucketKeys>,
    ) -> Self {
        let pid = Arc::new(AtomicU32::new(first.child.id().unwrap_or(0)));
        let stopping = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(tokio::sync::Notify::new());
        let listen = first
            .url
            .split_once("://")
            .map_or(first.url.clone(), |(_, a)| a.to_string());
        let (pid2, stopping2, wake2) = (pid.clone(), stopping.clone(), wake.clone());
        let task = tokio::spawn(async move {
            let mut current = first;
            let mut backoff = RESTART_BACKOFF.0;
            loop {
                let started = std::time::Instant::now();
                let status = current.child.wait().await;
                if stopping2.load(Ordering::SeqCst) {
                    tracing::info!(?status, "the KMS child process stopped");
                    return;
                }
                keys.disable();
                if started.elapsed() >= STABLE_RUN {
                    backoff = RESTART_BACKOFF.0;
                }
                tracing::error!(
                    ?status,
                    "the KMS child process exited: key-dependent requests answer 503 until it is restarted"
                );
                loop {
                    tracing::warn!(after = ?backoff, "restarting the KMS child");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = wake2.notified() => {}
                    }
                    if stopping2.load(Ordering::SeqCst) {
                        return;
                    }
                    backoff = (backoff * 2).min(RESTART_BACKOFF.1);
                    match start_kms(&p, &kms, &listen).await {
                        Ok(next) => {
                            let id = next.child.id().unwrap_or(0);
                            pid2.store(id, Ordering::SeqCst);
                            current = next;
                            keys.enable();
                            tracing::warn!(pid = id, "the KMS child process was restarted");
                            println!("KMS restarted (child pid {id})");
                            break;
                        }
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "restarting the KMS child failed")
                        }
                    }
                }
            }
        });
        Self {
            pid,
            stopping,
            wake,
            task,
        }
    }

    /// Pid of the current child.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Stop the child cleanly (SIGTERM: it signs a last audit checkpoint) and wait for it, at
    /// most 10 s (then it is killed as the supervisor drops it).
    pub async fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let pid = self.pid();
        if pid != 0 {
            signal_pid(pid, Signal::TERM);
        }
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(10), &mut task)
            .await
            .is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Enroll this node as a service identity the first time.
pub async fn enroll_if_needed(p: &DevPaths, kms: &Path, url: &str) -> Result<()> {
    if p.service_credential.exists() {
        return Ok(());
    }
    let status = Command::new(kms)
        .env("COFFER_KMS_CA", &p.ca_cert)
        .arg("admin")
        .arg("--url")
        .arg(url)
        .arg("--ca-file")
        .arg(&p.ca_cert)
        .arg("--credential")
        .arg(p.kms_dir.join("admin.credential"))
        .args([
            "client",
            "create",
            "storage-dev",
            "--buckets",
            "*",
            "--ops",
            "generate,unwrap",
            "--keys",
            "*",
            "--out",
        ])
        .arg(&p.service_credential)
        .stdout(Stdio::null())
        .status()
        .await
        .context("running coffer-kms admin client create")?;
    if !status.success() {
        bail!("enrolling the storage node at the KMS failed ({status})");
    }
    Ok(())
}

/// Write `dev.env` (shell-sourceable, absolute paths): the S3 endpoint and credentials, the CA of
/// both listeners, and what the admin CLI needs (KMS URL, admin credential, the `coffer-kms`
/// binary, the audit public key).
pub fn write_env(
    p: &DevPaths,
    endpoint: &str,
    creds: &DevS3Credentials,
    kms_url: &str,
    kms_bin: &Path,
) -> Result<()> {
    let body = format!(
        "# Coffer DEV deployment (development only). Source it: . {env}\n\
         ENDPOINT={endpoint}\nACCESS_KEY={}\nSECRET_KEY={}\nCA_BUNDLE={}\n\
         KMS_URL={kms_url}\nKMS_ADMIN_CREDENTIAL={}\nKMS_BIN={}\nAUDIT_PUB={}\n",
        creds.access_key,
        creds.secret_key,
        p.ca_cert.display(),
        p.kms_dir.join("admin.credential").display(),
        kms_bin.display(),
        p.kms_dir.join("audit.pub").display(),
        env = p.env_file.display(),
    );
    let _ = std::fs::remove_file(&p.env_file);
    write_new_secret_file(&p.env_file, body.as_bytes())?;
    Ok(())
}
