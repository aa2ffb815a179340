//! The bounded, time-limited cache of plaintext bucket data keys, in front of the KMS client,
//! on `moka`'s async cache.
//!
//! Secret: the cached keys. They live only here, behind `Arc<SecretKey32>` (zeroized when the
//! last reference drops), for at most `ttl`, and at most `capacity` of them (least recently
//! used first out). An evicted key (TTL, capacity, KMS loss) is handed by value to the eviction
//! listener, which counts it and drops its reference: nothing is copied out. The periodic
//! [`BucketKeys::sweep`] runs moka's pending maintenance so that expired keys are dropped even
//! when no request touches the cache. Concurrent misses for one bucket make one KMS call
//! (`try_get_with`): the other callers wait for it and share its key, or its failure.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use coffer_common::secret::SecretKey32;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;

use super::kms_client::{KmsClient, KmsError};

/// Cache counters, exported as metrics.
#[derive(Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub kms_calls: AtomicU64,
    pub kms_failures: AtomicU64,
    /// KMS calls by encryption mode and operation (see [`KmsCallMode`], [`KmsOp`]).
    by_mode: [[AtomicU64; 2]; 3],
}

/// The encryption mode a KMS call served (the `mode` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsCallMode {
    /// SSE-S3 bucket keys.
    SseS3,
    /// SSE-KMS, one data key per object.
    SseKms,
    /// SSE-KMS with an S3 Bucket Key.
    SseKmsBucketKey,
}

impl KmsCallMode {
    pub const ALL: [KmsCallMode; 3] = [
        KmsCallMode::SseS3,
        KmsCallMode::SseKms,
        KmsCallMode::SseKmsBucketKey,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            KmsCallMode::SseS3 => "sse-s3",
            KmsCallMode::SseKms => "sse-kms",
            KmsCallMode::SseKmsBucketKey => "sse-kms-bucket-key",
        }
    }

    fn index(self) -> usize {
        match self {
            KmsCallMode::SseS3 => 0,
            KmsCallMode::SseKms => 1,
            KmsCallMode::SseKmsBucketKey => 2,
        }
    }
}

/// The KMS operation (the `op` metric label): generate a data key, or open one (SSE-S3 unwrap,
/// SSE-KMS decrypt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsOp {
    Generate,
    Decrypt,
}

impl KmsOp {
    pub const ALL: [KmsOp; 2] = [KmsOp::Generate, KmsOp::Decrypt];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            KmsOp::Generate => "generate",
            KmsOp::Decrypt => "decrypt",
        }
    }

    fn index(self) -> usize {
        match self {
            KmsOp::Generate => 0,
            KmsOp::Decrypt => 1,
        }
    }
}

