//! `coffer-kms serve`: arguments (every one also an environment variable `COFFER_KMS_*` and a key
//! of the `--config` TOML file, precedence flag > env > file > default) and start-up: TLS
//! selection, unsealing, binding and the `listening on` line.
//!
//! TLS is the default: the certificate and key written by init under `DATA_DIR/tls/`, or
//! `--tls-cert/--tls-key`. Plain HTTP only with `--insecure-http`, loudly warned. Mutual TLS with
//! `--client-ca FILE` or `--require-client-cert` (trusts the local CA of `DATA_DIR/tls/ca.pem`).
//!
//! Secret: the passphrase (file, `COFFER_KMS_PASSPHRASE` or prompt; never argv or the config
//! file) and the TLS private key (0600 required).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use coffer_common::secret::Passphrase;

use crate::audit::writer::WriterConfig;
use crate::certs::TlsPaths;

/// `coffer-kms serve` arguments.
#[derive(Args)]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys are the flag names with `_`, e.g. `data_dir`).
    #[arg(long, env = "COFFER_KMS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory made by `coffer-kms init`.
    #[arg(long, env = "COFFER_KMS_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Where the KMS state lives: unset = DATA_DIR/kms.db (SQLite, one process);
    /// `postgres://user@host:port/db` = a PostgreSQL database shared by several replicas, each
    /// started with the same passphrase and a data dir of its own (`docs/kms-replicas.md`).
    /// Put no password in the URL: use --database-password-file.
    #[arg(long, env = "COFFER_KMS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// File holding the PostgreSQL password (mode 0600).
    #[arg(long, env = "COFFER_KMS_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,
    /// PostgreSQL replicas: milliseconds the lease of background work (checkpoints, re-wrap,
    /// named-key lifecycle) lasts unless its holder renews it; a dead holder's jobs move to
    /// another replica after at most this long.
    #[arg(long, env = "COFFER_KMS_LEASE_TTL_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(300..))]
    pub lease_ttl_ms: u64,
    /// Address to listen on (port 0: any free port; the stdout line names it).
    #[arg(long, env = "COFFER_KMS_LISTEN", default_value = "127.0.0.1:8200")]
    pub listen: String,
    /// File holding the passphrase (mode 0600). Else $COFFER_KMS_PASSPHRASE, else a prompt.
    #[arg(long, env = "COFFER_KMS_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) [default: DATA_DIR/tls/kms.pem].
    #[arg(long, env = "COFFER_KMS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, mode 0600) [default: DATA_DIR/tls/kms.key].
    #[arg(long, env = "COFFER_KMS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (mutual TLS).
    #[arg(long, env = "COFFER_KMS_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Require client certificates issued by the local CA (DATA_DIR/tls/ca.pem), e.g. those of
    /// `admin client create --client-cert-out`.
    #[arg(long, env = "COFFER_KMS_REQUIRE_CLIENT_CERT")]
    pub require_client_cert: bool,
    /// Serve plain HTTP (no TLS): tokens and data keys cross the network in clear. Loopback
    /// testing only.
    #[arg(
        long,
        env = "COFFER_KMS_INSECURE_HTTP",
        conflicts_with_all = ["tls_cert", "tls_key", "client_ca", "require_client_cert"]
    )]
    pub insecure_http: bool,
    /// Also serve `GET /metrics` (and `/health`) on this address, plain HTTP without
    /// authentication: a private port for Prometheus. `/metrics` stays on the main listener too.
    #[arg(long, env = "COFFER_KMS_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Log JSON lines (also COFFER_LOG_FORMAT=json).
    #[arg(long, env = "COFFER_KMS_LOG_JSON")]
    pub log_json: bool,
    /// Do not lock memory with mlockall (when LimitMEMLOCK cannot be raised).
    #[arg(long, env = "COFFER_KMS_NO_MLOCK")]
    pub no_mlock: bool,
    /// Audit records between signed checkpoints.
    #[arg(long, env = "COFFER_KMS_CHECKPOINT_EVERY", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,
    /// Seconds between signed checkpoints (when records were added).
    #[arg(long, env = "COFFER_KMS_CHECKPOINT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_secs: u64,
    /// Connections served at once per listener; more wait in the listen backlog until one closes.
    #[arg(long, env = "COFFER_KMS_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Milliseconds from accept for the TLS handshake and the first complete request head.
    #[arg(long, env = "COFFER_KMS_HEADER_TIMEOUT_MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,
    /// Milliseconds a connection may stay without a request in flight (keep-alive, HTTP/2).
    #[arg(long, env = "COFFER_KMS_IDLE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,
    /// Longest pause in milliseconds of a request body, or of a client not reading its answer.
    #[arg(long, env = "COFFER_KMS_BODY_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_ms: u64,
    /// Region in the ARNs of named KMS keys (`arn:aws:kms:REGION:ACCOUNT:key/ID`).
    #[arg(long, env = "COFFER_KMS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// 12-digit account id in the ARNs of named KMS keys.
    #[arg(long, env = "COFFER_KMS_ACCOUNT_ID", default_value = "000000000000")]
    pub account_id: String,
    /// Stop (as on SIGTERM) when standard input reaches end of file: `coffer-storage dev` runs
    /// its KMS child this way, so the child stops when dev dies, however it dies.
    #[arg(long, hide = true)]
    pub exit_on_stdin_eof: bool,
}

