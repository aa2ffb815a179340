//! Command line of `coffer-kms`: `init`, `serve`, `admin …` (HTTP client of the admin API) and
//! `audit verify` (offline). This is the binary's edge, so errors are `anyhow` here and printed
//! once; exit code 0 on success, 1 on failure, 2 for usage and configuration-file errors.
//!
//! `serve` reads its settings from flags, `COFFER_KMS_*` environment variables and an optional
//! TOML file (`--config`), in that order of precedence (`coffer_common::config`).
//!
//! Secret: the passphrase, read from `--passphrase-file` (0600 required), the environment
//! variable `COFFER_KMS_PASSPHRASE`, or a terminal prompt with echo off; never from argv.

mod admin;
mod init;
mod kmskeys;
mod serve;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use coffer_common::config::ConfigError;
use coffer_common::secret::Passphrase;

pub use serve::ServeArgs;

/// Environment variable holding the passphrase (alternative to `--passphrase-file`).
pub const PASSPHRASE_ENV: &str = "COFFER_KMS_PASSPHRASE";

#[derive(Parser)]
#[command(name = "coffer-kms", version, about = "Coffer key management daemon")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the database, root key v1, audit key, admin credential and TLS files in DIR.
    Init(init::InitArgs),
    /// Unseal and serve the KMS API (HTTPS by default).
    Serve(Box<serve::ServeArgs>),
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
        file: std::path::PathBuf,
        /// The audit public key (`DATA_DIR/audit.pub` or `admin audit public-key`).
        #[arg(long)]
        public_key: std::path::PathBuf,
    },
}

/// Parse argv with the `--config` file of the chosen subcommand layered under flags and env.
fn parse() -> Result<Cli, ExitCode> {
    let matches =
        coffer_common::config::matches_with_config(Cli::command(), std::env::args_os().collect());
    let matches = match matches {
        Ok(m) => m,
        Err(ConfigError::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            return Err(ExitCode::from(2));
        }
    };
    Cli::from_arg_matches(&matches).map_err(|e| e.exit())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
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
            Cmd::Init(a) => init::run(a).await,
            Cmd::Serve(a) => serve::run(*a).await,
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
