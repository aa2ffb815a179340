//! Wire types of the KMS HTTP API, shared by the KMS server, the storage node's KMS client and
//! the admin CLI. Plaintext keys cross the wire only inside `plaintext_key` fields, base64, and
//! only over the authenticated (and, in production, TLS) channel. The `Debug` impls of types that
//! carry key material print `****` for it.

use serde::{Deserialize, Serialize};

/// Service route: generate a data key for a bucket.
pub const PATH_GENERATE: &str = "/v1/keys/generate";
/// Service route: unwrap a wrapped data key for a bucket.
pub const PATH_UNWRAP: &str = "/v1/keys/unwrap";
/// Liveness (no authentication): 200 `{"status":"ok"}` while the process serves.
pub const PATH_HEALTH: &str = "/health";
/// Readiness: 200 when unsealed and the audit log is writable, else 503 with the error code
/// (`sealed`, `audit_unavailable`). Load balancers and storage nodes use this one.
pub const PATH_READY: &str = "/ready";
/// Prometheus metrics (text format, no authentication, no secrets).
pub const PATH_METRICS: &str = "/metrics";

/// HTTP header carrying the request id, echoed in responses and audit records.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// `POST /v1/keys/generate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateDataKeyRequest {
    /// Opaque bucket id chosen by the storage node (stable for the bucket's life).
    pub bucket_id: String,
}

/// Response of generate. `plaintext_key` is secret.
#[derive(Serialize, Deserialize)]
pub struct GenerateDataKeyResponse {
    /// Base64 of the 32-byte plaintext data key.
    pub plaintext_key: String,
    /// Base64 of the AES-KW wrapped data key (40 bytes).
    pub wrapped_key: String,
    /// Root key version that wrapped it.
    pub key_version: u32,
}

impl std::fmt::Debug for GenerateDataKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateDataKeyResponse")
            .field("plaintext_key", &"****")
            .field("wrapped_key", &self.wrapped_key)
            .field("key_version", &self.key_version)
            .finish()
    }
}

/// `POST /v1/keys/unwrap`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnwrapDataKeyRequest {
    pub bucket_id: String,
    /// Base64 of the wrapped key as returned by generate.
    pub wrapped_key: String,
    /// Root key version that wrapped it.
    pub key_version: u32,
}

/// Response of unwrap. `plaintext_key` is secret.
#[derive(Serialize, Deserialize)]
pub struct UnwrapDataKeyResponse {
    /// Base64 of the 32-byte plaintext data key.
    pub plaintext_key: String,
    /// When the KMS has re-wrapped this key under a newer root version, the current wrapping,
    /// so the caller may store it (optional; old wrappings keep working until re-wrapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_wrapped_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_key_version: Option<u32>,
    /// The KMS's active root key version (a storage node's re-wrap sweep reports its coverage
    /// against it). Absent from older KMSs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key_version: Option<u32>,
}

impl std::fmt::Debug for UnwrapDataKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnwrapDataKeyResponse")
            .field("plaintext_key", &"****")
            .finish()
    }
}

/// Every KMS error body: a stable machine code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

// ---- Admin API (audience `AUD_ADMIN`; a service token never satisfies it) ----