impl ServeArgs {
    /// The connection limits of both listeners.
    pub fn limits(&self) -> coffer_common::server::Limits {
        coffer_common::server::Limits::from_settings(
            usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            self.header_timeout_ms,
            self.idle_timeout_ms,
            self.body_timeout_ms,
        )
    }
}

/// The TLS configuration `serve` uses, or `None` for `--insecure-http`.
pub fn tls_config(a: &ServeArgs) -> Result<Option<Arc<rustls::ServerConfig>>> {
    if a.insecure_http {
        eprintln!(
            "WARNING: --insecure-http: coffer-kms serves PLAIN HTTP. Bearer tokens and plaintext data keys cross the network unencrypted. Use it only on loopback for tests."
        );
        tracing::warn!("serving plain HTTP (--insecure-http): not for production");
        return Ok(None);
    }
    let local = TlsPaths::new(&a.data_dir);
    let (cert, key) = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (local.server_cert.clone(), local.server_key.clone()),
    };
    if !cert.exists() {
        bail!(
            "no TLS certificate: {} does not exist. coffer-kms serves HTTPS by default: initialize without --no-tls-certs, pass --tls-cert/--tls-key, or (loopback tests only) --insecure-http",
            cert.display()
        );
    }
    let client_ca = match (&a.client_ca, a.require_client_cert) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => {
            if !local.ca_cert.exists() {
                bail!(
                    "--require-client-cert trusts the local CA {}, which does not exist (use --client-ca FILE)",
                    local.ca_cert.display()
                );
            }
            Some(local.ca_cert.clone())
        }
        (None, false) => None,
    };
    let cfg = coffer_common::tls::load_server_config(&cert, &key, client_ca.as_deref())
        .context("loading TLS material")?;
    Ok(Some(cfg))
}

