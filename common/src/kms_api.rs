//! Wire types of the KMS HTTP API, shared by the KMS server, the storage node's KMS client and
//! the admin CLI. Plaintext keys cross the wire only inside `plaintext_key` fields, base64, and
//! only over the authenticated (and, in production, TLS) channel. The `Debug` impls of types that
//! carry key material print `****` for it.

use serde::{Deserialize, Serialize};

/// Service route: generate a data key for a bucket.
pub const PATH_GENERATE: &str = "/v1/keys/generate";
/// Service route: unwrap a wrapped data key for a bucket.
pub const PATH_UNWRAP: &str = "/v1/keys/unwrap";
/// Health route (no authentication).
pub const PATH_HEALTH: &str = "/health";

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
