//! The storage node's only connection to coffer-kms: generate and unwrap bucket data keys
//! (SSE-S3), and generate, decrypt and describe under named keys (SSE-KMS).
//!
//! Secret: the service credential (signs one short-lived token per request) and the plaintext
//! keys in responses, which are turned into [`SecretKey32`] at once and never logged. Every call
//! has a timeout; failures are classified so the S3 edge can answer 503 (unreachable, slow,
//! 5xx or throttled) or 500 (refused, malformed) and never falls back to plaintext.
//!
//! Replicas: the URL setting may list several KMS base URLs (comma-separated), replicas of one
//! KMS (same root keys, e.g. `coffer-kms serve` replicas on one PostgreSQL). A background task
//! asks each one's `/ready` every [`HEALTH_INTERVAL`]; a call goes to the replica that answered
//! last (while it is healthy), else to the next healthy one in list order, and a call that fails
//! with a connect error, a timeout, a 5xx or a 429 is sent once more to the next healthy replica
//! (every call is safe to repeat from the node's view: generate, unwrap, decrypt and describe
//! change nothing the node relies on), marking the failed replica down until its `/ready`
//! answers again. A replica lost under load thus costs at most the calls in flight to it (they
//! are retried), each call at most two timeouts. Failovers are counted (`coffer_kms_failovers`)
//! and logged with both URLs.
//!
//! What the KMS answers is bounded before it is believed: at most [`MAX_RESPONSE_BYTES`] are read
//! (a larger or endless body is `Malformed`, not buffered), and a generated wrapped key must be
//! exactly [`WRAPPED_KEY_LEN`] bytes before the node stores it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coffer_common::credential::Credential;
use coffer_common::kms_api::{
    EncryptionContext, ErrorBody, GenerateDataKeyRequest, GenerateDataKeyResponse,
    KmsDecryptRequest, KmsDecryptResponse, KmsDescribeRequest, KmsGenerateRequest,
    KmsGenerateResponse, PATH_GENERATE, PATH_KMS_DECRYPT, PATH_KMS_DESCRIBE, PATH_KMS_GENERATE,
    PATH_UNWRAP, UnwrapDataKeyRequest, UnwrapDataKeyResponse,
};
use coffer_common::secret::SecretKey32;

/// Most bytes read from one KMS response (its answers are a few hundred bytes).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Length of a wrapped bucket key: AES-KW (RFC 3394) of a 32-byte key.
pub const WRAPPED_KEY_LEN: usize = 40;
/// How often each replica's `/ready` is asked (with two or more replicas).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for one health check (bounded further by the call timeout).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a KMS call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    /// Connection refused, reset, TLS failure or timeout: retry later (S3: 503).
    #[error("KMS unavailable: {0}")]
    Unavailable(String),
    /// The KMS answered with an error (refused token, scope, integrity failure...).
    #[error("KMS refused the request: {code}")]
    Refused { status: u16, code: String },
    /// The KMS answered something that is not a valid response.
    #[error("KMS response is malformed")]
    Malformed,
    /// No KMS is configured on this node.
    #[error("no KMS configured")]
    NotConfigured,
}

impl KmsError {
    /// True when the failure is transient and the client should retry (503 + Retry-After).
    pub fn is_unavailable(&self) -> bool {
        match self {
            KmsError::Unavailable(_) => true,
            // 5xx: sealed, overloaded, failing, or a proxy in front of it; 429: throttled.
            KmsError::Refused { status, .. } => *status >= 500 || *status == 429,
            KmsError::Malformed | KmsError::NotConfigured => false,
        }
    }
}

/// Why the start-up probe of the KMS failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The TLS handshake failed: the KMS certificate is not one our CA issued, or it is not for
    /// this host, or the KMS refused our client certificate.
    #[error("KMS TLS verification failed: {0}")]
    Untrusted(String),
    /// Not reachable or not healthy right now.
    #[error("KMS unreachable: {0}")]
    Unreachable(String),
}

/// Settings for the KMS client.
pub struct KmsClientConfig {
    /// Base URL, e.g. `https://127.0.0.1:7443`, or several replicas' base URLs separated by
    /// commas (tried in that order; see the module doc).
    pub url: String,
    /// Service credential (audience `coffer-kms-service`).
    pub credential: Credential,
    /// PEM CA bundle that must have issued the KMS certificate (https URLs).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate + key for mutual TLS.
    pub client_identity_pem: Option<Vec<u8>>,
    /// Upper bound of one call, connect included.
    pub timeout: Duration,
}

