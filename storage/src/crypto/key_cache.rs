//! The bounded, time-limited cache of plaintext bucket data keys, in front of the KMS client.
//!
//! Secret: the cached keys. They live only here, behind `Arc<SecretKey32>` (zeroized when the
//! last reference drops), for at most `ttl`; a sweeper drops expired entries. Concurrent misses
//! for one bucket make one KMS call: callers queue on the bucket's slot, and a caller that was
//! waiting while the call failed gets that failure at once instead of calling again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_common::secret::SecretKey32;

use super::kms_client::{KmsClient, KmsError};

#[derive(Default)]
struct SlotState {
    key: Option<(Arc<SecretKey32>, Instant)>,
    last_failure: Option<(Instant, KmsError)>,
}

type Slot = Arc<tokio::sync::Mutex<SlotState>>;

/// Cache counters, exported as metrics.
#[derive(Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub kms_calls: AtomicU64,
    pub kms_failures: AtomicU64,
}

/// Bucket keys: cache + KMS client.
pub struct BucketKeys {
    kms: Option<KmsClient>,
    slots: Mutex<HashMap<String, Slot>>,
    ttl: Duration,
    capacity: usize,
    disabled: std::sync::atomic::AtomicBool,
    pub stats: CacheStats,
}

impl BucketKeys {
    /// `kms = None` means no KMS is configured: every key request fails with `NotConfigured`.
    pub fn new(kms: Option<KmsClient>, ttl: Duration, capacity: usize) -> Self {
        Self {
            kms,
            slots: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
            disabled: Default::default(),
            stats: CacheStats::default(),
        }
    }

    /// The KMS is gone for good (e.g. the dev child process died): drop every cached key and
    /// answer every key request with `Unavailable` from now on.
    pub fn disable(&self) {
        self.disabled.store(true, Ordering::SeqCst);
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
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
            Some(k) => k.probe().await.is_ok(),
            None => true,
        }
    }

    /// True when a KMS is configured.
    pub fn has_kms(&self) -> bool {
        self.kms.is_some()
    }

    fn slot(&self, bucket_id: &str) -> Slot {
        let mut map = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(bucket_id) {
            return s.clone();
        }
        if map.len() >= self.capacity {
            self.evict_locked(&mut map);
        }
        let s: Slot = Arc::default();
        map.insert(bucket_id.to_string(), s.clone());
        s
    }

    fn evict_locked(&self, map: &mut HashMap<String, Slot>) {
        let now = Instant::now();
        let ttl = self.ttl;
        let before = map.len();
        map.retain(|_, s| match s.try_lock() {
            Ok(st) => st
                .key
                .as_ref()
                .is_some_and(|(_, t)| now.duration_since(*t) < ttl),
            Err(_) => true,
        });
        if map.len() >= self.capacity {
            // Still full of live keys: drop an arbitrary idle one.
            let victim = map
                .iter()
                .find(|(_, s)| s.try_lock().is_ok())
                .map(|(k, _)| k.clone());
            if let Some(v) = victim {
                map.remove(&v);
            }
        }
        self.stats
            .evictions
            .fetch_add((before - map.len()) as u64, Ordering::Relaxed);
    }

    /// Drop every expired key (run periodically).
    pub fn sweep(&self) {
        let mut map = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let ttl = self.ttl;
        let mut dropped = 0u64;
        for s in map.values() {
            if let Ok(mut st) = s.try_lock()
                && st
                    .key
                    .as_ref()
                    .is_some_and(|(_, t)| now.duration_since(*t) >= ttl)
            {
                st.key = None;
                dropped += 1;
            }
        }
        map.retain(|_, s| s.try_lock().map(|st| st.key.is_some()).unwrap_or(true));
        self.stats.evictions.fetch_add(dropped, Ordering::Relaxed);
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.slots.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The plaintext key of a bucket whose wrapped key is stored: from cache, or unwrapped by
    /// the KMS (one call per bucket however many callers miss at once).
    pub async fn unwrap(
        &self,
        bucket_id: &str,
        wrapped: &[u8],
        version: u32,
        request_id: &str,
    ) -> Result<Arc<SecretKey32>, KmsError> {
        let kms = self.kms.as_ref().ok_or(KmsError::NotConfigured)?;
        self.check_enabled()?;
        let started = Instant::now();
        let slot = self.slot(bucket_id);
        let mut st = slot.lock().await;
        if let Some((k, t)) = &st.key
            && t.elapsed() < self.ttl
        {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(k.clone());
        }
        if let Some((at, err)) = &st.last_failure
            && *at >= started
        {
            return Err(err.clone());
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        self.stats.kms_calls.fetch_add(1, Ordering::Relaxed);
        match kms.unwrap(bucket_id, wrapped, version, request_id).await {
            Ok(k) => {
                let k = Arc::new(k);
                st.key = Some((k.clone(), Instant::now()));
                st.last_failure = None;
                Ok(k)
            }
            Err(e) => {
                self.stats.kms_failures.fetch_add(1, Ordering::Relaxed);
                st.last_failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
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
        self.stats.kms_calls.fetch_add(1, Ordering::Relaxed);
        kms.generate(bucket_id, request_id).await.inspect_err(|_| {
            self.stats.kms_failures.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Put a known plaintext key in the cache.
    pub async fn insert(&self, bucket_id: &str, key: SecretKey32) -> Arc<SecretKey32> {
        let k = Arc::new(key);
        let slot = self.slot(bucket_id);
        let mut st = slot.lock().await;
        st.key = Some((k.clone(), Instant::now()));
        st.last_failure = None;
        k
    }
}
