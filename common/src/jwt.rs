//! Compact EdDSA (Ed25519) JSON Web Tokens, as used on every KMS request.
//!
//! A token binds subject (identity name), audience, issue/expiry time (at most five minutes
//! apart), a unique id (`jti`, for replay refusal by the verifier's cache), and the HTTP method
//! (`htm`) and path (`htp`) of the one request it authorizes. Only `alg: EdDSA` is accepted, so
//! "none", HMAC or RSA headers (algorithm confusion) are refused before any key is used.
//! Secret here: the signing key passed to [`sign`]; tokens themselves are short-lived bearer
//! credentials and must not be logged.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Audience of service tokens (storage nodes calling the key API).
pub const AUD_SERVICE: &str = "coffer-kms-service";
/// Audience of admin tokens (operators). A service token never satisfies it, and vice versa.
pub const AUD_ADMIN: &str = "coffer-kms-admin";
/// Longest allowed token lifetime (`exp - iat`), in seconds.
pub const MAX_LIFETIME_SECS: i64 = 300;
/// Tolerated clock skew for `iat` in the future, in seconds.
pub const MAX_SKEW_SECS: i64 = 30;

/// The claims Coffer puts in a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Identity name.
    pub sub: String,
    /// [`AUD_SERVICE`] or [`AUD_ADMIN`].
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Unique token id (replays are refused).
    pub jti: String,
    /// HTTP method the token is bound to, upper case.
    pub htm: String,
    /// HTTP path (without query) the token is bound to.
    pub htp: String,
}

impl Claims {
    /// Fresh claims for one request, valid for `lifetime_secs` (clamped to the maximum).
    pub fn new(sub: &str, aud: &str, method: &str, path: &str, lifetime_secs: i64) -> Self {
        let now = now_unix();
        Self {
            sub: sub.to_string(),
            aud: aud.to_string(),
            iat: now,
            exp: now + lifetime_secs.clamp(1, MAX_LIFETIME_SECS),
            // A random (v4) UUID from the thread-local CSPRNG (seeded from the OS): one token
            // per request, so no system call per token.
            jti: uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string(),
            htm: method.to_ascii_uppercase(),
            htp: path.to_string(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

/// Why a token was refused. Every variant maps to 401 at the KMS boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is not a compact JWT")]
    Malformed,
    #[error("token algorithm is not EdDSA")]
    WrongAlgorithm,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token audience is wrong")]
    WrongAudience,
    #[error("token has expired")]
    Expired,
    #[error("token lifetime is longer than allowed or issued in the future")]
    BadLifetime,
    #[error("token is bound to another method or path")]
    WrongRequest,
}

/// Current Unix time in seconds.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Sign claims into a compact JWT.
pub fn sign(key: &SigningKey, claims: &Claims) -> String {
    let header = Header {
        alg: "EdDSA".into(),
        typ: Some("JWT".into()),
    };
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
    let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{h}.{c}");
    let sig = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

/// A compact token split into its three parts, with its claims decoded and nothing verified yet.
/// [`decode`] once, look up the key of `claims.sub`, then [`Unverified::verify`]: the claims are
/// parsed once per request.
pub struct Unverified<'a> {
    token: &'a str,
    header: &'a str,
    signature: &'a str,
    signing_input_len: usize,
    /// Unverified: only to find which identity's key to verify with.
    pub claims: Claims,
}

/// Split a compact token and decode its claims, verifying nothing.
pub fn decode(token: &str) -> Result<Unverified<'_>, JwtError> {
    let mut parts = token.split('.');
    let (h, c, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s), None) => (h, c, s),
        _ => return Err(JwtError::Malformed),
    };
    let claims = URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed)?;
    Ok(Unverified {
        token,
        header: h,
        signature: s,
        signing_input_len: h.len() + 1 + c.len(),
        claims,
    })
}

/// Read the claims without verifying anything: only to find which identity's key to verify with.
pub fn peek_claims(token: &str) -> Result<Claims, JwtError> {
    decode(token).map(|t| t.claims)
}