/// A bucket data key as generated by the KMS.
pub struct GeneratedKey {
    pub plaintext: SecretKey32,
    pub wrapped: Vec<u8>,
    pub version: u32,
}

/// A data key generated under a named KMS key (SSE-KMS).
pub struct NamedDataKey {
    pub plaintext: SecretKey32,
    /// The KMS's self-describing ciphertext blob (opaque; stored with the object).
    pub blob: Vec<u8>,
    /// Canonical ARN of the key that generated it.
    pub key_arn: String,
}

/// Longest ciphertext blob accepted from the KMS (its blobs are well under 200 bytes).
pub const MAX_BLOB_LEN: usize = 1024;

/// What describe-key tells a service about a named key.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NamedKeyInfo {
    pub arn: String,
    pub state: coffer_common::kms_api::KmsKeyState,
}

/// HTTP client of the KMS service API, over one or more replicas.
pub struct KmsClient {
    http: reqwest::Client,
    shared: Arc<Replicas>,
    credential: Credential,
    /// The health checker (two or more replicas), stopped with the client.
    checker: Option<tokio::task::AbortHandle>,
}

/// One KMS replica and what the node knows of it.
struct Replica {
    base: String,
    /// False from a failed call or health check until a check or call succeeds.
    healthy: AtomicBool,
}

/// The replicas, shared with the health checker.
struct Replicas {
    list: Vec<Replica>,
    /// The replica that answered last.
    preferred: AtomicUsize,
    /// Calls sent again to another replica after a retryable failure.
    failovers: AtomicU64,
    /// True once the health checker found a replica ready or finished its first round.
    checked: tokio::sync::watch::Sender<bool>,
    probe_timeout: Duration,
}

impl Replicas {
    /// The replica for a call, and the one to retry it on: the preferred one when healthy, else
    /// the next healthy one in list order (the preferred one when none is); the retry goes to
    /// the next healthy one after it (else simply the next one).
    fn pick(&self) -> (usize, Option<usize>) {
        let n = self.list.len();
        let p = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let healthy = |i: usize| {
            self.list
                .get(i)
                .is_some_and(|r| r.healthy.load(Ordering::Relaxed))
        };
        let first = (0..n)
            .map(|k| (p + k) % n)
            .find(|&i| healthy(i))
            .unwrap_or(p);
        let second = (1..n)
            .map(|k| (first + k) % n)
            .find(|&i| healthy(i))
            .or_else(|| (n > 1).then(|| (first + 1) % n));
        (first, second)
    }

    fn base(&self, i: usize) -> &str {
        self.list.get(i).map_or("", |r| r.base.as_str())
    }

    fn set_health(&self, i: usize, up: bool, why: &str) {
        if let Some(r) = self.list.get(i) {
            let was = r.healthy.swap(up, Ordering::Relaxed);
            if was != up && self.list.len() > 1 {
                if up {
                    tracing::info!(url = %r.base, "KMS replica healthy again");
                } else {
                    tracing::warn!(url = %r.base, why, "KMS replica marked down");
                }
            }
        }
    }

    /// Ask every replica's `/ready` once, at the same time; set their health.
    async fn check_all(&self, http: &reqwest::Client) {
        let checks = self.list.iter().enumerate().map(|(i, r)| async move {
            let url = format!("{}{}", r.base, coffer_common::kms_api::PATH_READY);
            let res = http.get(url).timeout(self.probe_timeout).send().await;
            match res {
                Ok(resp) if resp.status().is_success() => {
                    self.set_health(i, true, "");
                    // A call waiting for the first round may go now.
                    self.checked.send_replace(true);
                }
                Ok(resp) => self.set_health(i, false, &format!("ready answered {}", resp.status())),
                Err(e) => self.set_health(i, false, &classify(&e)),
            }
        });
        futures::future::join_all(checks).await;
    }
}

