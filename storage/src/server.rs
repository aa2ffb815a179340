//! Assembling and serving the node: open the store, sweep, build the s3s service (SigV4 with the
//! configured key pair) inside an axum router with health and metrics routes and tower-http
//! layers (request ids, tracing; body size cap; the body timeout is the listener's), and serve it on an
//! already-bound listener (plain or TLS).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use s3s::auth::{S3Auth, SecretKey};
use s3s::service::S3ServiceBuilder;
use tower::ServiceExt;

use coffer_common::data_dir_lock::DataDirLock;

use crate::crypto::key_cache::BucketKeys;
use crate::crypto::kms_client::KmsClient;
use crate::metrics::{OperationSlot, UNKNOWN_OPERATION};
use crate::s3::CofferS3;
use crate::s3::errors::ApiError;
use crate::state::{NodeConfig, NodeState};
use crate::store::blobs::BlobStore;
use crate::store::meta::Meta;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir: {0}")]
    DataDir(#[from] std::io::Error),
    #[error("metadata database: {0}")]
    Meta(#[from] sqlx::Error),
    #[error("virtual-host domains {0:?} are not valid, distinct domain names")]
    Domains(Vec<String>),
    /// Another process serves this data dir (one line naming its pid).
    #[error(transparent)]
    Locked(#[from] coffer_common::data_dir_lock::LockError),
    #[error(transparent)]
    BlobStore(#[from] crate::store::blobs_s3::S3ConfigError),
}

/// Virtual-hosted-style addressing for the configured domains only. Any other Host (an IP,
/// `localhost`, another name for the node) is path style, where s3s alone would read an unknown
/// host name as a bucket (CNAME style) and refuse path-style requests sent to it.
struct Domains(Vec<String>);

impl s3s::host::S3Host for Domains {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> s3s::S3Result<s3s::host::VirtualHost<'a>> {
        let name = crate::state::host_name(host);
        Ok(match crate::state::vhost_bucket(&self.0, host) {
            Some((domain, bucket)) => s3s::host::VirtualHost::new(domain).with_bucket(bucket),
            None => s3s::host::VirtualHost::new(name),
        })
    }
}

/// The host parser for virtual-hosted-style requests, when domains are configured (checked with
/// s3s's rules: valid names, none a suffix of another).
fn virtual_hosts(domains: &[String]) -> Option<Result<Domains, StartError>> {
    if domains.is_empty() {
        return None;
    }
    Some(
        s3s::host::MultiDomain::new(domains)
            .map(|_| Domains(domains.to_vec()))
            .map_err(|_| StartError::Domains(domains.to_vec())),
    )
}

/// The node's one access key pair; an unknown access key is 403 InvalidAccessKeyId (as AWS),
/// the key comparison is constant-time.
struct StaticAuth {
    access_key: String,
    secret_key: SecretKey,
}

#[async_trait::async_trait]
impl S3Auth for StaticAuth {
    async fn get_secret_key(&self, access_key: &str) -> s3s::S3Result<SecretKey> {
        use subtle::ConstantTimeEq;
        if bool::from(access_key.as_bytes().ct_eq(self.access_key.as_bytes())) {
            Ok(self.secret_key.clone())
        } else {
            Err(crate::s3::errors::ApiError::InvalidAccessKeyId.into())
        }
    }
}

/// Lock the data dir, open the store, run the start-up sweep and build the shared state.
pub async fn open_state(
    cfg: NodeConfig,
    kms: Option<KmsClient>,
) -> Result<Arc<NodeState>, StartError> {
    open_state_with(cfg, kms, None).await
}

/// [`open_state`] with blobs on an S3 backend when `blob_store` is given (else `blobs/`).
pub async fn open_state_with(
    cfg: NodeConfig,
    kms: Option<KmsClient>,
    blob_store: Option<&crate::store::blobs_s3::S3BlobConfig>,
) -> Result<Arc<NodeState>, StartError> {
    open_state_swept(cfg, kms, blob_store, SweepSettings::default()).await
}

/// How the node sweeps orphan blobs (see `store::recovery`).
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    /// Unreferenced blobs on a shared store younger than this are kept.
    pub orphan_grace: Duration,
    /// Period of the sweep while serving; `None`: only at start-up.
    pub orphan_sweep_every: Option<Duration>,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            orphan_grace: crate::store::recovery::DEFAULT_GRACE,
            orphan_sweep_every: None,
        }
    }
}