impl CacheStats {
    /// Count one KMS call (also in the `kms_calls` total).
    pub fn count_call(&self, mode: KmsCallMode, op: KmsOp) {
        self.kms_calls.fetch_add(1, Ordering::Relaxed);
        self.by_mode[mode.index()][op.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// KMS calls made for one mode and operation.
    pub fn calls(&self, mode: KmsCallMode, op: KmsOp) -> u64 {
        self.by_mode[mode.index()][op.index()].load(Ordering::Relaxed)
    }
}

/// Bucket keys: cache + KMS client.
pub struct BucketKeys {
    kms: Option<KmsClient>,
    cache: Cache<String, Arc<SecretKey32>>,
    disabled: AtomicBool,
    pub stats: Arc<CacheStats>,
    /// SSE-KMS data keys (bucket keys and the keys they open), see [`super::sse_kms`].
    pub kms_keys: super::sse_kms::KmsKeyCache,
}

impl BucketKeys {
    /// `kms = None` means no KMS is configured: every key request fails with `NotConfigured`.
    pub fn new(kms: Option<KmsClient>, ttl: Duration, capacity: usize) -> Self {
        let stats = Arc::new(CacheStats::default());
        let counted = stats.clone();
        let cache = Cache::builder()
            .max_capacity(capacity.max(1) as u64)
            .time_to_live(ttl)
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(
                move |_bucket: Arc<String>, key: Arc<SecretKey32>, cause: RemovalCause| {
                    if cause != RemovalCause::Replaced {
                        counted.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                    // The cache's reference goes here; the key is zeroized once no request
                    // still holds it.
                    drop(key);
                },
            )
            .build();
        Self {
            kms,
            cache,
            disabled: AtomicBool::new(false),
            stats,
            kms_keys: super::sse_kms::KmsKeyCache::new(ttl, capacity),
        }
    }

    /// The KMS client, if one is configured and not lost (for SSE-KMS calls).
    pub fn client(&self) -> Result<&KmsClient, KmsError> {
        let kms = self.kms.as_ref().ok_or(KmsError::NotConfigured)?;
        self.check_enabled()?;
        Ok(kms)
    }

    /// The KMS is gone for good (e.g. the dev child process died): drop every cached key and
    /// answer every key request with `Unavailable` from now on.
    pub fn disable(&self) {
        self.disabled.store(true, Ordering::SeqCst);
        self.cache.invalidate_all();
        self.kms_keys.invalidate_all();
    }

    /// The KMS is back (the dev child was restarted): key requests reach it again.
    pub fn enable(&self) {
        self.disabled.store(false, Ordering::SeqCst);
    }

    fn check_enabled(&self) -> Result<(), KmsError> {
        if self.disabled.load(Ordering::SeqCst) {
            return Err(KmsError::Unavailable("KMS process is not running".into()));
        }
        Ok(())
    }

    /// For readiness: false when the KMS was lost for good or does not answer its health
    /// check now; true without a KMS (nothing to wait for: SSE-S3 answers 501).
    pub async fn kms_usable(&self) -> bool {
        if self.check_enabled().is_err() {
            return false;
        }
        match &self.kms {
            Some(k) => k.usable().await,
            None => true,
        }
    }

    /// The KMS client, if one is configured (for its replica figures in `/metrics`).
    pub fn kms(&self) -> Option<&KmsClient> {
        self.kms.as_ref()
    }

    /// True when a KMS is configured.
    pub fn has_kms(&self) -> bool {
        self.kms.is_some()
    }

    /// Drop expired and invalidated keys now (run periodically), through the eviction listener.
    pub async fn sweep(&self) {
        self.cache.run_pending_tasks().await;
        self.kms_keys.sweep().await;
    }

    /// Number of keys held (as of moka's last maintenance).
    pub fn len(&self) -> usize {
        usize::try_from(self.cache.entry_count()).unwrap_or(usize::MAX)
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached key of `bucket_id`, or the one `load` yields, which is cached. Concurrent
    /// misses on one bucket run one `load`; the others wait and share its result.
    async fn get_or_load<F, Fut>(
        &self,
        bucket_id: &str,
        load: F,
    ) -> Result<Arc<SecretKey32>, KmsError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<SecretKey32, KmsError>>,
    {
        let mut loaded = false;
        let result = self
            .cache
            .try_get_with_by_ref(bucket_id, async {
                loaded = true;
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                self.stats.count_call(KmsCallMode::SseS3, KmsOp::Decrypt);
                load().await.map(Arc::new).inspect_err(|_| {
                    self.stats.kms_failures.fetch_add(1, Ordering::Relaxed);
                })
            })
            .await;
        if !loaded && result.is_ok() {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        result.map_err(|e| (*e).clone())
    }

    /// The plaintext key of a bucket whose wrapped key is stored: from cache, or unwrapped by
    /// the KMS (one call per bucket however many callers miss at once). The caller whose miss
    /// made the KMS call also gets the newer wrapping the KMS offered, if any, to store.
    pub async fn unwrap(
        &self,
        bucket_id: &str,
        generation: u32,
        wrapped: &[u8],
        version: u32,
        request_id: &str,
    ) -> Result<(Arc<SecretKey32>, Option<(Vec<u8>, u32)>), KmsError> {
        let kms = self.kms.as_ref().ok_or(KmsError::NotConfigured)?;
        self.check_enabled()?;
        let newer = std::sync::Mutex::new(None);
        let key = self
            .get_or_load(&cache_key(bucket_id, generation), || async {
                let u = kms.unwrap(bucket_id, wrapped, version, request_id).await?;
                if let Ok(mut n) = newer.lock() {
                    *n = u.newer;
                }
                Ok(u.plaintext)
            })
            .await?;
        let newer = newer.into_inner().ok().flatten();
        Ok((key, newer))
    }

    /// Unwrap through the KMS without the cache (the re-wrap sweep: the call itself tells the KMS
    /// which wrapping this node holds, and answers any newer one).
    pub async fn present(
        &self,
        bucket_id: &str,
        wrapped: &[u8],
        version: u32,
        request_id: &str,
    ) -> Result<super::kms_client::Unwrapped, KmsError> {
        let kms = self.kms.as_ref().ok_or(KmsError::NotConfigured)?;
        self.check_enabled()?;
        self.stats.kms_calls.fetch_add(1, Ordering::Relaxed);
        kms.unwrap(bucket_id, wrapped, version, request_id)
            .await
            .inspect_err(|_| {
                self.stats.kms_failures.fetch_add(1, Ordering::Relaxed);
            })
    }

    /// A new bucket key from the KMS. The caller persists the wrapped key (first writer wins)
    /// and then calls [`BucketKeys::insert`] with the key that won.
    pub async fn generate(
        &self,
        bucket_id: &str,
        request_id: &str,
    ) -> Result<super::kms_client::GeneratedKey, KmsError> {
        let kms = self.kms.as_ref().ok_or(KmsError::NotConfigured)?;
        self.check_enabled()?;
        self.stats.count_call(KmsCallMode::SseS3, KmsOp::Generate);
        kms.generate(bucket_id, request_id).await.inspect_err(|_| {
            self.stats.kms_failures.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Put a known plaintext key in the cache.
    pub async fn insert(
        &self,
        bucket_id: &str,
        generation: u32,
        key: SecretKey32,
    ) -> Arc<SecretKey32> {
        let k = Arc::new(key);
        self.cache
            .insert(cache_key(bucket_id, generation), k.clone())
            .await;
        k
    }
}

/// The cache entry of one generation of a bucket's key (generation 1 under the bucket id).
fn cache_key(bucket_id: &str, generation: u32) -> String {
    if generation <= 1 {
        bucket_id.to_string()
    } else {
        format!("{bucket_id}\u{0}{generation}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn key(b: u8) -> SecretKey32 {
        SecretKey32::from_bytes([b; 32])
    }

    #[tokio::test]
    async fn keys_expire_after_the_ttl_and_are_evicted() {
        let keys = BucketKeys::new(None, Duration::from_millis(100), 10);
        let calls = AtomicUsize::new(0);
        let load = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(key(1))
        };
        keys.get_or_load("b", load).await.unwrap();
        keys.get_or_load("b", load).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "second lookup is a hit");
        assert_eq!(keys.stats.hits.load(Ordering::Relaxed), 1);
        assert_eq!(keys.stats.misses.load(Ordering::Relaxed), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        keys.sweep().await;
        assert_eq!(keys.len(), 0);
        assert_eq!(keys.stats.evictions.load(Ordering::Relaxed), 1);
        keys.get_or_load("b", load).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "expired key is loaded again"
        );
    }

    #[tokio::test]
    async fn capacity_bounds_the_keys_held() {
        let keys = BucketKeys::new(None, Duration::from_secs(60), 3);
        for i in 0..10u8 {
            keys.insert(&format!("b{i}"), 1, key(i)).await;
            keys.sweep().await;
        }
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.stats.evictions.load(Ordering::Relaxed), 7);
        // The evicted keys are gone: only the cache held them, so they were dropped.
        let mut held = Vec::new();
        for i in 0..10u8 {
            if keys.cache.get(&format!("b{i}")).await.is_some() {
                held.push(i);
            }
        }
        assert_eq!(held, [7, 8, 9], "least recently used keys went first");
    }

    #[tokio::test]
    async fn evicted_key_is_dropped_not_copied() {
        let keys = BucketKeys::new(None, Duration::from_secs(60), 1);
        let k = keys.insert("a", 1, key(1)).await;
        let weak = Arc::downgrade(&k);
        drop(k);
        keys.sweep().await;
        assert!(weak.upgrade().is_some(), "the cache holds the key");
        keys.insert("b", 1, key(2)).await;
        keys.sweep().await;
        keys.sweep().await;
        assert!(
            weak.upgrade().is_none(),
            "evicted key was dropped (and zeroized)"
        );
        keys.disable();
        keys.sweep().await;
        assert_eq!(keys.len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_on_one_bucket_make_one_load() {
        let keys = Arc::new(BucketKeys::new(None, Duration::from_secs(60), 10));
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (keys, calls, gate) = (keys.clone(), calls.clone(), gate.clone());
                tokio::spawn(async move {
                    gate.wait().await;
                    keys.get_or_load("bucket", || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Stay in flight while the other callers miss.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(key(7))
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().expose_secret(), &[7u8; 32]);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(keys.stats.misses.load(Ordering::Relaxed), 1);
        assert_eq!(keys.stats.hits.load(Ordering::Relaxed), 15);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_share_one_failure() {
        let keys = Arc::new(BucketKeys::new(None, Duration::from_secs(60), 10));
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Barrier::new(8));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (keys, calls, gate) = (keys.clone(), calls.clone(), gate.clone());
                tokio::spawn(async move {
                    gate.wait().await;
                    keys.get_or_load("bucket", || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err(KmsError::Unavailable("down".into()))
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Err(KmsError::Unavailable(_))));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(keys.stats.kms_failures.load(Ordering::Relaxed), 1);
        assert_eq!(keys.len(), 0);
    }
}