/// Health checks every [`HEALTH_INTERVAL`] until the client is dropped.
async fn health_loop(shared: std::sync::Weak<Replicas>, http: reqwest::Client) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = shared.upgrade() else { break };
        r.check_all(&http).await;
        r.checked.send_replace(true);
    }
}

impl Drop for KmsClient {
    fn drop(&mut self) {
        if let Some(c) = self.checker.take() {
            c.abort();
        }
    }
}

/// Why a KMS client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KmsClientBuildError {
    #[error("KMS CA bundle is not valid PEM: {0}")]
    BadCa(String),
    #[error("KMS client identity is not valid PEM: {0}")]
    BadIdentity(String),
    #[error(
        "https KMS URL {0} needs a CA bundle (kms.ca_file); refusing to trust the system roots or to fall back to http"
    )]
    MissingCa(String),
    #[error("building the KMS HTTP client failed: {0}")]
    Http(String),
    #[error("no KMS URL given")]
    NoUrl,
}

impl KmsClient {
    pub fn new(cfg: KmsClientConfig) -> Result<Self, KmsClientBuildError> {
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .use_rustls_tls()
            .tls_built_in_root_certs(false);
        let urls = split_urls(&cfg.url);
        if urls.is_empty() {
            return Err(KmsClientBuildError::NoUrl);
        }
        if let Some(https) = urls.iter().find(|u| u.starts_with("https://")) {
            let ca = cfg
                .ca_pem
                .as_ref()
                .ok_or_else(|| KmsClientBuildError::MissingCa(https.clone()))?;
            for cert in reqwest::Certificate::from_pem_bundle(ca)
                .map_err(|e| KmsClientBuildError::BadCa(e.to_string()))?
            {
                b = b.add_root_certificate(cert);
            }
            if let Some(id) = &cfg.client_identity_pem {
                let identity = reqwest::Identity::from_pem(id)
                    .map_err(|e| KmsClientBuildError::BadIdentity(e.to_string()))?;
                b = b.identity(identity);
            }
        }
        let http = b
            .build()
            .map_err(|e| KmsClientBuildError::Http(e.to_string()))?;
        let several = urls.len() > 1;
        // Several replicas start unknown (down) until the first health checks answer.
        let list = urls
            .into_iter()
            .map(|u| Replica {
                base: u.trim_end_matches('/').to_string(),
                healthy: AtomicBool::new(!several),
            })
            .collect::<Vec<_>>();
        let (checked, _) = tokio::sync::watch::channel(!several);
        let shared = Arc::new(Replicas {
            list,
            preferred: AtomicUsize::new(0),
            failovers: AtomicU64::new(0),
            checked,
            probe_timeout: HEALTH_TIMEOUT.min(cfg.timeout),
        });
        // One replica needs no checker: every call goes to it anyway.
        let checker = match tokio::runtime::Handle::try_current() {
            Ok(rt) if several => Some(
                rt.spawn(health_loop(Arc::downgrade(&shared), http.clone()))
                    .abort_handle(),
            ),
            _ => {
                for r in &shared.list {
                    r.healthy.store(true, Ordering::Relaxed);
                }
                shared.checked.send_replace(true);
                None
            }
        };
        Ok(Self {
            http,
            shared,
            credential: cfg.credential,
            checker,
        })
    }

    /// The replicas' base URLs, in the configured order.
    pub fn urls(&self) -> Vec<String> {
        self.shared.list.iter().map(|r| r.base.clone()).collect()
    }

    /// Calls sent again to another replica after a retryable failure.
    pub fn failovers(&self) -> u64 {
        self.shared.failovers.load(Ordering::Relaxed)
    }

    /// Each replica's base URL and whether it is considered healthy now.
    pub fn replica_health(&self) -> Vec<(String, bool)> {
        self.shared
            .list
            .iter()
            .map(|r| (r.base.clone(), r.healthy.load(Ordering::Relaxed)))
            .collect()
    }

    /// For readiness: with several replicas, whether the health checker finds one healthy (no
    /// wait on a hung one); with one, its `/ready` now.
    pub async fn usable(&self) -> bool {
        if self.shared.list.len() > 1 && *self.shared.checked.borrow() {
            return self
                .shared
                .list
                .iter()
                .any(|r| r.healthy.load(Ordering::Relaxed));
        }
        self.probe().await.is_ok()
    }