/// Admin route: create (POST) and list (GET) service identities.
pub const PATH_ADMIN_CLIENTS: &str = "/v1/admin/clients";
/// Admin route prefix of one identity: `POST {prefix}/{name}/revoke`.
pub const PATH_ADMIN_CLIENT_PREFIX: &str = "/v1/admin/clients/";
/// Admin route: list root key versions (GET).
pub const PATH_ADMIN_KEYS: &str = "/v1/admin/keys";
/// Admin route: rotate the root key (POST).
pub const PATH_ADMIN_ROTATE: &str = "/v1/admin/keys/rotate";
/// Admin route: rotation progress / re-wrap coverage (GET).
pub const PATH_ADMIN_ROTATION: &str = "/v1/admin/keys/rotation";
/// Admin route: retire a root key version (POST [`RetireRequest`]); 409 `root_version_in_use`
/// while data keys depend on it, 409 `root_version_active` for the active version.
pub const PATH_ADMIN_RETIRE: &str = "/v1/admin/keys/retire";
/// Admin route: status (GET).
pub const PATH_ADMIN_STATUS: &str = "/v1/admin/status";
/// Admin route: seal the KMS (POST); key operations answer 503 `sealed` until restart.
pub const PATH_ADMIN_SEAL: &str = "/v1/admin/seal";
/// Admin route: query the audit log (GET, filters in the query string).
pub const PATH_ADMIN_AUDIT: &str = "/v1/admin/audit";
/// Admin route: export the whole audit log as JSON lines, closed by a signed checkpoint (GET).
pub const PATH_ADMIN_AUDIT_EXPORT: &str = "/v1/admin/audit/export";
/// Admin route: the audit public key (GET).
pub const PATH_ADMIN_AUDIT_KEY: &str = "/v1/admin/audit/public-key";

/// Admin route: issue a TLS client certificate for a service identity (POST), as
/// `/v1/admin/clients/{name}/certificate`.
pub const PATH_ADMIN_CLIENT_CERT_SUFFIX: &str = "/certificate";

/// `POST /v1/admin/clients/{name}/certificate`: the caller generates a P-256 key pair and sends
/// only the public key; the KMS signs a client certificate (common name = the identity name)
/// with its local CA. The private key never leaves the caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueClientCertRequest {
    /// Base64 of the uncompressed P-256 public key point (65 bytes).
    pub public_key: String,
}

/// The issued client certificate and the CA that signed it (both PEM).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueClientCertResponse {
    pub certificate_pem: String,
    pub ca_pem: String,
}

/// `POST /v1/admin/clients`. The caller generates the key pair; only the public key is sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateClientRequest {
    /// Identity name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Bucket id glob (`*`, `tenant-a-*`, ...).
    pub buckets: String,
    /// Allowed operations: `generate`, `unwrap`.
    pub ops: Vec<String>,
    /// Base64 of the Ed25519 public key.
    pub public_key: String,
    /// Named KMS key glob, matched against key ids and aliases (`*`, `alias/tenant-a-*`);
    /// absent = no named key (issue 13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<String>,
}

/// One identity as listed by the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientInfo {
    pub name: String,
    /// `admin` or `service`.
    pub kind: String,
    pub buckets: String,
    pub ops: Vec<String>,
    /// Named KMS key glob (`""`: no named key).
    #[serde(default)]
    pub keys: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339, when revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

/// One root key version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyVersionInfo {
    pub version: u32,
    pub created: String,
    pub active: bool,
    /// Data keys whose current wrapping uses this version.
    pub data_keys: i64,
    /// Data keys whose wrapping a storage node last presented (unwrapped) under this version:
    /// `keys retire` waits for 0 here and in `data_keys`.
    #[serde(default)]
    pub presented_data_keys: i64,
}

/// Rotation progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotationStatus {
    pub active_version: u32,
    pub total_data_keys: i64,
    /// Data keys wrapped under the active version.
    pub rewrapped: i64,
    /// `rewrapped / total_data_keys` in percent (100 when there are none).
    pub coverage_percent: f64,
}

/// `POST /v1/admin/keys/rotate` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateResponse {
    pub new_version: u32,
}

/// `POST /v1/admin/keys/retire`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetireRequest {
    pub version: u32,
    /// Ignore data keys last presented under this version (their buckets were deleted, so no
    /// storage node will present them again). Keys still wrapped under it are never ignored.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/admin/keys/retire` response: the version whose sealed root key was deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetireResponse {
    pub retired: u32,
}