/// [`open_state_with`] with the orphan sweep's settings.
pub async fn open_state_swept(
    cfg: NodeConfig,
    kms: Option<KmsClient>,
    blob_store: Option<&crate::store::blobs_s3::S3BlobConfig>,
    sweep: SweepSettings,
) -> Result<Arc<NodeState>, StartError> {
    let db = crate::store::db::DbConfig::sqlite_in(&cfg.data_dir);
    open_state_on(cfg, kms, blob_store, sweep, &db).await
}

/// [`open_state_swept`] with the metadata in the database `db` names (SQLite or PostgreSQL).
pub async fn open_state_on(
    cfg: NodeConfig,
    kms: Option<KmsClient>,
    blob_store: Option<&crate::store::blobs_s3::S3BlobConfig>,
    sweep: SweepSettings,
    db: &crate::store::db::DbConfig,
) -> Result<Arc<NodeState>, StartError> {
    if let Some(Err(e)) = virtual_hosts(&cfg.virtual_host_domains) {
        return Err(e);
    }
    std::fs::create_dir_all(&cfg.data_dir)?;
    // Before anything reads or sweeps the data dir: a second node on it would delete the
    // first one's in-flight writes.
    let dir_lock = DataDirLock::acquire(&cfg.data_dir, "coffer-storage", "coffer-storage")?;
    let meta = Meta::connect(db).await?;
    let blobs = match blob_store {
        Some(s3) => BlobStore::open_s3(&cfg.data_dir, s3)?,
        None => BlobStore::open(&cfg.data_dir)?,
    };
    let report = crate::store::recovery::sweep_at_start(&meta, &blobs, sweep.orphan_grace).await?;
    if report.tmp_removed + report.orphans_removed > 0 || report.versions_forgotten > 0 {
        tracing::info!(
            interrupted_versions = report.versions_aborted,
            tmp = report.tmp_removed,
            orphans = report.orphans_removed,
            kept_young = report.orphans_kept_young,
            "start-up sweep removed unreferenced files"
        );
    }
    let keys = Arc::new(BucketKeys::new(
        kms,
        cfg.key_cache_ttl,
        cfg.key_cache_capacity,
    ));
    let sweeper = Arc::downgrade(&keys);
    let period = (cfg.key_cache_ttl / 2).max(Duration::from_millis(200));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            match sweeper.upgrade() {
                Some(k) => k.sweep().await,
                None => break,
            }
        }
    });
    let state = Arc::new(NodeState {
        dir_lock,
        meta,
        blobs,
        keys,
        cfg,
        metrics: crate::metrics::NodeMetrics::new(),
    });
    spawn_pruner(Arc::downgrade(&state));
    if let Some(every) = sweep.orphan_sweep_every {
        crate::store::recovery::periodic(Arc::downgrade(&state), every, sweep.orphan_grace);
    }
    Ok(state)
}

/// How often aborted versions and old completed uploads are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Prune the metadata periodically while the node runs (see `Meta::prune`).
fn spawn_pruner(state: std::sync::Weak<NodeState>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PRUNE_EVERY).await;
            let Some(state) = state.upgrade() else { break };
            match state.meta.prune(crate::store::meta::now_ms()).await {
                Ok(p) if p.aborted_versions + p.completed_uploads > 0 => tracing::debug!(
                    aborted_versions = p.aborted_versions,
                    completed_uploads = p.completed_uploads,
                    "pruned metadata"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning metadata failed"),
            }
        }
    });
}

