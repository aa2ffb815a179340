//! `coffer-storage rewrap`: the re-wrap sweep (`crate::rewrap`) on a stopped node. It takes the
//! same settings as `serve` (flags, environment, `--config` file; only the data dir and the KMS
//! settings are used), locks the data dir like a serving node (so it refuses to run beside one:
//! a running node sweeps by itself every `rewrap_interval_secs`), walks every bucket row, prints
//! a progress line to stderr every `--progress-every` rows and the coverage report as JSON on
//! stdout. Exit status 0 when every row is at the KMS's active version and none failed, 2 when
//! the report shows otherwise (rerun it; it resumes), 1 on an error.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use coffer_common::data_dir_lock::DataDirLock;

use super::serve::{ServeArgs, build_kms};
use crate::crypto::key_cache::BucketKeys;
use crate::store::meta::Meta;

/// Settings of `coffer-storage rewrap`.
#[derive(clap::Args)]
pub struct RewrapArgs {
    /// A progress line on stderr every N rows (0: none).
    #[arg(long, default_value_t = 100)]
    pub progress_every: u64,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Run the sweep once and print its report; `Ok(false)` when coverage is incomplete.
pub async fn run(a: RewrapArgs) -> Result<bool> {
    let Some(kms) = build_kms(&a.serve)? else {
        bail!("rewrap needs the KMS settings (kms_url, kms_credential, kms_ca)");
    };
    let dir = &a.serve.data_dir;
    if !dir.join("meta.db").exists() {
        bail!(
            "{} holds no coffer-storage metadata (meta.db)",
            dir.display()
        );
    }
    let _lock = DataDirLock::acquire(dir, "coffer-storage", "coffer-storage rewrap").context(
        "a running node sweeps by itself (rewrap_interval_secs); stop it to run the command",
    )?;
    let meta = Meta::open(dir).await?;
    let keys = BucketKeys::new(Some(kms), Duration::from_secs(1), 1);
    let every = a.progress_every;
    let report = crate::rewrap::sweep(&meta, &keys, |done| {
        if every > 0 && done % every == 0 {
            eprintln!("rewrap: {done} rows done");
        }
    })
    .await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(report.complete())
}