/// `GET /v1/admin/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    pub sealed: bool,
    pub active_version: Option<u32>,
    pub key_versions: Vec<u32>,
    pub audit_healthy: bool,
    pub audit_head_seq: u64,
    pub audit_last_checkpoint_seq: u64,
    /// True when the KMS holds a local CA key and can issue client certificates.
    #[serde(default)]
    pub issues_client_certificates: bool,
    /// Replicas on PostgreSQL: whether this replica holds the lease of background work (it
    /// signs checkpoints and runs re-wrap and the named-key lifecycle); absent on SQLite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_holder: Option<bool>,
    /// Replicas on PostgreSQL: the lease epoch (fencing token) this replica last held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_epoch: Option<u64>,
}

/// `GET /v1/admin/audit/public-key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPublicKey {
    /// Base64 of the Ed25519 audit public key (the content of `audit.pub`).
    pub public_key: String,
}

// ---- Named KMS keys (SSE-KMS; issue 13) ----
//
// Contract shared by the KMS (server side), the storage node (service client) and the admin CLI.
// A key is named in requests by its key id (UUID), its ARN `arn:aws:kms:REGION:ACCOUNT:key/ID`,
// an alias `alias/NAME` or an alias ARN `arn:aws:kms:REGION:ACCOUNT:alias/NAME`. Responses always
// carry the canonical key ARN.
//
// Data keys under a named key are bound to an encryption context (string → string map, compared
// as a map: order does not matter). The ciphertext blob is self-describing (key id, key version,
// wrapped key) and opaque to callers; they store it and hand it back to decrypt with the same
// context.
//
// Stable error codes (status): `kms_key_not_found` (404), `kms_key_disabled` (409),
// `kms_key_invalid_state` (409: pending deletion, or an operation the state does not allow),
// `context_mismatch` (400: the blob does not open under this key with this context),
// `invalid_ciphertext` (400: not a blob this KMS issued), `forbidden_scope` (403: the key is
// outside the identity's key scope), `invalid_request` (400).

/// Service route: generate a data key under a named key.
pub const PATH_KMS_GENERATE: &str = "/v1/kms/generate-data-key";
/// Service route: decrypt a ciphertext blob returned by generate.
pub const PATH_KMS_DECRYPT: &str = "/v1/kms/decrypt";
/// Service route: describe a named key (canonical ARN and state).
pub const PATH_KMS_DESCRIBE: &str = "/v1/kms/describe-key";

/// Encryption context: string → string, canonical order (sorted by key).
pub type EncryptionContext = std::collections::BTreeMap<String, String>;

/// `POST /v1/kms/generate-data-key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KmsGenerateRequest {
    /// Key id, key ARN, alias or alias ARN.
    pub key_id: String,
    #[serde(default)]
    pub encryption_context: EncryptionContext,
}

/// Response of generate-data-key. `plaintext_key` is secret.
#[derive(Serialize, Deserialize)]
pub struct KmsGenerateResponse {
    /// Base64 of the 32-byte plaintext data key.
    pub plaintext_key: String,
    /// Base64 of the self-describing ciphertext blob.
    pub ciphertext_blob: String,
    /// Canonical key ARN.
    pub key_arn: String,
    /// Key version (material generation) that wrapped the data key.
    pub key_version: u32,
}

impl std::fmt::Debug for KmsGenerateResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsGenerateResponse")
            .field("plaintext_key", &"****")
            .field("key_arn", &self.key_arn)
            .field("key_version", &self.key_version)
            .finish()
    }
}

/// `POST /v1/kms/decrypt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KmsDecryptRequest {
    /// Base64 of the ciphertext blob.
    pub ciphertext_blob: String,
    #[serde(default)]
    pub encryption_context: EncryptionContext,
}

/// Response of decrypt. `plaintext_key` is secret.
#[derive(Serialize, Deserialize)]
pub struct KmsDecryptResponse {
    /// Base64 of the 32-byte plaintext data key.
    pub plaintext_key: String,
    /// Canonical key ARN of the key that opened it.
    pub key_arn: String,
    pub key_version: u32,
}

impl std::fmt::Debug for KmsDecryptResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsDecryptResponse")
            .field("plaintext_key", &"****")
            .field("key_arn", &self.key_arn)
            .finish()
    }
}

