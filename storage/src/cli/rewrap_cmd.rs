//! `coffer-storage rewrap`: the re-wrap sweep (`crate::rewrap`) on a stopped node. It takes the
//! same settings as `serve` (flags, environment, `--config` file; only the data dir and the KMS
//! settings are used), locks the data dir like a serving node (so it refuses to run beside one:
//! a running node sweeps by itself every `rewrap_interval_secs`), walks every bucket row, prints
//! a progress line to stderr every `--progress-every` rows and the coverage report as JSON on
//! stdout. Exit status 0 when every row is at the KMS's active version and none failed, 2 when
//! the report shows otherwise (rerun it; it resumes), 1 on an error. The same run re-seals the
//! object keys still sealed under an older SSE-S3 bucket key generation (`crate::bk_rotation`;
//! report under `bucket_key_generations`). `coffer-storage rotate-bucket-key BUCKET` (also on a
//! stopped node) makes a new generation.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use coffer_common::data_dir_lock::DataDirLock;

use super::serve::{ServeArgs, build_kms, db_config};
use crate::crypto::key_cache::BucketKeys;
use crate::store::db::DatabaseUrl;
use crate::store::meta::Meta;

/// Settings of `coffer-storage rewrap`.
#[derive(clap::Args)]
pub struct RewrapArgs {
    /// A progress line on stderr every N rows (0: none).
    #[arg(long, default_value_t = 100)]
    pub progress_every: u64,
    /// Testing hook: pause this many milliseconds after each row, so that a test can kill the
    /// sweep mid-way deterministically.
    #[arg(long, default_value_t = 0, hide = true)]
    pub test_row_delay_ms: u64,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Run the sweep once and print its report; `Ok(false)` when coverage is incomplete.
pub async fn run(a: RewrapArgs) -> Result<bool> {
    let Some(kms) = build_kms(&a.serve)? else {
        bail!("rewrap needs the KMS settings (kms_url, kms_credential, kms_ca)");
    };
    let dir = &a.serve.data_dir;
    let db = db_config(&a.serve)?;
    if let DatabaseUrl::Sqlite(file) = &db.url
        && !file.exists()
    {
        bail!("{} holds no coffer-storage metadata", file.display());
    }
    let _lock = DataDirLock::acquire(dir, "coffer-storage", "coffer-storage rewrap").context(
        "a running node sweeps by itself (rewrap_interval_secs); stop it to run the command",
    )?;
    let meta = Meta::connect(&db).await?;
    let keys = BucketKeys::new(Some(kms), Duration::from_secs(300), 1000);
    let every = a.progress_every;
    let delay = Duration::from_millis(a.test_row_delay_ms);
    // (The testing pause blocks this command's runtime thread; nothing else runs in it.)
    let pause = || {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    };
    let report = crate::rewrap::sweep(&meta, &keys, |done| {
        if every > 0 && done % every == 0 {
            eprintln!("rewrap: {done} rows done");
        }
        pause();
    })
    .await?;
    let objects = crate::bk_rotation::reseal_sweep(&meta, &keys, |done| {
        if every > 0 && done % every == 0 {
            eprintln!("reseal: {done} objects done");
        }
        pause();
    })
    .await?;
    let complete = report.complete() && objects.complete();
    let mut out = serde_json::to_value(&report)?;
    out["bucket_key_generations"] = serde_json::to_value(&objects)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(complete)
}

/// Settings of `coffer-storage rotate-bucket-key`.
#[derive(clap::Args)]
pub struct RotateBucketKeyArgs {
    /// The S3 bucket name.
    pub bucket: String,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// A new generation of one bucket's SSE-S3 key, on a stopped node; prints it as JSON.
pub async fn rotate_bucket_key(a: RotateBucketKeyArgs) -> Result<()> {
    let Some(kms) = build_kms(&a.serve)? else {
        bail!("rotate-bucket-key needs the KMS settings (kms_url, kms_credential, kms_ca)");
    };
    let dir = &a.serve.data_dir;
    let db = db_config(&a.serve)?;
    if let DatabaseUrl::Sqlite(file) = &db.url
        && !file.exists()
    {
        bail!("{} holds no coffer-storage metadata", file.display());
    }
    let _lock = DataDirLock::acquire(dir, "coffer-storage", "coffer-storage rotate-bucket-key")
        .context("stop the node to rotate a bucket key")?;
    let meta = Meta::connect(&db).await?;
    let keys = BucketKeys::new(Some(kms), Duration::from_secs(1), 1);
    let rid = format!("rotate-bucket-key-{}", uuid::Uuid::new_v4());
    let generation = crate::bk_rotation::rotate(&meta, &keys, &a.bucket, &rid).await?;
    println!(
        "{}",
        serde_json::json!({ "bucket": a.bucket, "generation": generation })
    );
    Ok(())
}
