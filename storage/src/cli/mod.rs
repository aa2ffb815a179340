//! The `coffer-storage` command line: `serve` (production shape, settings from flags,
//! environment and a TOML file), `dev` (the whole two-process system locally) and `rewrap`
//! (the root-key re-wrap sweep on a stopped node). This is the
//! binary's edge, so errors are `anyhow` here and printed once by `main`.

mod dev_cmd;
mod rewrap_cmd;
mod serve;

use std::ffi::OsString;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub use serve::ServeArgs;

#[derive(Parser)]
#[command(
    name = "coffer-storage",
    version,
    about = "Coffer S3-compatible storage node with envelope encryption"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// JSON log lines (also COFFER_LOG_FORMAT=json).
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve S3. Every setting is a flag, an environment variable and a key of the --config
    /// file (precedence in that order).
    Serve(Box<ServeArgs>),
    /// Run KMS + storage locally (development only).
    Dev(dev_cmd::DevArgs),
    /// Bring every bucket's wrapped key to the KMS's current root key version (after
    /// `coffer-kms admin rotate`) on a stopped node, and print the coverage report. Takes the
    /// `serve` settings; a running node does the same every rewrap_interval_secs.
    Rewrap(Box<rewrap_cmd::RewrapArgs>),
    /// Make a new generation of a bucket's SSE-S3 key (node stopped): new writes seal under
    /// it; `rewrap` (or the running node's background job) re-seals older objects' keys.
    RotateBucketKey(Box<rewrap_cmd::RotateBucketKeyArgs>),
}

/// Parse `argv` (with the serve config file applied), set up logging and run the command.
pub async fn run(argv: Vec<OsString>) -> Result<()> {
    let matches = match coffer_common::config::matches_with_config(Cli::command(), argv) {
        Ok(m) => m,
        Err(coffer_common::config::ConfigError::Usage(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    coffer_common::telemetry::init_logging(cli.log_json);
    coffer_common::tls::install_crypto_provider();
    match cli.cmd {
        Cmd::Serve(a) => serve::run(*a).await,
        Cmd::Dev(a) => dev_cmd::run(a).await,
        Cmd::Rewrap(a) => {
            if !rewrap_cmd::run(*a).await? {
                // The report is printed; exit 2 tells scripts coverage is not complete.
                std::process::exit(2);
            }
            Ok(())
        }
        Cmd::RotateBucketKey(a) => rewrap_cmd::rotate_bucket_key(*a).await,
    }
}