/// `POST /v1/kms/describe-key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KmsDescribeRequest {
    pub key_id: String,
}

/// Key states, as AWS KMS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KmsKeyState {
    Enabled,
    Disabled,
    PendingDeletion,
    Destroyed,
}

/// One named key, as described to services and listed to admins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KmsKeyMetadata {
    /// UUID.
    pub key_id: String,
    /// `arn:aws:kms:REGION:ACCOUNT:key/ID`.
    pub arn: String,
    pub state: KmsKeyState,
    #[serde(default)]
    pub description: String,
    /// Aliases currently pointing at this key (`alias/NAME`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// RFC 3339.
    pub created: String,
    /// Newest key version (new data keys use it).
    pub current_version: u32,
    /// Automatic rotation period in days (90–2560), when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_days: Option<u32>,
    /// RFC 3339: when a key pending deletion is destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<String>,
}

/// Admin routes for named keys:
/// - `POST {PATH_ADMIN_KMS_KEYS}` create ([`KmsCreateKeyRequest`] → [`KmsKeyMetadata`]),
///   `GET` list (→ `Vec<KmsKeyMetadata>`);
/// - `GET {PATH_ADMIN_KMS_KEYS}/{id}` describe;
/// - `POST {PATH_ADMIN_KMS_KEYS}/{id}/{enable|disable|rotate|cancel-deletion}` (→ metadata);
/// - `POST {PATH_ADMIN_KMS_KEYS}/{id}/schedule-deletion` ([`KmsScheduleDeletionRequest`] →
///   [`KmsDeletionReport`]; with `dry_run` nothing changes);
/// - `POST {PATH_ADMIN_KMS_KEYS}/{id}/rotation-period` ([`KmsRotationPeriodRequest`] → metadata).
///
/// `{id}` may be a key id, ARN, alias or alias ARN.
pub const PATH_ADMIN_KMS_KEYS: &str = "/v1/admin/kms-keys";
/// Admin routes for aliases: `GET` list (→ `Vec<KmsAliasInfo>`), `POST` create
/// ([`KmsAliasRequest`]), `PUT {PATH_ADMIN_ALIASES}/{alias/NAME}` update target
/// ([`KmsAliasRequest`]), `DELETE {PATH_ADMIN_ALIASES}/{alias/NAME}`.
pub const PATH_ADMIN_ALIASES: &str = "/v1/admin/aliases";

/// `POST /v1/admin/kms-keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KmsCreateKeyRequest {
    #[serde(default)]
    pub description: String,
    /// Optional alias (`alias/NAME`) created with the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Automatic rotation period in days (90–2560); absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_days: Option<u32>,
}

/// `POST .../schedule-deletion`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KmsScheduleDeletionRequest {
    /// 7–30 days; default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_window_days: Option<u32>,
    /// Report dependents only; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Data keys issued under one key, per bucket (when the context names one) and key version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KmsDependents {
    /// The context's `aws:s3:arn` bucket, or `""` when the context names none.
    pub bucket: String,
    pub key_version: u32,
    pub data_keys: i64,
}

/// What a (dry-run) deletion reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KmsDeletionReport {
    pub key: KmsKeyMetadata,
    pub dry_run: bool,
    pub dependents: Vec<KmsDependents>,
}

/// `POST .../rotation-period`: `None` turns automatic rotation off.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KmsRotationPeriodRequest {
    #[serde(default)]
    pub days: Option<u32>,
}

/// Alias create / update.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KmsAliasRequest {
    /// `alias/NAME` (NAME: 1–250 of `A-Z a-z 0-9 / _ -`; `alias/aws/` is reserved for the
    /// deployment default key).
    pub alias: String,
    /// Key id, ARN or alias of the target key.
    pub target_key_id: String,
}

/// One alias.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KmsAliasInfo {
    pub alias: String,
    pub alias_arn: String,
    pub target_key_id: String,
}
