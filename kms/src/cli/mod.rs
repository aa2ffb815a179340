//! Command line of `coffer-kms`: `init`, `serve`, `admin …` (HTTP client of the admin API) and
//! `audit verify` (offline). This is the binary's edge, so errors are `anyhow` here and printed
//! once; exit code 0 on success, 1 on failure (2 for usage errors, from clap).
//!
//! Secret: the passphrase, read from `--passphrase-file` (0600 required), the environment
//! variable `COFFER_KMS_PASSPHRASE`, or a terminal prompt with echo off; never from argv.

mod admin;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use coffer_common::secret::Passphrase;

use crate::seal::KdfParams;

/// Environment variable holding the passphrase (alternative to `--passphrase-file`).
pub const PASSPHRASE_ENV: &str = "COFFER_KMS_PASSPHRASE";

#[derive(Parser)]
#[command(name = "coffer-kms", version, about = "Coffer key management daemon")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Argon2Profile {
    /// m = 256 MiB, t = 3, p = 4.
    Default,
    /// m = 8 MiB, t = 1, p = 1: tests and development only.
    Dev,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the database, root key v1, audit key and admin credential in DIR.
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        /// File holding the passphrase (mode 0600). Else $COFFER_KMS_PASSPHRASE, else a prompt.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Argon2id cost profile (`dev` is for tests only).
        #[arg(long, env = "COFFER_KMS_ARGON2", value_enum, default_value = "default")]
        argon2: Argon2Profile,
    },
    /// Unseal and serve the KMS API.
    Serve {
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to listen on, e.g. 127.0.0.1:8200 (port 0: any free port).
        #[arg(long)]
        listen: String,
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// TLS certificate chain (PEM); serves HTTPS with --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM, mode 0600).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates issued by this CA (mutual TLS).
        #[arg(long, requires = "tls_cert")]
        client_ca: Option<PathBuf>,
        /// Log JSON lines (also COFFER_LOG_FORMAT=json).
        #[arg(long)]
        log_json: bool,
        /// Do not lock memory with mlockall.
        #[arg(long)]
        no_mlock: bool,
    },
    /// Admin API client.
    Admin(admin::AdminArgs),
    /// Offline audit tools.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify an exported audit log against the KMS audit public key.
    Verify {
        /// The export (JSON lines from `admin audit export`).
        file: PathBuf,
        /// The audit public key (`DATA_DIR/audit.pub` or `admin audit public-key`).
        #[arg(long)]
        public_key: PathBuf,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Init {
                data_dir,
                passphrase_file,
                argon2,
            } => run_init(&data_dir, passphrase_file.as_deref(), argon2).await,
            Cmd::Serve {
                data_dir,
                listen,
                passphrase_file,
                tls_cert,
                tls_key,
                client_ca,
                log_json,
                no_mlock,
            } => {
                coffer_common::telemetry::init_logging(log_json);
                crate::hardening::disable_core_dumps();
                if !no_mlock {
                    crate::hardening::lock_memory();
                }
                let tls = match (tls_cert, tls_key) {
                    (Some(c), Some(k)) => Some(
                        coffer_common::tls::load_server_config(&c, &k, client_ca.as_deref())
                            .context("loading TLS material")?,
                    ),
                    _ => None,
                };
                let pass = read_passphrase(passphrase_file.as_deref(), false)?;
                run_serve(&data_dir, &listen, pass, tls).await
            }
            Cmd::Admin(a) => admin::run(a).await,
            Cmd::Audit {
                cmd: AuditCmd::Verify { file, public_key },
            } => run_verify(&file, &public_key),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Passphrase from the file, the environment, or the terminal.
fn read_passphrase(file: Option<&Path>, confirm: bool) -> Result<Passphrase> {
    if let Some(f) = file {
        let raw = coffer_common::secret_file::read_secret_file(f)?;
        let s = String::from_utf8(raw).context("passphrase file is not UTF-8")?;
        return Ok(Passphrase::new(s));
    }
    if let Ok(v) = std::env::var(PASSPHRASE_ENV) {
        return Ok(Passphrase::new(v));
    }
    let Some(first) = crate::hardening::prompt_hidden("coffer-kms passphrase: ") else {
        bail!("no passphrase: use --passphrase-file FILE, ${PASSPHRASE_ENV}, or run on a terminal");
    };
    let first = Passphrase::new(first);
    if confirm {
        let again = crate::hardening::prompt_hidden("repeat passphrase: ").map(Passphrase::new);
        let same = again.is_some_and(|a| {
            subtle::ConstantTimeEq::ct_eq(a.expose_secret(), first.expose_secret()).into()
        });
        if !same {
            bail!("the passphrases differ");
        }
    }
    Ok(first)
}

async fn run_init(
    data_dir: &Path,
    passphrase_file: Option<&Path>,
    profile: Argon2Profile,
) -> Result<ExitCode> {
    coffer_common::telemetry::init_logging(false);
    crate::hardening::disable_core_dumps();
    let params = match profile {
        Argon2Profile::Default => KdfParams::DEFAULT,
        Argon2Profile::Dev => KdfParams::DEV,
    };
    if data_dir.join(crate::store::DB_FILE).exists()
        || data_dir.join(crate::init::ADMIN_CREDENTIAL_FILE).exists()
    {
        bail!(
            "{} is already initialized; refusing to change anything",
            data_dir.display()
        );
    }
    let pass = read_passphrase(passphrase_file, true)?;
    let done = crate::init::init(data_dir, &pass, params).await?;
    println!("initialized {}", data_dir.display());
    println!("admin credential: {}", done.admin_credential.display());
    println!("audit public key: {}", done.audit_public_key.display());
    Ok(ExitCode::SUCCESS)
}

async fn run_serve(
    data_dir: &Path,
    listen: &str,
    pass: Passphrase,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> Result<ExitCode> {
    let (state, tasks) = crate::open(data_dir, &pass, crate::writer_config_from_env())
        .await
        .with_context(|| format!("cannot unseal {}", data_dir.display()))?;
    drop(pass);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "coffer-kms ready");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {scheme}://{addr}")?;
        out.flush()?;
    }
    crate::serve(
        listener,
        tls,
        state,
        tasks,
        coffer_common::server::shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn run_verify(file: &Path, public_key: &Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(public_key)
        .with_context(|| format!("reading {}", public_key.display()))?;
    let key = crate::audit::parse_public_key(&text)
        .with_context(|| format!("{} is not an audit public key", public_key.display()))?;
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    match crate::audit::verify::verify(std::io::BufReader::new(f), &key) {
        Ok(v) => {
            println!(
                "audit log OK: {} records, {} signed checkpoints, ends with a final signed checkpoint",
                v.records, v.checkpoints
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(t) => {
            println!("audit log INVALID: {t}");
            Ok(ExitCode::FAILURE)
        }
    }
}
