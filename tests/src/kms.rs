//! Process harness for `coffer-kms`: builds the binary once (`cargo build -p coffer-kms`, or uses
//! `COFFER_BIN_DIR`), initializes a data dir in a temp dir with a random passphrase and the dev
//! Argon2 profile, runs `serve` on 127.0.0.1:0 over HTTPS with the certificates init generated
//! (the production default) and learns the port from its `listening on` line (no sleeps), and
//! keeps every byte the processes print. When a test panics, the logs are dumped on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use coffer_common::credential::Credential;
use coffer_common::kms_api::{
    ErrorBody, GenerateDataKeyRequest, GenerateDataKeyResponse, PATH_GENERATE, PATH_UNWRAP,
    UnwrapDataKeyRequest, UnwrapDataKeyResponse,
};
use tokio::process::{Child, Command};

/// Directory holding the built binaries (`COFFER_BIN_DIR`, else `target/debug`, with coffer-kms
/// built once when stale).
pub fn bin_dir() -> PathBuf {
    ensure_built(
        "coffer-kms",
        "coffer-kms",
        &[
            "kms/src",
            "kms/Cargo.toml",
            "common/src",
            "migrations/kms",
            "migrations/kms_pg",
        ],
    )
}

/// The directory of the built binaries (`COFFER_BIN_DIR` as is, else `target/debug`), after
/// `cargo build -p PACKAGE --bin BIN` when the binary is older than one of `sources` (paths from
/// the workspace root); at most once per binary and test process.
pub fn ensure_built(package: &str, bin: &str, sources: &[&str]) -> PathBuf {
    if let Ok(d) = std::env::var("COFFER_BIN_DIR") {
        return PathBuf::from(d);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let path = target.join("debug").join(bin);
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == bin) {
        // Skip the build when the binary is newer than every source it is made from (a rebuild
        // under another feature set would only relink it).
        let newest = sources
            .iter()
            .filter_map(|s| newest_mtime(&root.join(s)))
            .max();
        let made = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let fresh = matches!((newest, made), (Some(n), Some(m)) if m >= n);
        if !fresh {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "-q", "-p", package, "--bin", bin])
                .current_dir(&root)
                .status()
                .unwrap_or_else(|e| panic!("running cargo build -p {package}: {e}"));
            assert!(status.success(), "cargo build -p {package} failed");
        }
        built.push(bin.to_string());
    }
    target.join("debug")
}