    /// Wait (bounded) until the health checker finds a replica ready or ends its first round,
    /// so the first calls skip replicas that are down or hung.
    async fn first_round(&self) {
        let mut rx = self.shared.checked.subscribe();
        let wait = self.shared.probe_timeout + Duration::from_millis(250);
        let _ = tokio::time::timeout(wait, rx.wait_for(|done| *done)).await;
    }

    /// Send a call to a replica and, after a retryable failure, once more to the next one.
    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        request_id: &str,
    ) -> Result<Resp, KmsError> {
        if !*self.shared.checked.borrow() {
            self.first_round().await;
        }
        let (first, second) = self.shared.pick();
        let err = match self.call_on(first, path, body, request_id).await {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        let (true, Some(next)) = (err.is_unavailable(), second) else {
            return Err(err);
        };
        self.shared.failovers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            from = self.shared.base(first),
            to = self.shared.base(next),
            error = %err,
            request_id,
            "KMS call failed over to another replica"
        );
        self.call_on(next, path, body, request_id).await
    }

    /// One attempt on replica `i`, updating its health and the preferred replica.
    async fn call_on<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        i: usize,
        path: &str,
        body: &Req,
        request_id: &str,
    ) -> Result<Resp, KmsError> {
        let r = self
            .call_once(self.shared.base(i), path, body, request_id)
            .await;
        match &r {
            Ok(_) => {
                self.shared.set_health(i, true, "");
                self.shared.preferred.store(i, Ordering::Relaxed);
            }
            Err(e) if e.is_unavailable() => self.shared.set_health(i, false, &e.to_string()),
            Err(_) => {}
        }
        r
    }

    async fn call_once<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: &Req,
        request_id: &str,
    ) -> Result<Resp, KmsError> {
        let token = self.credential.token("POST", path);
        let resp = self
            .http
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .header(coffer_common::kms_api::REQUEST_ID_HEADER, request_id)
            .json(body)
            .send()
            .await
            .map_err(|e| KmsError::Unavailable(classify(&e)))?;
        let status = resp.status().as_u16();
        let bytes = read_bounded(resp).await?;
        if status != 200 {
            let code = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.code)
                .unwrap_or_else(|_| "unknown".into());
            return Err(KmsError::Refused { status, code });
        }
        serde_json::from_slice(&bytes).map_err(|_| KmsError::Malformed)
    }

    /// Connect to every replica and ask `/ready` (unsealed, audit writable), telling a
    /// certificate the node must not trust apart from a KMS that is merely down or sealed:
    /// `Untrusted` when any replica fails TLS verification, else `Ok` when one is ready.
    pub async fn probe(&self) -> Result<(), ProbeError> {
        let mut unreachable = Vec::new();
        let mut ok = false;
        for (url, r) in self.probe_each().await {
            match r {
                Ok(()) => ok = true,
                Err(ProbeError::Untrusted(why)) => {
                    return Err(ProbeError::Untrusted(format!("{url}: {why}")));
                }
                Err(ProbeError::Unreachable(why)) => unreachable.push(format!("{url}: {why}")),
            }
        }
        if ok {
            Ok(())
        } else {
            Err(ProbeError::Unreachable(unreachable.join("; ")))
        }
    }

    /// [`probe`](Self::probe) of each replica, at the same time: (base URL, result).
    pub async fn probe_each(&self) -> Vec<(String, Result<(), ProbeError>)> {
        let probes = self
            .shared
            .list
            .iter()
            .enumerate()
            .map(|(i, r)| async move {
                let res = self.probe_one(&r.base).await;
                self.shared.set_health(i, res.is_ok(), "not ready");
                (r.base.clone(), res)
            });
        futures::future::join_all(probes).await
    }

    async fn probe_one(&self, base: &str) -> Result<(), ProbeError> {
        let url = format!("{base}{}", coffer_common::kms_api::PATH_READY);
        match self.http.get(url).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(ProbeError::Unreachable(format!(
                "health answered {}",
                r.status()
            ))),
            Err(e) => match tls_failure(&e) {
                Some(why) => Err(ProbeError::Untrusted(why)),
                None => Err(ProbeError::Unreachable(classify(&e))),
            },
        }
    }

    /// Ask the KMS for a new bucket data key.
    pub async fn generate(
        &self,
        bucket_id: &str,
        request_id: &str,
    ) -> Result<GeneratedKey, KmsError> {
        let req = GenerateDataKeyRequest {
            bucket_id: bucket_id.to_string(),
        };
        let resp: GenerateDataKeyResponse = self.call(PATH_GENERATE, &req, request_id).await?;
        let plaintext = SecretKey32::from_base64(&resp.plaintext_key).ok_or(KmsError::Malformed)?;
        let wrapped = STANDARD
            .decode(&resp.wrapped_key)
            .map_err(|_| KmsError::Malformed)?;
        if wrapped.len() != WRAPPED_KEY_LEN {
            tracing::error!(
                len = wrapped.len(),
                "the KMS returned a wrapped key of unexpected length: refused"
            );
            return Err(KmsError::Malformed);
        }
        Ok(GeneratedKey {
            plaintext,
            wrapped,
            version: resp.key_version,
        })
    }

    /// Ask the KMS to unwrap a stored bucket data key.
    pub async fn unwrap(
        &self,
        bucket_id: &str,
        wrapped: &[u8],
        version: u32,
        request_id: &str,
    ) -> Result<Unwrapped, KmsError> {
        let req = UnwrapDataKeyRequest {
            bucket_id: bucket_id.to_string(),
            wrapped_key: STANDARD.encode(wrapped),
            key_version: version,
        };
        let resp: UnwrapDataKeyResponse = self.call(PATH_UNWRAP, &req, request_id).await?;
        let plaintext = SecretKey32::from_base64(&resp.plaintext_key).ok_or(KmsError::Malformed)?;
        // A newer wrapping is an offer: one that is not well formed is ignored (the stored one
        // keeps working), never stored.
        let newer = match (resp.current_wrapped_key, resp.current_key_version) {
            (Some(w), Some(v)) if v != version => match STANDARD.decode(w.trim()) {
                Ok(w) if w.len() == WRAPPED_KEY_LEN => Some((w, v)),
                _ => {
                    tracing::error!("the KMS offered a malformed newer wrapping: ignored");
                    None
                }
            },
            _ => None,
        };
        Ok(Unwrapped {
            plaintext,
            newer,
            active_version: resp.active_key_version,
        })
    }
}