async fn health() -> &'static str {
    "ok"
}

fn metrics(state: &NodeState, headers: &http::HeaderMap) -> axum::response::Response {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    (
        [(
            http::header::CONTENT_TYPE,
            coffer_common::metrics::content_type(accept),
        )],
        state.metrics.render(&state.keys),
    )
        .into_response()
}

/// Longest wait of `/ready` for the S3 blob backend.
const READY_BLOB_STORE_BOUND: Duration = Duration::from_secs(2);

/// Ready when the metadata database answers, the S3 blob backend (when configured) answers
/// within [`READY_BLOB_STORE_BOUND`], the data dir's disk is not full (see `store::disk`) and,
/// with a KMS configured, the KMS child has not been lost and a KMS replica is healthy.
async fn ready(state: &NodeState) -> axum::response::Response {
    let problem = if let Err(e) = state.meta.ping().await {
        tracing::warn!(error = %e, "readiness: metadata database");
        Some("metadata database unavailable")
    } else if let Err(e) = state.blobs.check(READY_BLOB_STORE_BOUND).await {
        tracing::warn!(error = %e, "readiness: blob store");
        Some("blob store unavailable")
    } else if state.blobs.disk().still_full().await {
        Some(
            "disk full: the data dir's file system has no room; writes answer 503 until space is freed",
        )
    } else if !state.keys.kms_usable().await {
        Some("KMS unavailable")
    } else {
        None
    };
    match problem {
        None => (http::StatusCode::OK, "ready").into_response(),
        Some(p) => (http::StatusCode::SERVICE_UNAVAILABLE, p).into_response(),
    }
}

/// A declared body size above the node's limit.
struct TooLarge;

/// True when the body is aws-chunked (SigV4 streaming): its wire length exceeds the object's by
/// the chunk framing, and `x-amz-decoded-content-length` declares the object's length.
fn is_aws_chunked(headers: &http::HeaderMap) -> bool {
    headers
        .get("x-amz-content-sha256")
        .is_some_and(|v| v.as_bytes().starts_with(b"STREAMING-"))
}

/// Most bytes a body may take on the wire when the object may take `max`: aws-chunked framing
/// adds well under 1/64 to the payload.
fn wire_max(headers: &http::HeaderMap, max: u64) -> u64 {
    if is_aws_chunked(headers) {
        max.saturating_add(max / 64).saturating_add(1 << 20)
    } else {
        max
    }
}

/// A declared body size above `max` (400 EntityTooLarge, as AWS does above 5 GiB). Both
/// declared sizes count: `x-amz-decoded-content-length` is only believed (and given the framing
/// allowance) for an aws-chunked body, whose decoder stops at the declared length.
fn declared_too_large(headers: &http::HeaderMap, max: u64) -> Result<(), TooLarge> {
    let declared = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let decoded = declared("x-amz-decoded-content-length");
    let wire = declared(http::header::CONTENT_LENGTH.as_str());
    if decoded.is_some_and(|n| n > max) || wire.is_some_and(|n| n > wire_max(headers, max)) {
        return Err(TooLarge);
    }
    Ok(())
}

/// Cap what is read of the body on the wire (see [`wire_max`]; a body that stalls fails after
/// the listener's body timeout, `coffer_common::server::Limits`). A declared size above the cap
/// is refused before the body is read, by [`declared_too_large`].
fn limit_body(req: axum::extract::Request, max: u64) -> axum::extract::Request {
    // An empty body stays as it is: s3s reads the length of a body without Content-Length
    // (GET, HEAD, DELETE) from its size hint, which the wrappers below do not carry.
    if http_body::Body::size_hint(req.body()).exact() == Some(0) {
        return req;
    }
    let cap = usize::try_from(wire_max(req.headers(), max)).unwrap_or(usize::MAX);
    req.map(|b| axum::body::Body::new(http_body_util::Limited::new(b, cap)))
}