fn newest_mtime(p: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(p).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(p)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// Path of the coffer-kms binary.
pub fn kms_bin() -> PathBuf {
    bin_dir().join("coffer-kms")
}

/// A KMS data dir and (when started) its serving process.
pub struct Kms {
    pub tmp: tempfile::TempDir,
    pub data_dir: PathBuf,
    /// The planted passphrase (random per harness).
    pub passphrase: String,
    pub passphrase_file: PathBuf,
    /// Extra environment for `serve`.
    pub env: Vec<(String, String)>,
    /// Extra arguments for `serve` (e.g. `--require-client-cert`).
    pub serve_args: Vec<String>,
    pub url: String,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<u8>>>,
}

impl Kms {
    /// `coffer-kms init` in a fresh temp dir (dev Argon2 profile).
    pub async fn init() -> Self {
        Self::init_with(&[]).await
    }

    /// [`Kms::init`] on a PostgreSQL database (`init --database-url`); `serve` gets the same URL.
    pub async fn init_pg(database_url: &str) -> Self {
        let mut kms = Self::init_with(&["--database-url", database_url]).await;
        kms.env
            .push(("COFFER_KMS_DATABASE_URL".into(), database_url.into()));
        kms
    }

    /// Another replica of an initialized KMS on PostgreSQL: a data dir of its own holding a
    /// copy of `tls/`, `audit.pub` and the admin credential, the same passphrase, environment and
    /// serve arguments (`docs/kms-replicas.md`). Not started.
    pub fn replica(&self) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let tls = data_dir.join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        for e in std::fs::read_dir(self.data_dir.join("tls")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), tls.join(e.file_name())).unwrap();
        }
        for f in ["audit.pub", "admin.credential"] {
            std::fs::copy(self.data_dir.join(f), data_dir.join(f)).unwrap();
        }
        let passphrase_file = tmp.path().join("passphrase");
        coffer_common::secret_file::write_new_secret_file(
            &passphrase_file,
            self.passphrase.as_bytes(),
        )
        .unwrap();
        Self {
            tmp,
            data_dir,
            passphrase: self.passphrase.clone(),
            passphrase_file,
            env: self.env.clone(),
            serve_args: self.serve_args.clone(),
            url: String::new(),
            child: None,
            logs: Arc::default(),
        }
    }

    /// `coffer-kms init` with extra arguments.
    pub async fn init_with(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let passphrase = format!("planted-pass-{}", uuid::Uuid::new_v4().simple());
        let passphrase_file = tmp.path().join("passphrase");
        coffer_common::secret_file::write_new_secret_file(&passphrase_file, passphrase.as_bytes())
            .unwrap();
        let kms = Self {
            tmp,
            data_dir,
            passphrase,
            passphrase_file,
            env: Vec::new(),
            serve_args: Vec::new(),
            url: String::new(),
            child: None,
            logs: Arc::default(),
        };
        let mut args = vec![
            "init",
            "--data-dir",
            kms.data_dir.to_str().unwrap(),
            "--passphrase-file",
            kms.passphrase_file.to_str().unwrap(),
            "--argon2",
            "dev",
        ];
        args.extend_from_slice(extra);
        let out = kms.cli(&args).await;
        assert!(out.status.success(), "init failed:\n{}", kms.logs());
        kms
    }

    /// Start `serve` and wait for its `listening on` line.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new(kms_bin());
        cmd.args([
            "serve",
            "--data-dir",
            self.data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--passphrase-file",
            self.passphrase_file.to_str().unwrap(),
            "--no-mlock",
        ])
        .args(&self.serve_args)
        .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let (child, url) = crate::proc::spawn_listening(cmd, "coffer-kms", &self.logs).await;
        self.url = url;
        self.child = Some(child);
    }

    /// SIGKILL the server and reap it.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.start_kill().unwrap();
            let _ = c.wait().await;
        }
    }

    /// SIGTERM the server and wait for a clean exit.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("not running");
        let pid = c.id().expect("pid").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        c.wait().await.unwrap()
    }

    fn log(&self, s: &str) {
        self.logs.lock().unwrap().extend_from_slice(s.as_bytes());
    }

    /// Everything the processes printed so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
    }

    /// Run the binary with `args` (output captured and appended to the logs).
    pub async fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(kms_bin())
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("COFFER_KMS_PASSPHRASE")
            .output()
            .await
            .expect("run coffer-kms");
        self.log(&format!(
            "[cli {:?} -> {}]\n{}{}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        out
    }

    /// Path of the admin credential written by init.
    pub fn admin_credential(&self) -> PathBuf {
        self.data_dir.join("admin.credential")
    }

    /// The local CA certificate written by init (trust anchor of the KMS certificate).
    pub fn ca_cert(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.pem")
    }

    /// Path of the audit public key written by init.
    pub fn audit_pub(&self) -> PathBuf {
        self.data_dir.join("audit.pub")
    }

    /// `coffer-kms admin --url URL --credential ADMIN args…`.
    pub async fn admin(&self, args: &[&str]) -> Output {
        let cred = self.admin_credential();
        let ca = self.ca_cert();
        let tls = self.data_dir.join("tls");
        let (crt, key) = (tls.join("admin-client.crt"), tls.join("admin-client.key"));
        let mut full = vec![
            "admin",
            "--url",
            self.url.as_str(),
            "--credential",
            cred.to_str().unwrap(),
            "--ca-file",
            ca.to_str().unwrap(),
        ];
        if crt.exists() {
            // Presented only when the KMS asks (mutual TLS); harmless otherwise.
            full.extend_from_slice(&[
                "--client-cert",
                crt.to_str().unwrap(),
                "--client-key",
                key.to_str().unwrap(),
            ]);
        }
        full.extend_from_slice(args);
        self.cli(&full).await
    }

    /// Create a service identity through the CLI and load its credential. Its named-key scope
    /// is `--keys '*'` (every named KMS key), as `coffer-storage dev` enrolls its node.
    pub async fn create_client(&self, name: &str, buckets: &str, ops: &str) -> Credential {
        self.create_client_scoped(name, buckets, ops, Some("*"))
            .await
    }

    /// [`Kms::create_client`] with a named-key glob (`None`: no `--keys`, so no named key).
    pub async fn create_client_scoped(
        &self,
        name: &str,
        buckets: &str,
        ops: &str,
        keys: Option<&str>,
    ) -> Credential {
        let out = self.tmp.path().join(format!("{name}.credential"));
        let mut args = vec!["client", "create", name, "--buckets", buckets, "--ops", ops];
        if let Some(k) = keys {
            args.extend_from_slice(&["--keys", k]);
        }
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        let o = self.admin(&args).await;
        assert!(o.status.success(), "client create failed:\n{}", self.logs());
        Credential::load(&out).unwrap()
    }

    /// Export the audit log to a file in the temp dir and return its path.
    pub async fn export_audit(&self, name: &str) -> PathBuf {
        let out = self.tmp.path().join(name);
        let o = self
            .admin(&["audit", "export", "--out", out.to_str().unwrap()])
            .await;
        assert!(o.status.success(), "audit export failed:\n{}", self.logs());
        out
    }

    /// `coffer-kms audit verify FILE --public-key audit.pub`: (success, stdout).
    pub async fn verify_audit(&self, file: &Path) -> (bool, String) {
        let o = self
            .cli(&[
                "audit",
                "verify",
                file.to_str().unwrap(),
                "--public-key",
                self.audit_pub().to_str().unwrap(),
            ])
            .await;
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// An HTTP client for the service API (trusting the KMS's local CA).
    pub fn client(&self) -> KmsClient {
        self.client_with(None)
    }

    /// A service API client presenting `identity` (PEM certificate + key) for mutual TLS.
    pub fn client_with(&self, identity: Option<&[u8]>) -> KmsClient {
        KmsClient {
            http: self.http_builder(identity).build().unwrap(),
            base: self.url.clone(),
        }
    }

    /// A reqwest builder trusting only the KMS's local CA, with an optional client identity.
    pub fn http_builder(&self, identity: Option<&[u8]>) -> reqwest::ClientBuilder {
        coffer_common::tls::install_crypto_provider();
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false);
        if let Ok(pem) = std::fs::read(self.ca_cert()) {
            for c in reqwest::Certificate::from_pem_bundle(&pem).unwrap() {
                b = b.add_root_certificate(c);
            }
        }
        if let Some(id) = identity {
            b = b.identity(reqwest::Identity::from_pem(id).unwrap());
        }
        b
    }
}

