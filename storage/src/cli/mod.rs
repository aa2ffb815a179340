//! The `coffer-storage` command line: `serve` (production shape, settings from flags,
//! environment and a TOML file) and `dev` (the whole two-process system locally). This is the
//! binary's edge, so errors are `anyhow` here and printed once by `main`.

mod dev_cmd;
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
    }
}