impl KmsClient {
    /// A new data key under a named key (key id, ARN, alias or alias ARN), bound to `context`.
    pub async fn generate_named(
        &self,
        key_id: &str,
        context: &EncryptionContext,
        request_id: &str,
    ) -> Result<NamedDataKey, KmsError> {
        let req = KmsGenerateRequest {
            key_id: key_id.to_string(),
            encryption_context: context.clone(),
        };
        let resp: KmsGenerateResponse = self.call(PATH_KMS_GENERATE, &req, request_id).await?;
        let plaintext = SecretKey32::from_base64(&resp.plaintext_key).ok_or(KmsError::Malformed)?;
        let blob = STANDARD
            .decode(&resp.ciphertext_blob)
            .map_err(|_| KmsError::Malformed)?;
        if blob.is_empty() || blob.len() > MAX_BLOB_LEN || resp.key_arn.is_empty() {
            return Err(KmsError::Malformed);
        }
        Ok(NamedDataKey {
            plaintext,
            blob,
            key_arn: resp.key_arn,
        })
    }

    /// Open a ciphertext blob from [`KmsClient::generate_named`] with the context it was
    /// generated with; answers the plaintext key and the canonical key ARN.
    pub async fn decrypt_named(
        &self,
        blob: &[u8],
        context: &EncryptionContext,
        request_id: &str,
    ) -> Result<(SecretKey32, String), KmsError> {
        let req = KmsDecryptRequest {
            ciphertext_blob: STANDARD.encode(blob),
            encryption_context: context.clone(),
        };
        let resp: KmsDecryptResponse = self.call(PATH_KMS_DECRYPT, &req, request_id).await?;
        let key = SecretKey32::from_base64(&resp.plaintext_key).ok_or(KmsError::Malformed)?;
        Ok((key, resp.key_arn))
    }

    /// Canonical ARN and state of a named key.
    pub async fn describe_named(
        &self,
        key_id: &str,
        request_id: &str,
    ) -> Result<NamedKeyInfo, KmsError> {
        let req = KmsDescribeRequest {
            key_id: key_id.to_string(),
        };
        self.call(PATH_KMS_DESCRIBE, &req, request_id).await
    }
}