/// The node's access hook, run by s3s once it has routed a request (after the signature check,
/// before the body is read): it names the operation for the metrics (the request's
/// [`OperationSlot`]), refuses a declared body above the node's limit (EntityTooLarge) and then,
/// as s3s's default hook does, refuses anonymous requests (AccessDenied).
struct Access {
    max_body_bytes: u64,
}

#[async_trait::async_trait]
impl s3s::access::S3Access for Access {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        if let Some(slot) = cx.extensions_mut().get::<OperationSlot>().cloned() {
            slot.set(cx.s3_op().name());
        }
        if declared_too_large(cx.headers(), self.max_body_bytes).is_err() {
            return Err(ApiError::EntityTooLarge.into());
        }
        match cx.credentials() {
            Some(_) => Ok(()),
            None => Err(s3s::s3_error!(AccessDenied, "Signature is required")),
        }
    }
}

/// A HEAD answer carries headers only. HTTP/1.1 drops a body by itself, but over HTTP/2 a
/// body becomes DATA frames, which clients (Go's, so rclone) reject as a protocol error; error
/// answers to HEAD (404, 403...) would otherwise carry their XML. Content-Length stays: for
/// HEAD it describes the object that a GET would return.
fn without_body(resp: axum::response::Response) -> axum::response::Response {
    let (parts, _) = resp.into_parts();
    axum::response::Response::from_parts(parts, axum::body::Body::empty())
}

