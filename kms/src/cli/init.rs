//! `coffer-kms init`: arguments and the command. Creates the data dir's database, keys, admin
//! credential and, unless `--no-tls-certs`, the local CA and the KMS server certificate.
//!
//! Secret: the passphrase (file, environment or prompt; never argv) and the generated private
//! keys, which only `crate::init` and `crate::certs` write (0600).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::seal::KdfParams;

#[derive(Clone, Copy, ValueEnum)]
pub enum Argon2Profile {
    /// m = 256 MiB, t = 3, p = 4.
    Default,
    /// m = 8 MiB, t = 1, p = 1: tests and development only.
    Dev,
}

/// `coffer-kms init` arguments.
#[derive(Args)]
pub struct InitArgs {
    /// Data directory to create (kms.db, admin.credential, audit.pub, tls/).
    #[arg(long, env = "COFFER_KMS_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Initialize this PostgreSQL database instead of DATA_DIR/kms.db (the data dir still gets
    /// the admin credential, audit.pub and tls/). Replicas are not initialized: see
    /// `serve --database-url`.
    #[arg(long, env = "COFFER_KMS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// File holding the PostgreSQL password (mode 0600).
    #[arg(long, env = "COFFER_KMS_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,
    /// File holding the passphrase (mode 0600). Else $COFFER_KMS_PASSPHRASE, else a prompt.
    #[arg(long, env = "COFFER_KMS_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Argon2id cost profile (`dev` is for tests only).
    #[arg(long, env = "COFFER_KMS_ARGON2", value_enum, default_value = "default")]
    pub argon2: Argon2Profile,
    /// Extra DNS name or IP address for the KMS server certificate (repeatable; localhost and
    /// 127.0.0.1 are always included).
    #[arg(
        long = "tls-san",
        value_name = "NAME",
        env = "COFFER_KMS_TLS_SAN",
        value_delimiter = ','
    )]
    pub tls_san: Vec<String>,
    /// Do not generate the local CA and server certificate (bring your own with
    /// `serve --tls-cert/--tls-key`).
    #[arg(long, conflicts_with = "tls_san")]
    pub no_tls_certs: bool,
}

/// Run `init`.
pub async fn run(a: InitArgs) -> Result<ExitCode> {
    coffer_common::telemetry::init_logging(false);
    crate::hardening::disable_core_dumps();
    let params = match a.argon2 {
        Argon2Profile::Default => KdfParams::DEFAULT,
        Argon2Profile::Dev => KdfParams::DEV,
    };
    let data_dir = a.data_dir.as_path();
    if data_dir.join(crate::store::DB_FILE).exists()
        || data_dir.join(crate::init::ADMIN_CREDENTIAL_FILE).exists()
    {
        bail!(
            "{} is already initialized; refusing to change anything",
            data_dir.display()
        );
    }
    // Certificates first: a bad --tls-san fails before any prompt or write.
    let tls = if a.no_tls_certs {
        None
    } else {
        let names = crate::certs::server_names(&a.tls_san)?;
        Some((
            crate::certs::generate(&names).context("generating the KMS TLS certificates")?,
            names,
        ))
    };
    let loc = crate::store::Location::from_settings(
        data_dir,
        a.database_url.as_deref(),
        a.database_password_file.as_deref(),
    )?;
    let pass = super::read_passphrase(a.passphrase_file.as_deref(), true)?;
    let done =
        crate::init::init_at(data_dir, &loc, &pass, params, tls.as_ref().map(|t| &t.0)).await?;
    println!("initialized {}", data_dir.display());
    println!("admin credential: {}", done.admin_credential.display());
    println!("audit public key: {}", done.audit_public_key.display());
    match (&done.tls, &tls) {
        (Some(p), Some((_, names))) => {
            println!(
                "TLS: CA {} (give it to storage nodes as --kms-ca), server certificate {} for {}",
                p.ca_cert.display(),
                p.server_cert.display(),
                names.join(", ")
            );
            println!(
                "TLS: admin client certificate {} (for admin --client-cert when mutual TLS is required)",
                p.admin_cert.display()
            );
        }
        _ => println!(
            "TLS: no certificates generated; serve needs --tls-cert/--tls-key (or --insecure-http)"
        ),
    }
    Ok(ExitCode::SUCCESS)
}