/// Run `serve`.
pub async fn run(a: ServeArgs) -> Result<ExitCode> {
    coffer_common::telemetry::init_logging(a.log_json);
    crate::hardening::disable_core_dumps();
    // One KMS per data dir, before the passphrase is asked or the audit chain is touched: two
    // writers of one audit chain break it. A missing dir is left to `open` to report.
    let _dir_lock = if a.data_dir.is_dir() {
        Some(coffer_common::data_dir_lock::DataDirLock::acquire(
            &a.data_dir,
            "coffer-kms",
            "coffer-kms",
        )?)
    } else {
        None
    };
    if !a.no_mlock {
        crate::hardening::lock_memory();
    }
    let arn = crate::kmskeys::material::ArnSettings {
        region: a.region.clone(),
        account_id: a.account_id.clone(),
    };
    if let Err(e) = arn.validate() {
        bail!("{e}");
    }
    let tls = tls_config(&a)?;
    let loc = crate::store::Location::from_settings(
        &a.data_dir,
        a.database_url.as_deref(),
        a.database_password_file.as_deref(),
    )?;
    let pass = super::read_passphrase(a.passphrase_file.as_deref(), false)?;
    let cfg = WriterConfig {
        checkpoint_every: a.checkpoint_every,
        checkpoint_interval: Duration::from_secs(a.checkpoint_secs),
    };
    serve(
        &a.data_dir,
        &a.listen,
        a.metrics_listen.as_deref(),
        pass,
        tls,
        cfg,
        Connections {
            limits: a.limits(),
            exit_on_stdin_eof: a.exit_on_stdin_eof,
            arn,
            loc,
            lease_ttl: Duration::from_millis(a.lease_ttl_ms),
        },
    )
    .await
}

/// How the listeners treat connections, and what else stops them.
struct Connections {
    limits: coffer_common::server::Limits,
    exit_on_stdin_eof: bool,
    arn: crate::kmskeys::material::ArnSettings,
    loc: crate::store::Location,
    lease_ttl: Duration,
}

/// Resolves when standard input reaches end of file (or fails): the parent holding its other
/// end is gone. A plain thread, not Tokio's stdin, so that a read still blocked at exit does not
/// hold up the runtime's shutdown.
fn stdin_closed() -> impl std::future::Future<Output = ()> + Send + 'static {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
    async move {
        if spawned.is_ok() {
            let _ = rx.await;
            tracing::info!("standard input closed (the parent process is gone): shutting down");
        } else {
            std::future::pending::<()>().await;
        }
    }
}

async fn serve(
    data_dir: &Path,
    listen: &str,
    metrics_listen: Option<&str>,
    pass: Passphrase,
    tls: Option<Arc<rustls::ServerConfig>>,
    cfg: WriterConfig,
    conn: Connections,
) -> Result<ExitCode> {
    let limits = conn.limits;
    let parent_gone = conn.exit_on_stdin_eof.then(stdin_closed);
    let what = if conn.loc.is_pg() {
        "the PostgreSQL database of database_url".to_string()
    } else {
        data_dir.display().to_string()
    };
    let (state, tasks) = crate::open_at(data_dir, &conn.loc, &pass, cfg, conn.arn, conn.lease_ttl)
        .await
        .with_context(|| format!("cannot unseal {what}"))?;
    drop(pass);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let metrics_listener = match metrics_listen {
        Some(m) => Some(
            tokio::net::TcpListener::bind(m)
                .await
                .with_context(|| format!("cannot listen on {m} (metrics)"))?,
        ),
        None => None,
    };
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "coffer-kms ready");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {scheme}://{addr}")?;
        if let Some(m) = &metrics_listener {
            writeln!(out, "metrics on http://{}/metrics", m.local_addr()?)?;
        }
        out.flush()?;
    }
    // One signal stops both listeners; the metrics one must let go of the state before the
    // audit writer can drain.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = metrics_listener.map(|l| {
        let app = crate::api::probes::metrics_router(state.clone());
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            coffer_common::server::serve_with_limits(l, None, app, limits, stop).await
        })
    });
    let signal = coffer_common::server::shutdown_signal();
    let shutdown = async move {
        match parent_gone {
            Some(gone) => {
                tokio::select! {
                    () = signal => {}
                    () = gone => {}
                }
            }
            None => signal.await,
        }
        let _ = stop_tx.send(true);
    };
    let main = crate::serve(listener, tls, state, tasks, limits, shutdown);
    let (result, _) = tokio::join!(main, async {
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
    });
    result?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