impl Drop for Kms {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== coffer-kms logs ({}) =====\n{}\n===== end =====",
                self.data_dir.display(),
                self.logs()
            );
        }
    }
}

/// A refused call: status and error body.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub body: ErrorBody,
}

/// Minimal service API client.
#[derive(Clone)]
pub struct KmsClient {
    pub http: reqwest::Client,
    pub base: String,
}

impl KmsClient {
    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        token: String,
        path: &str,
        body: &Req,
    ) -> Result<Resp, Refused> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(|e| Refused {
                status: 0,
                body: ErrorBody {
                    code: "transport".into(),
                    message: e.to_string(),
                    request_id: None,
                },
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        if status == 200 {
            return Ok(serde_json::from_slice(&bytes).expect("response JSON"));
        }
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
            code: "unparsable".into(),
            message: String::from_utf8_lossy(&bytes).into_owned(),
            request_id: None,
        });
        Err(Refused { status, body })
    }

    /// Generate a data key for `bucket`.
    pub async fn generate(
        &self,
        cred: &Credential,
        bucket: &str,
    ) -> Result<GenerateDataKeyResponse, Refused> {
        let req = GenerateDataKeyRequest {
            bucket_id: bucket.into(),
        };
        self.call(cred.token("POST", PATH_GENERATE), PATH_GENERATE, &req)
            .await
    }

    /// Unwrap a wrapped key for `bucket`.
    pub async fn unwrap(
        &self,
        cred: &Credential,
        bucket: &str,
        wrapped: &str,
        version: u32,
    ) -> Result<UnwrapDataKeyResponse, Refused> {
        let req = UnwrapDataKeyRequest {
            bucket_id: bucket.into(),
            wrapped_key: wrapped.into(),
            key_version: version,
        };
        self.call(cred.token("POST", PATH_UNWRAP), PATH_UNWRAP, &req)
            .await
    }

    /// POST with a given raw token (for replay and audience tests).
    pub async fn post_raw(
        &self,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> (u16, String) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let s = resp.status().as_u16();
        (s, resp.text().await.unwrap_or_default())
    }
}
