//! `coffer-storage dev`: the whole system on one machine for local use. Prepares a data dir
//! (dev passphrase, local CA and loopback certificates, S3 credentials), initializes a KMS the
//! first time, runs `coffer-kms serve` as a separate child process over TLS, enrolls this node as
//! a service identity, and writes `dev.env`. A second run reuses everything.
//!
//! Secret: the dev passphrase, TLS keys, the service credential and the S3 secret; all are files
//! with mode 0600 under the data dir, loudly labelled dev-only. This is CLI code (anyhow errors).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use coffer_common::secret_file::write_new_secret_file;
use rand::RngCore;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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

/// Start `coffer-kms serve` over TLS and wait for its `listening on` line.
pub async fn start_kms(p: &DevPaths, kms: &Path, listen: &str) -> Result<(Child, String)> {
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
        .stdout(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C reaches only `dev`, which then stops the
        // child in order (SIGTERM, last audit checkpoint) instead of both dying at once.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting coffer-kms serve")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.strip_prefix("listening on ") {
            let url = url.trim().to_string();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, url));
        }
    }
    bail!(
        "coffer-kms exited before it was ready: {:?}",
        child.wait().await?
    )
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