/// What an unwrap answered.
pub struct Unwrapped {
    pub plaintext: SecretKey32,
    /// The KMS re-wrapped this key under a newer root version: (wrapped key, version).
    pub newer: Option<(Vec<u8>, u32)>,
    /// The KMS's active root version, when it says.
    pub active_version: Option<u32>,
}

/// The non-empty, trimmed URLs of a comma-separated list.
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// The body of `resp`, refused (`Malformed`) as soon as it exceeds [`MAX_RESPONSE_BYTES`].
async fn read_bounded(mut resp: reqwest::Response) -> Result<Vec<u8>, KmsError> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(KmsError::Malformed);
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| KmsError::Unavailable(classify(&e)))?
    {
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(KmsError::Malformed);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The TLS error inside a transport error, if the failure was the handshake.
fn tls_failure(e: &reqwest::Error) -> Option<String> {
    find_rustls(e).map(|t| t.to_string())
}

/// Depth-first search of an error chain for a rustls error. `io::Error` hides the error it wraps
/// from `source()` (it returns the wrapped error's source), so wrapped errors are searched too.
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && let Some(t) = find_rustls(inner)
    {
        return Some(t);
    }
    e.source().and_then(find_rustls)
}

/// A short, secret-free description of a transport error.
fn classify(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "transport error".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot-per-connection fake KMS over plain HTTP that answers every request with
    /// `respond(stream)`.
    async fn fake_kms<F, Fut>(respond: F) -> String
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let respond = std::sync::Arc::new(respond);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let respond = respond.clone();
                tokio::spawn(async move {
                    // Read the request head and its (small) body.
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    loop {
                        let n = s.read(&mut tmp).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .map_or(0, |v| v.trim().parse().unwrap_or(0));
                            if buf.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    respond(s).await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn client(url: String) -> KmsClient {
        KmsClient::new(KmsClientConfig {
            url,
            credential: Credential::generate("node", coffer_common::jwt::AUD_SERVICE),
            ca_pem: None,
            client_identity_pem: None,
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    fn json_response(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn generated(wrapped_len: usize) -> String {
        serde_json::json!({
            "plaintext_key": STANDARD.encode([7u8; 32]),
            "wrapped_key": STANDARD.encode(vec![9u8; wrapped_len]),
            "key_version": 1,
        })
        .to_string()
    }

    fn error_response(status: u16, code: &str) -> Vec<u8> {
        let body = serde_json::json!({ "code": code, "message": "x" }).to_string();
        format!(
            "HTTP/1.1 {status} X\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// A fake KMS answering every request with `answer`, counting the requests it got.
    async fn counting_kms(answer: Vec<u8>) -> (String, std::sync::Arc<AtomicU64>) {
        let n = std::sync::Arc::new(AtomicU64::new(0));
        let seen = n.clone();
        let url = fake_kms(move |mut s| {
            let answer = answer.clone();
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(&answer).await;
            }
        })
        .await;
        (url, n)
    }

    /// A client over `urls` without the background health checker (the tests set health).
    fn unchecked(urls: String) -> KmsClient {
        let mut c = client(urls);
        if let Some(h) = c.checker.take() {
            h.abort();
        }
        for r in &c.shared.list {
            r.healthy.store(true, Ordering::SeqCst);
        }
        c.shared.checked.send_replace(true);
        c
    }

    #[tokio::test]
    async fn a_5xx_or_unreachable_replica_is_retried_once_on_the_next() {
        let (sealed, sealed_n) = counting_kms(error_response(503, "sealed")).await;
        let ok = String::from_utf8(json_response(&generated(40)))
            .unwrap()
            .replacen("\r\n", "\r\nconnection: close\r\n", 1)
            .into_bytes();
        let (good, good_n) = counting_kms(ok.clone()).await;
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        // 503 on the first replica: answered by the second, which is preferred from then on.
        let c = unchecked(format!("{sealed}, {good}"));
        assert!(c.generate("b", "r1").await.is_ok());
        assert!(c.generate("b", "r2").await.is_ok());
        assert_eq!(c.failovers(), 1);
        assert_eq!(good_n.load(Ordering::SeqCst), 2);
        assert_eq!(sealed_n.load(Ordering::SeqCst), 1);
        // Connection refused on the first: same.
        let c = unchecked(format!("{dead},{good}"));
        assert!(c.generate("b", "r3").await.is_ok());
        // A refusal (4xx) is the KMS's answer, not a replica failure: not retried.
        let (refusing, _) = counting_kms(error_response(403, "forbidden")).await;
        let (good2, good2_n) = counting_kms(ok).await;
        let c = unchecked(format!("{refusing},{good2}"));
        let e = c.generate("b", "r4").await.err();
        assert_eq!(
            e,
            Some(KmsError::Refused {
                status: 403,
                code: "forbidden".into()
            })
        );
        assert_eq!(good2_n.load(Ordering::SeqCst), 0);
        assert_eq!(c.failovers(), 0);
        // Only one retry: two failing replicas fail the call (503 to the S3 client).
        let (s2, _) = counting_kms(error_response(500, "internal")).await;
        let c = unchecked(format!("{sealed},{s2},{good}"));
        let before = good_n.load(Ordering::SeqCst);
        let e = c.generate("b", "r5").await.err();
        assert!(e.is_some_and(|e| e.is_unavailable()));
        assert_eq!(good_n.load(Ordering::SeqCst), before);
    }

    #[test]
    fn picking_prefers_the_last_good_healthy_replica() {
        let (checked, _) = tokio::sync::watch::channel(true);
        let r = Replicas {
            list: (0..3)
                .map(|i| Replica {
                    base: format!("http://r{i}"),
                    healthy: AtomicBool::new(true),
                })
                .collect(),
            preferred: AtomicUsize::new(1),
            failovers: AtomicU64::new(0),
            checked,
            probe_timeout: Duration::from_secs(1),
        };
        assert_eq!(r.pick(), (1, Some(2)));
        r.set_health(2, false, "down");
        assert_eq!(r.pick(), (1, Some(0)));
        r.set_health(1, false, "down");
        // The retry falls back to a replica marked down (its mark may be a second old).
        assert_eq!(r.pick(), (0, Some(1)));
        r.set_health(0, false, "down");
        // None healthy: the preferred one, then the next.
        assert_eq!(r.pick(), (1, Some(2)));
    }

    #[tokio::test]
    async fn wrapped_keys_of_unexpected_length_are_refused() {
        for (len, ok) in [
            (40, true),
            (41, false),
            (39, false),
            (0, false),
            (4096, false),
        ] {
            let body = json_response(&generated(len));
            let url = fake_kms(move |mut s| {
                let body = body.clone();
                async move {
                    let _ = s.write_all(&body).await;
                }
            })
            .await;
            let r = client(url).generate("b", "req").await;
            match (ok, r) {
                (true, Ok(g)) => assert_eq!(g.wrapped.len(), WRAPPED_KEY_LEN),
                (false, Err(KmsError::Malformed)) => {}
                (ok, r) => panic!(
                    "wrapped key of {len} bytes: expected ok={ok}, got {:?}",
                    r.err()
                ),
            }
        }
    }

    #[tokio::test]
    async fn oversized_and_endless_responses_are_refused_without_buffering_them() {
        // Declared too large.
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_RESPONSE_BYTES));
        let body = json_response(&big);
        let url = fake_kms(move |mut s| {
            let body = body.clone();
            async move {
                let _ = s.write_all(&body).await;
            }
        })
        .await;
        let e = client(url).generate("b", "req").await.err();
        assert_eq!(e, Some(KmsError::Malformed));

        // Endless chunked body: refused once the bound is passed, not read until the timeout.
        let url = fake_kms(|mut s| async move {
            let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if s.write_all(head).await.is_err() {
                return;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 8192, " ".repeat(8192));
            while s.write_all(chunk.as_bytes()).await.is_ok() {}
        })
        .await;
        let started = std::time::Instant::now();
        let e = client(url.clone()).generate("b", "req").await.err();
        assert_eq!(e, Some(KmsError::Malformed));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        // Error answers are bounded the same way.
        let e = client(url).unwrap("b", &[0u8; 40], 1, "req").await.err();
        assert_eq!(e, Some(KmsError::Malformed));
    }
}
