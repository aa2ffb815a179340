//! SSE-S3 bucket key rotation (`docs/design.md` §3 "Rotation"): a bucket gets a new generation
//! of its data key ([`rotate`], `coffer-storage rotate-bucket-key BUCKET`), new writes seal their
//! object keys under the newest generation, and a metadata-only sweep ([`reseal_sweep`], part of
//! `coffer-storage rewrap` and of the background job) re-seals the object keys still sealed under
//! an older generation: unsealed with the old bucket key, sealed again under the newest, one
//! conditional UPDATE per row. No blob is read or rewritten: the object key does not change.
//!
//! Older generations stay stored (wrapped, in `bucket_key_generations`) and follow root key
//! rotations like the newest one, so an object a sweep has not reached yet keeps reading.
//!
//! Secret: bucket keys (from the cache) and object keys, dropped (zeroized) after each row.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use coffer_common::secret::SecretKey32;

use crate::crypto::envelope::{self, BucketKeyRef};
use crate::crypto::key_cache::BucketKeys;
use crate::crypto::keys::{self, Binding, SealMode, SealedKey};
use crate::crypto::kms_client::KmsError;
use crate::store::bucket_keys::StaleSeal;
use crate::store::meta::{Bucket, DbError, Meta};

/// Rows read per page.
const PAGE: i64 = 200;

/// Why a bucket key rotation or re-seal step failed.
#[derive(Debug, thiserror::Error)]
pub enum BkError {
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error("metadata store: {0}")]
    Db(#[from] DbError),
    #[error("no bucket named {0}")]
    NoSuchBucket(String),
    #[error(
        "bucket {0} has no bucket key yet (no SSE-S3 object was ever written): nothing to rotate"
    )]
    NoKey(String),
    #[error("bucket {0} was rotated concurrently; run the command again")]
    Concurrent(String),
    #[error("{0}")]
    Key(String),
}

/// Make a new generation of bucket `name`'s key the one new writes use; returns its number.
pub async fn rotate(
    meta: &Meta,
    keys: &BucketKeys,
    name: &str,
    request_id: &str,
) -> Result<u32, BkError> {
    let bucket = meta
        .bucket(name)
        .await?
        .ok_or_else(|| BkError::NoSuchBucket(name.to_string()))?;
    if bucket.wrapped_key.is_none() {
        return Err(BkError::NoKey(name.to_string()));
    }
    let generated = keys.generate(&bucket.id, request_id).await?;
    if !meta
        .rotate_bucket_key(
            name,
            bucket.bk_generation,
            (&generated.wrapped, generated.version),
        )
        .await?
    {
        return Err(BkError::Concurrent(name.to_string()));
    }
    Ok(bucket.bk_generation + 1)
}

/// What a re-seal sweep did and where the node stands afterwards.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ResealReport {
    /// SSE-S3 object versions and uploads.
    pub rows: i64,
    /// Of which sealed under their bucket's newest key generation.
    pub at_newest_generation: i64,
    /// `at_newest_generation / rows` in percent (100 with no rows).
    pub coverage_percent: f64,
    /// Rows re-sealed by this sweep.
    pub resealed: u64,
    /// Rows that could not be re-sealed (see the node's log).
    pub failed: u64,
    pub elapsed_ms: u64,
    pub rows_per_s: f64,
}

impl ResealReport {
    /// Every SSE-S3 row under its bucket's newest generation and none failed.
    pub fn complete(&self) -> bool {
        self.failed == 0 && self.at_newest_generation == self.rows
    }
}

/// Bucket keys by (bucket id, generation), for one sweep.
struct Keys<'a> {
    meta: &'a Meta,
    keys: &'a BucketKeys,
    buckets: HashMap<String, Bucket>,
}