impl Unverified<'_> {
    /// Verify signature, algorithm, audience, lifetime and request binding; the claims on
    /// success. Replay (jti) is the caller's job, since it needs shared state.
    pub fn verify(
        self,
        key: &VerifyingKey,
        audience: &str,
        method: &str,
        path: &str,
        now: i64,
    ) -> Result<Claims, JwtError> {
        let header: Header = URL_SAFE_NO_PAD
            .decode(self.header)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        if header.alg != "EdDSA" {
            return Err(JwtError::WrongAlgorithm);
        }
        let sig_bytes = URL_SAFE_NO_PAD
            .decode(self.signature)
            .map_err(|_| JwtError::Malformed)?;
        let sig = Signature::from_slice(&sig_bytes).map_err(|_| JwtError::BadSignature)?;
        let signing_input = self
            .token
            .get(..self.signing_input_len)
            .ok_or(JwtError::Malformed)?;
        key.verify_strict(signing_input.as_bytes(), &sig)
            .map_err(|_| JwtError::BadSignature)?;
        let claims = self.claims;
        if claims.aud != audience {
            return Err(JwtError::WrongAudience);
        }
        if claims.exp <= now {
            return Err(JwtError::Expired);
        }
        if claims.exp - claims.iat > MAX_LIFETIME_SECS || claims.iat > now + MAX_SKEW_SECS {
            return Err(JwtError::BadLifetime);
        }
        if !claims.htm.eq_ignore_ascii_case(method) || claims.htp != path {
            return Err(JwtError::WrongRequest);
        }
        Ok(claims)
    }
}

/// [`decode`] then [`Unverified::verify`].
pub fn verify(
    token: &str,
    key: &VerifyingKey,
    audience: &str,
    method: &str,
    path: &str,
    now: i64,
) -> Result<Claims, JwtError> {
    decode(token)?.verify(key, audience, method, path, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn tok(claims: &Claims) -> String {
        sign(&key(), claims)
    }

    #[test]
    fn valid_token_verifies() {
        let c = Claims::new("node1", AUD_SERVICE, "post", "/v1/keys/generate", 60);
        let got = verify(
            &tok(&c),
            &key().verifying_key(),
            AUD_SERVICE,
            "POST",
            "/v1/keys/generate",
            now_unix(),
        );
        assert_eq!(got, Ok(c));
    }

    #[test]
    fn expired_wrong_audience_and_wrong_path_are_refused() {
        let vk = key().verifying_key();
        let mut c = Claims::new("n", AUD_SERVICE, "POST", "/p", 60);
        let now = now_unix();
        assert_eq!(
            verify(&tok(&c), &vk, AUD_SERVICE, "POST", "/p", now + 61),
            Err(JwtError::Expired)
        );
        assert_eq!(
            verify(&tok(&c), &vk, AUD_ADMIN, "POST", "/p", now),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            verify(&tok(&c), &vk, AUD_SERVICE, "POST", "/q", now),
            Err(JwtError::WrongRequest)
        );
        assert_eq!(
            verify(&tok(&c), &vk, AUD_SERVICE, "GET", "/p", now),
            Err(JwtError::WrongRequest)
        );
        c.exp = c.iat + 301;
        assert_eq!(
            verify(&tok(&c), &vk, AUD_SERVICE, "POST", "/p", now),
            Err(JwtError::BadLifetime)
        );
    }

    #[test]
    fn bad_signature_and_alg_confusion_are_refused() {
        let c = Claims::new("n", AUD_SERVICE, "POST", "/p", 60);
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        let now = now_unix();
        assert_eq!(
            verify(&tok(&c), &other, AUD_SERVICE, "POST", "/p", now),
            Err(JwtError::BadSignature)
        );
        // Same claims and signature, header rewritten to HS256 / none.
        let t = tok(&c);
        let rest = t
            .split_once('.')
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
        for alg in ["HS256", "none", "RS256"] {
            let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let forged = format!("{h}.{rest}");
            assert_eq!(
                verify(
                    &forged,
                    &key().verifying_key(),
                    AUD_SERVICE,
                    "POST",
                    "/p",
                    now
                ),
                Err(JwtError::WrongAlgorithm)
            );
        }
        // Edited claims under the original signature.
        let mut c2 = c.clone();
        c2.sub = "admin".into();
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c2).unwrap_or_default()),
            parts[2]
        );
        assert_eq!(
            verify(
                &forged,
                &key().verifying_key(),
                AUD_SERVICE,
                "POST",
                "/p",
                now
            ),
            Err(JwtError::BadSignature)
        );
        assert_eq!(
            verify(
                "a.b",
                &key().verifying_key(),
                AUD_SERVICE,
                "POST",
                "/p",
                now
            ),
            Err(JwtError::Malformed)
        );
    }
}