/// The HTTP application: `/health`, `/metrics`, and S3 for everything else.
pub fn router(state: Arc<NodeState>) -> Router {
    let mut builder = S3ServiceBuilder::new(CofferS3::new(state.clone()));
    builder.set_auth(StaticAuth {
        access_key: state.cfg.access_key.clone(),
        secret_key: SecretKey::from(state.cfg.secret_key.as_str()),
    });
    builder.set_access(Access {
        max_body_bytes: state.cfg.max_body_bytes,
    });
    if let Some(Ok(hosts)) = virtual_hosts(&state.cfg.virtual_host_domains) {
        builder.set_host(hosts);
    }
    let s3 = builder.build();
    // `/health` and `/metrics` are answered here only for unauthenticated GETs, so that
    // path-style requests to buckets with those names still reach S3.
    let service = tower::service_fn(move |req: axum::extract::Request| {
        let s3 = s3.clone();
        let state = state.clone();
        async move {
            let signed = req.headers().contains_key(http::header::AUTHORIZATION)
                || req
                    .uri()
                    .query()
                    .is_some_and(|q| q.contains("X-Amz-Signature"));
            if req.method() == http::Method::GET && !signed {
                match req.uri().path() {
                    "/health" => return Ok(health().await.into_response()),
                    "/metrics" => return Ok(metrics(&state, req.headers())),
                    "/ready" => return Ok(ready(&state).await),
                    _ => {}
                }
            }
            let request_id = req
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let mut req = req;
            req.extensions_mut().insert(RequestId(request_id.clone()));
            let path = req.uri().path().to_string();
            let started = std::time::Instant::now();
            let head = req.method() == http::Method::HEAD;
            let refused = crate::auth_gate::check(
                req.headers(),
                req.uri().query(),
                &state.cfg.region,
                time::OffsetDateTime::now_utc(),
            );
            let early = match refused {
                Err(r) => Err(ApiError::Refused(r)),
                Ok(()) => match crate::key_headers::unreadable(req.headers()) {
                    Some(e) => Err(ApiError::Sse(e)),
                    None => Ok(limit_body(req, state.cfg.max_body_bytes)),
                },
            };
            let mut req = match early {
                Ok(req) => req,
                Err(e) => {
                    crate::s3::errors::note(&state, &e);
                    let resp = crate::s3::errors::http_response(&e);
                    let resp = crate::error_body::complete(resp, &path, &request_id).await;
                    state.metrics.observe(
                        UNKNOWN_OPERATION,
                        resp.status().as_u16(),
                        started.elapsed().as_secs_f64(),
                    );
                    return Ok(resp);
                }
            };
            if let Some(target) =
                crate::s3::post::form_post_target(&state, req.method(), req.headers(), &path)
            {
                let http1 = req.version() < http::Version::HTTP_2;
                let operation = if target.is_some() {
                    "PostObject"
                } else {
                    UNKNOWN_OPERATION
                };
                let refusal =
                    if declared_too_large(req.headers(), state.cfg.max_body_bytes).is_err() {
                        Some(ApiError::EntityTooLarge)
                    } else if target.is_none() {
                        Some(ApiError::MethodNotAllowed)
                    } else {
                        None
                    };
                let answer = match (refusal, target) {
                    (None, Some(bucket)) => crate::s3::post::post_object(&state, req, bucket).await,
                    (e, _) => crate::s3::post::Answer {
                        response: crate::s3::errors::http_response(
                            &e.unwrap_or(ApiError::MethodNotAllowed),
                        ),
                        body_consumed: false,
                    },
                };
                let mut resp = answer.response;
                // An unread rest of the form is never read: the connection closes after this answer.
                if !answer.body_consumed && http1 {
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                let resp = crate::error_body::complete(resp, &path, &request_id).await;
                state.metrics.observe(
                    operation,
                    resp.status().as_u16(),
                    started.elapsed().as_secs_f64(),
                );
                return Ok(resp);
            }
            let slot = OperationSlot::default();
            req.extensions_mut().insert(slot.clone());
            let resp = match s3.oneshot(req).await {
                Ok(resp) => {
                    crate::error_body::complete(resp.into_response(), &path, &request_id).await
                }
                Err(e) => {
                    let e = ApiError::Internal(format!("s3 service: {e:?}"));
                    crate::s3::errors::note(&state, &e);
                    let resp = crate::s3::errors::http_response(&e);
                    crate::error_body::complete(resp, &path, &request_id).await
                }
            };
            let resp = if slot.name() == "GetObjectAttributes" {
                crate::s3::unquote_attributes_etag(resp).await
            } else {
                resp
            };
            state.metrics.observe(
                slot.name(),
                resp.status().as_u16(),
                started.elapsed().as_secs_f64(),
            );
            Ok::<_, std::convert::Infallible>(if head { without_body(resp) } else { resp })
        }
    });
    Router::new()
        .fallback_service(service)
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(
                    tower_http::trace::DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Micros),
                ),
        )
        .layer(axum::middleware::map_request(mint_request_id))
}

/// Header that carries the request id between the layers of this node (and to the KMS).
const REQUEST_ID: &str = coffer_common::kms_api::REQUEST_ID_HEADER;

/// The id of one S3 request, minted here (a client cannot choose it), in the request's
/// extensions for the handlers: the same string is the response's `x-amz-request-id`, the
/// `request_id` of its log line and the id of every KMS call (and audit record) it causes.
#[derive(Clone)]
pub struct RequestId(pub String);

async fn mint_request_id(mut req: axum::extract::Request) -> axum::extract::Request {
    let id = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .to_ascii_uppercase();
    if let Ok(v) = http::HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    req
}

/// The span of one request, logged with its answer (status, latency): method, path (no query:
/// presigned URLs carry signatures there) and the request id clients see as `x-amz-request-id`.
fn request_span<B>(req: &http::Request<B>) -> tracing::Span {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "s3",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = id
    )
}

/// Serve until `shutdown` resolves, with the default connection limits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<NodeState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    coffer_common::server::serve(listener, tls, router(state), shutdown).await
}

/// Serve until `shutdown` resolves, with `limits` on the connections (cap, header, idle and
/// body timeouts: see `coffer_common::server`).
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    state: Arc<NodeState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: coffer_common::server::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    coffer_common::server::serve_with_limits(listener, tls, router(state), limits, shutdown).await
}
