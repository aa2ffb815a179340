//! `coffer-kms admin --url URL --credential FILE …`: the admin API client. Each request carries
//! a fresh admin-audience JWT bound to its method and path. Results are printed as JSON.
//!
//! Secret: the admin private key (read from its 0600 credential file) and, for `client create`,
//! the new service identity's private key, generated here and written once to a new 0600 file;
//! only its public key is sent to the KMS. Likewise the TLS client key of `--client-cert-out`
//! (P-256, written 0600); the KMS's local CA signs a certificate for its public key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use coffer_common::credential::Credential;
use coffer_common::jwt::AUD_SERVICE;
use coffer_common::kms_api::{self as api, CreateClientRequest, ErrorBody};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

#[derive(Args)]
pub struct AdminArgs {
    /// KMS base URL, e.g. http://127.0.0.1:8200.
    #[arg(long, env = "COFFER_KMS_URL")]
    url: String,
    /// Admin credential file (written by init to DATA_DIR/admin.credential).
    #[arg(long, env = "COFFER_KMS_CREDENTIAL")]
    credential: PathBuf,
    /// CA certificate (PEM) to trust for an HTTPS URL (the KMS's own: DATA_DIR/tls/ca.pem).
    #[arg(long, env = "COFFER_KMS_CA")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a KMS that requires mutual TLS (DATA_DIR/tls/admin-client.crt).
    #[arg(long, env = "COFFER_KMS_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Its private key (PEM, mode 0600).
    #[arg(long, env = "COFFER_KMS_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Service identities.
    Client {
        #[command(subcommand)]
        cmd: ClientCmd,
    },
    /// Root key versions.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Rotate the root key (`rotate status`: re-wrap progress).
    Rotate {
        #[command(subcommand)]
        cmd: Option<RotateCmd>,
    },
    /// Named KMS keys (SSE-KMS): create, list, describe, enable, disable, rotate, delete.
    Key {
        #[command(subcommand)]
        cmd: super::kmskeys::KeyCmd,
    },
    /// Aliases of named KMS keys.
    Alias {
        #[command(subcommand)]
        cmd: super::kmskeys::AliasCmd,
    },
    /// KMS status.
    Status,
    /// Seal the KMS (wipe keys from memory until restart).
    Seal,
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
enum ClientCmd {
    /// Create a service identity and write its credential file.
    Create {
        name: String,
        /// Bucket id glob, e.g. '*' or 'tenant-a-*'.
        #[arg(long)]
        buckets: String,
        /// Comma-separated operations: generate,unwrap.
        #[arg(long, value_delimiter = ',')]
        ops: Vec<String>,
        /// Named KMS key glob, matched against key ids and aliases, e.g. '*' or
        /// 'alias/tenant-a-*' (default: no named key).
        #[arg(long, value_name = "GLOB")]
        keys: Option<String>,
        /// Where to write the credential (new file, mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Also issue a TLS client certificate for mutual TLS: writes PREFIX.crt and
        /// PREFIX.key (0600), signed by the KMS's local CA.
        #[arg(long, value_name = "PREFIX")]
        client_cert_out: Option<PathBuf>,
    },
    /// Issue a (new) TLS client certificate for an existing service identity.
    Certificate {
        name: String,
        /// Writes PREFIX.crt and PREFIX.key (0600).
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// List identities.
    List,
    /// Revoke a service identity.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// List root key versions.
    List,
    /// Delete an old root key version once nothing depends on it: refused (409
    /// root_version_in_use, with counts) while data keys are wrapped under it or storage nodes
    /// last presented it (run `coffer-storage rewrap` on every node first), and for the active
    /// version (409 root_version_active).
    Retire {
        version: u32,
        /// Ignore data keys a storage node last presented under it: only when the buckets the
        /// 409 names were deleted (no node will present them again). Audited.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum RotateCmd {
    /// Re-wrap progress after a rotation.
    Status,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Query records (JSON lines on stdout).
    Query {
        /// RFC 3339 time, inclusive.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time, inclusive.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        bucket: Option<String>,
        /// Operation, e.g. generate, unwrap, client.create, rotate.
        #[arg(long)]
        op: Option<String>,
        /// `ok` or an error code.
        #[arg(long)]
        result: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Export the whole log (JSON lines, closed by a signed checkpoint).
    Export {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print (or write) the audit public key.
    PublicKey {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub(super) struct Client {
    http: reqwest::Client,
    base: String,
    cred: Credential,
}

impl Client {
    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let token = self.cred.token(method.as_str(), path);
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
    }

    pub(super) async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = rb.send().await.context("KMS unreachable")?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => bail!(
                "KMS answered {status}: {} ({}){}",
                e.code,
                e.message,
                e.request_id
                    .map(|r| format!(" request id {r}"))
                    .unwrap_or_default()
            ),
            Err(_) => bail!("KMS answered {status}"),
        }
    }

    pub(super) async fn json(&self, rb: reqwest::RequestBuilder) -> Result<serde_json::Value> {
        Ok(self.send(rb).await?.json().await?)
    }
}

pub(super) fn print(v: &serde_json::Value) -> Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

fn http_client(a: &AdminArgs) -> Result<reqwest::Client> {
    coffer_common::tls::install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(std::time::Duration::from_secs(60));
    if let Some(ca) = &a.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            b = b.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&a.client_cert, &a.client_key) {
        b = b.identity(client_identity(cert, key)?);
    }
    Ok(b.build()?)
}

/// A reqwest identity from a certificate file and a 0600 key file.
fn client_identity(cert: &Path, key: &Path) -> Result<reqwest::Identity> {
    let mut pem = zeroize::Zeroizing::new(
        std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
    );
    pem.push(b'\n');
    pem.extend_from_slice(&zeroize::Zeroizing::new(
        coffer_common::secret_file::read_secret_file(key)?,
    ));
    reqwest::Identity::from_pem(&pem).with_context(|| {
        format!(
            "{} / {} is not a PEM certificate and key",
            cert.display(),
            key.display()
        )
    })
}

/// Run an admin command.
pub async fn run(a: AdminArgs) -> Result<ExitCode> {
    let cred = Credential::load(&a.credential)?;
    let c = Client {
        http: http_client(&a)?,
        base: a.url.trim_end_matches('/').to_string(),
        cred,
    };
    use reqwest::Method;
    match a.cmd {
        AdminCmd::Client { cmd } => match cmd {
            ClientCmd::Create {
                name,
                buckets,
                ops,
                keys,
                out,
                client_cert_out,
            } => {
                if out.exists() {
                    bail!(
                        "{} already exists; refusing to overwrite a credential",
                        out.display()
                    );
                }
                if let Some(prefix) = &client_cert_out {
                    cert_files_free(prefix)?;
                    // Refuse before creating the identity, not halfway.
                    let s: api::StatusResponse = c
                        .send(c.request(Method::GET, api::PATH_ADMIN_STATUS))
                        .await?
                        .json()
                        .await?;
                    if !s.issues_client_certificates {
                        bail!(
                            "this KMS has no local CA key (DATA_DIR/tls/ca.key) and cannot issue --client-cert-out; nothing was created"
                        );
                    }
                }
                let new = Credential::generate(&name, AUD_SERVICE);
                let cert_name = name.clone();
                let req = CreateClientRequest {
                    name,
                    buckets,
                    ops,
                    public_key: new.public_key_b64(),
                    keys,
                };
                let v = c
                    .json(c.request(Method::POST, api::PATH_ADMIN_CLIENTS).json(&req))
                    .await?;
                new.write_new(&out)?;
                eprintln!("service credential written to {}", out.display());
                if let Some(prefix) = &client_cert_out {
                    issue_certificate(&c, &cert_name, prefix).await?;
                }
                print(&v)
            }
            ClientCmd::Certificate { name, out } => {
                cert_files_free(&out)?;
                issue_certificate(&c, &name, &out).await?;
                Ok(ExitCode::SUCCESS)
            }
            ClientCmd::List => print(
                &c.json(c.request(Method::GET, api::PATH_ADMIN_CLIENTS))
                    .await?,
            ),
            ClientCmd::Revoke { name } => {
                let path = format!("{}{name}/revoke", api::PATH_ADMIN_CLIENT_PREFIX);
                print(&c.json(c.request(Method::POST, &path)).await?)
            }
        },
        AdminCmd::Keys { cmd: KeysCmd::List } => {
            print(&c.json(c.request(Method::GET, api::PATH_ADMIN_KEYS)).await?)
        }
        AdminCmd::Keys {
            cmd: KeysCmd::Retire { version, force },
        } => print(
            &c.json(
                c.request(Method::POST, api::PATH_ADMIN_RETIRE)
                    .json(&api::RetireRequest { version, force }),
            )
            .await?,
        ),
        AdminCmd::Rotate { cmd: None } => print(
            &c.json(c.request(Method::POST, api::PATH_ADMIN_ROTATE))
                .await?,
        ),
        AdminCmd::Rotate {
            cmd: Some(RotateCmd::Status),
        } => print(
            &c.json(c.request(Method::GET, api::PATH_ADMIN_ROTATION))
                .await?,
        ),
        AdminCmd::Key { cmd } => super::kmskeys::key(&c, cmd).await,
        AdminCmd::Alias { cmd } => super::kmskeys::alias(&c, cmd).await,
        AdminCmd::Status => print(
            &c.json(c.request(Method::GET, api::PATH_ADMIN_STATUS))
                .await?,
        ),
        AdminCmd::Seal => print(
            &c.json(c.request(Method::POST, api::PATH_ADMIN_SEAL))
                .await?,
        ),
        AdminCmd::Audit { cmd } => audit(&c, cmd).await,
    }
}

/// `PREFIX.crt` and `PREFIX.key`.
fn cert_files(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".crt"), with(".key"))
}

fn cert_files_free(prefix: &Path) -> Result<()> {
    let (crt, key) = cert_files(prefix);
    for f in [crt, key] {
        if f.exists() {
            bail!("{} already exists; refusing to overwrite it", f.display());
        }
    }
    Ok(())
}

/// Generate a P-256 key here, have the KMS's CA sign a client certificate for it, write both.
async fn issue_certificate(c: &Client, name: &str, prefix: &Path) -> Result<()> {
    let (key_pem, public) = coffer_common::tls::generate_client_key()?;
    let path = format!(
        "{}{name}{}",
        api::PATH_ADMIN_CLIENT_PREFIX,
        api::PATH_ADMIN_CLIENT_CERT_SUFFIX
    );
    let req = api::IssueClientCertRequest {
        public_key: STANDARD.encode(&public),
    };
    let resp: api::IssueClientCertResponse = c
        .send(c.request(reqwest::Method::POST, &path).json(&req))
        .await?
        .json()
        .await?;
    let (crt, key) = cert_files(prefix);
    coffer_common::secret_file::write_new_secret_file(&key, key_pem.as_bytes())?;
    std::fs::write(&crt, &resp.certificate_pem)
        .with_context(|| format!("writing {}", crt.display()))?;
    eprintln!(
        "TLS client certificate written to {} and {} (signed by the KMS CA)",
        crt.display(),
        key.display()
    );
    Ok(())
}

async fn audit(c: &Client, cmd: AuditCmd) -> Result<ExitCode> {
    use reqwest::Method;
    match cmd {
        AuditCmd::Query {
            since,
            until,
            identity,
            bucket,
            op,
            result,
            limit,
        } => {
            let mut q: Vec<(&str, String)> = Vec::new();
            for (k, v) in [
                ("since", since),
                ("until", until),
                ("identity", identity),
                ("bucket", bucket),
                ("op", op),
                ("result", result),
                ("limit", limit.map(|l| l.to_string())),
            ] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            let v = c
                .json(c.request(Method::GET, api::PATH_ADMIN_AUDIT).query(&q))
                .await?;
            for rec in v.as_array().into_iter().flatten() {
                println!("{}", serde_json::to_string(rec)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Export { out } => {
            let resp = c
                .send(c.request(Method::GET, api::PATH_ADMIN_AUDIT_EXPORT))
                .await?;
            let tmp = out.with_extension("partial");
            let mut f = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("creating {}", tmp.display()))?;
            let mut stream = resp.bytes_stream();
            let mut lines = 0usize;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.context("export interrupted")?;
                lines += chunk.iter().filter(|b| **b == b'\n').count();
                f.write_all(&chunk).await?;
            }
            f.sync_all().await?;
            drop(f);
            tokio::fs::rename(&tmp, &out).await?;
            eprintln!("exported {lines} lines to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::PublicKey { out } => {
            let v: api::AuditPublicKey = c
                .send(c.request(Method::GET, api::PATH_ADMIN_AUDIT_KEY))
                .await?
                .json()
                .await?;
            match out {
                Some(p) => std::fs::write(&p, format!("{}\n", v.public_key))
                    .with_context(|| format!("writing {}", p.display()))?,
                None => println!("{}", v.public_key),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