impl Keys<'_> {
    async fn bucket(&mut self, name: &str) -> Result<Option<Bucket>, BkError> {
        if let Some(b) = self.buckets.get(name) {
            return Ok(Some(b.clone()));
        }
        let b = self.meta.bucket(name).await?;
        if let Some(b) = &b {
            self.buckets.insert(name.to_string(), b.clone());
        }
        Ok(b)
    }

    async fn key(
        &self,
        bucket: &Bucket,
        generation: u32,
        rid: &str,
    ) -> Result<Arc<SecretKey32>, BkError> {
        let wrapped = if generation == bucket.bk_generation {
            bucket.wrapped_key.clone()
        } else {
            self.meta
                .archived_bucket_key(&bucket.id, generation)
                .await?
        };
        let Some((w, v)) = wrapped else {
            return Err(BkError::Key(format!(
                "generation {generation} of bucket {} is not stored",
                bucket.name
            )));
        };
        let bk = envelope::bucket_key(
            self.keys,
            BucketKeyRef {
                bucket_id: &bucket.id,
                generation,
                wrapped: Some((&w, v)),
            },
            rid,
            |_, _| async { Err("the sweep never generates a key".to_string()) },
        )
        .await
        .map_err(|e| BkError::Key(e.to_string()))?;
        Ok(bk.key)
    }
}

/// Re-seal one stale row under its bucket's newest generation. `Ok(true)`: re-sealed.
async fn reseal_row(k: &mut Keys<'_>, row: &StaleSeal, rid: &str) -> Result<bool, BkError> {
    let Some(bucket) = k.bucket(&row.bucket).await? else {
        return Ok(false);
    };
    let stale = SealedKey {
        salt: row
            .salt
            .as_slice()
            .try_into()
            .map_err(|_| BkError::Key("stored salt has the wrong length".into()))?,
        sealed: row
            .sealed
            .as_slice()
            .try_into()
            .map_err(|_| BkError::Key("stored sealed key has the wrong length".into()))?,
    };
    let binding = Binding {
        bucket_id: &bucket.id,
        object_key: &row.key,
        version_id: &row.version_id,
    };
    let old = k.key(&bucket, row.generation, rid).await?;
    let object_key = keys::unseal(SealMode::SseS3, &old, &binding, &stale).map_err(|_| {
        BkError::Key("the sealed object key does not open with its bucket key".into())
    })?;
    let new = k.key(&bucket, bucket.bk_generation, rid).await?;
    let fresh = keys::seal(SealMode::SseS3, &new, &binding, &object_key);
    Ok(k.meta
        .reseal_stale(row, &fresh.salt, &fresh.sealed, bucket.bk_generation)
        .await?)
}

/// Re-seal every SSE-S3 object version and upload sealed under an older bucket key generation;
/// `progress(rows done)` after each row. Stops at the first "KMS unavailable" (rerun later).
pub async fn reseal_sweep(
    meta: &Meta,
    keys: &BucketKeys,
    mut progress: impl FnMut(u64),
) -> Result<ResealReport, BkError> {
    let started = Instant::now();
    let mut report = ResealReport::default();
    let mut k = Keys {
        meta,
        keys,
        buckets: HashMap::new(),
    };
    let rid = format!("reseal-{}", uuid::Uuid::new_v4());
    let mut done = 0u64;
    let mut handle = |res: Result<bool, BkError>, row: &StaleSeal, report: &mut ResealReport| {
        match res {
            Ok(true) => report.resealed += 1,
            Ok(false) => {}
            Err(BkError::Kms(e)) if e.is_unavailable() => return Err(BkError::Kms(e)),
            Err(e) => {
                report.failed += 1;
                tracing::error!(bucket = %row.bucket, version_id = %row.version_id, error = %e, "bucket key re-seal failed for this object");
            }
        }
        done += 1;
        progress(done);
        Ok(())
    };
    let mut after = (String::new(), String::new());
    loop {
        let page = meta.stale_object_seals((&after.0, &after.1), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = (last.bucket.clone(), last.key.clone());
        for row in &page {
            let res = reseal_row(&mut k, row, &rid).await;
            handle(res, row, &mut report)?;
        }
    }
    let mut after = String::new();
    loop {
        let page = meta.stale_upload_seals(&after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.upload_id.clone().unwrap_or_default();
        for row in &page {
            let res = reseal_row(&mut k, row, &rid).await;
            handle(res, row, &mut report)?;
        }
    }
    let (rows, current) = meta.sse_s3_generation_coverage().await?;
    report.rows = rows;
    report.at_newest_generation = current;
    report.coverage_percent = if rows == 0 {
        100.0
    } else {
        current as f64 * 100.0 / rows as f64
    };
    let elapsed = started.elapsed();
    report.elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    report.rows_per_s = if elapsed.as_secs_f64() > 0.0 {
        done as f64 / elapsed.as_secs_f64()
    } else {
        0.0
    };
    Ok(report)
}
