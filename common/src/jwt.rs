//! EdDSA (Ed25519) JSON Web Tokens, as used on every KMS request, through `jsonwebtoken`.
//!
//! A token names its identity in the `kid` header: the verifier looks that identity's public key
//! up *before* verifying, and the verified `sub` claim must equal `kid`. It binds audience,
//! issue/expiry time (at most five minutes apart), a unique id (`jti`, for replay refusal by the
//! verifier's cache), and the HTTP method (`htm`) and path (`htp`) of the one request it
//! authorizes.
//!
//! `jsonwebtoken` parses the token, checks the algorithm against an EdDSA-only allow list, the
//! signature, `exp` (no leeway), `aud` and `sub`. Its crypto backend is the provider installed
//! here, which knows Ed25519 and nothing else (signing with ed25519-dalek, verifying with
//! `verify_strict`), so "none", HMAC or RSA headers (algorithm confusion) are refused before any
//! key is used. Coffer's own policy on top ([`Unverified::verify`]): lifetime at most
//! [`MAX_LIFETIME_SECS`] computed with checked arithmetic, `iat` at most [`MAX_SKEW_SECS`] in the
//! future, method and path binding. Replay and issued-before-start are the KMS's checks
//! (`kms/src/auth.rs`), since they need its state.
//!
//! Secret here: the signing key passed to [`sign`]; tokens themselves are short-lived bearer
//! credentials and must not be logged.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
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
    /// Identity name (equal to the header's `kid`).
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
            exp: now.saturating_add(lifetime_secs.clamp(1, MAX_LIFETIME_SECS)),
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

/// Why a token was refused. Every variant maps to 401 at the KMS boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is not a compact JWT")]
    Malformed,
    #[error("token algorithm is not EdDSA")]
    WrongAlgorithm,
    #[error("token header names no identity (kid)")]
    MissingKeyId,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token subject is not the identity its header names")]
    WrongSubject,
    #[error("token audience is wrong")]
    WrongAudience,
    #[error("token has expired")]
    Expired,
    #[error("token lifetime is longer than allowed or issued in the future")]
    BadLifetime,
    #[error("token is bound to another method or path")]
    WrongRequest,
    #[error("the JWT crypto provider could not be installed")]
    Provider,
}

/// Current Unix time in seconds.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The process-wide `jsonwebtoken` crypto backend: Ed25519 only.
static ED25519_ONLY: CryptoProvider = CryptoProvider {
    signer_factory: ed25519_signer,
    verifier_factory: ed25519_verifier,
    // JWK helpers are never used (keys come from credential files and the KMS database).
    key_utils: KeyUtils::new_unimplemented(),
};

/// Install [`ED25519_ONLY`] (idempotent); refuse if another provider got there first.
fn provider() -> Result<(), JwtError> {
    let _ = ED25519_ONLY.install_default();
    match CryptoProvider::try_get_default() {
        Some(p) if std::ptr::eq(p, &ED25519_ONLY) => Ok(()),
        _ => Err(JwtError::Provider),
    }
}

struct Ed25519Signer(SigningKey);

impl jsonwebtoken::signature::Signer<Vec<u8>> for Ed25519Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, jsonwebtoken::signature::Error> {
        Ok(self.0.sign(msg).to_bytes().to_vec())
    }
}

impl JwtSigner for Ed25519Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

fn ed25519_signer(
    alg: &Algorithm,
    key: &EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    if *alg != Algorithm::EdDSA {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let key = SigningKey::from_pkcs8_der(key.as_bytes()).map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(Ed25519Signer(key)))
}

struct Ed25519Verifier(VerifyingKey);

impl jsonwebtoken::signature::Verifier<Vec<u8>> for Ed25519Verifier {
    fn verify(
        &self,
        msg: &[u8],
        signature: &Vec<u8>,
    ) -> Result<(), jsonwebtoken::signature::Error> {
        let sig =
            Signature::from_slice(signature).map_err(|_| jsonwebtoken::signature::Error::new())?;
        self.0
            .verify_strict(msg, &sig)
            .map_err(|_| jsonwebtoken::signature::Error::new())
    }
}

impl JwtVerifier for Ed25519Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

fn ed25519_verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    if *alg != Algorithm::EdDSA {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let bytes: &[u8; 32] = key
        .try_get_as_bytes()?
        .try_into()
        .map_err(|_| ErrorKind::InvalidEddsaKey)?;
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(Ed25519Verifier(key)))
}

fn map_error(e: jsonwebtoken::errors::Error) -> JwtError {
    match e.kind() {
        ErrorKind::InvalidSignature | ErrorKind::InvalidEddsaKey => JwtError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => JwtError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::InvalidSubject => JwtError::WrongSubject,
        _ => JwtError::Malformed,
    }
}

/// Sign claims into a compact JWT whose `kid` header is `claims.sub`. The only failures (no
/// provider, a key that cannot be PKCS#8-encoded) cannot happen with a valid [`SigningKey`];
/// should one happen, the result is an empty string, which every verifier refuses.
pub fn sign(key: &SigningKey, claims: &Claims) -> String {
    try_sign(key, claims).unwrap_or_default()
}

fn try_sign(key: &SigningKey, claims: &Claims) -> Result<String, JwtError> {
    provider()?;
    let der = key.to_pkcs8_der().map_err(|_| JwtError::Malformed)?;
    let key = EncodingKey::from_ed_der(der.as_bytes());
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(claims.sub.clone());
    jsonwebtoken::encode(&header, claims, &key).map_err(map_error)
}

/// A compact token whose header says EdDSA and names an identity, nothing verified yet.
/// [`decode`], look up the key of [`Unverified::kid`], then [`Unverified::verify`].
pub struct Unverified<'a> {
    token: &'a str,
    /// Unverified: the identity whose key the token must verify under.
    pub kid: String,
}

/// Read the header (nothing verified): refuse any algorithm but EdDSA and a missing `kid`.
pub fn decode(token: &str) -> Result<Unverified<'_>, JwtError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| unparsable_header(token))?;
    if header.alg != Algorithm::EdDSA {
        return Err(JwtError::WrongAlgorithm);
    }
    let kid = header.kid.ok_or(JwtError::MissingKeyId)?;
    Ok(Unverified { token, kid })
}

/// A header `jsonwebtoken` cannot parse is still a wrong algorithm when it is JSON with an
/// `alg` it does not know (such as "none"); otherwise the token is malformed.
fn unparsable_header(token: &str) -> JwtError {
    #[derive(Deserialize)]
    struct AlgOnly {
        alg: String,
    }
    let alg = token
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|b| serde_json::from_slice::<AlgOnly>(&b).ok());
    match alg {
        Some(a) if a.alg != "EdDSA" => JwtError::WrongAlgorithm,
        _ => JwtError::Malformed,
    }
}

/// Read the claims without verifying anything (for audit records of refused requests).
pub fn peek_claims(token: &str) -> Result<Claims, JwtError> {
    jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| JwtError::Malformed)
}

impl Unverified<'_> {
    /// Verify (by `jsonwebtoken`) algorithm, signature under `key`, expiry, audience and
    /// `sub == kid`; then Coffer's lifetime and request binding. The claims on success. Replay
    /// (jti) and issued-before-start are the caller's job, since they need shared state.
    pub fn verify(
        self,
        key: &VerifyingKey,
        audience: &str,
        method: &str,
        path: &str,
        now: i64,
    ) -> Result<Claims, JwtError> {
        provider()?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.set_audience(&[audience]);
        validation.sub = Some(self.kid);
        let claims = jsonwebtoken::decode::<Claims>(
            self.token,
            &DecodingKey::from_ed_der(key.as_bytes()),
            &validation,
        )
        .map_err(map_error)?
        .claims;
        check_policy(&claims, method, path, now)?;
        Ok(claims)
    }
}

/// Coffer's policy on verified claims, against the caller's clock `now`.
fn check_policy(claims: &Claims, method: &str, path: &str, now: i64) -> Result<(), JwtError> {
    if claims.exp <= now {
        return Err(JwtError::Expired);
    }
    let lifetime = claims.exp.checked_sub(claims.iat);
    if !matches!(lifetime, Some(l) if l > 0 && l <= MAX_LIFETIME_SECS) {
        return Err(JwtError::BadLifetime);
    }
    if !matches!(now.checked_add(MAX_SKEW_SECS), Some(latest) if claims.iat <= latest) {
        return Err(JwtError::BadLifetime);
    }
    if !claims.htm.eq_ignore_ascii_case(method) || claims.htp != path {
        return Err(JwtError::WrongRequest);
    }
    Ok(())
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

    /// Sign `claims` under an arbitrary header (kid, alg), with `key`, bypassing [`sign`].
    fn sign_with_header(key: &SigningKey, header_json: &str, claims: &Claims) -> String {
        let h = URL_SAFE_NO_PAD.encode(header_json);
        let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let input = format!("{h}.{c}");
        let sig = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    #[test]
    fn kid_header_names_the_identity_and_must_match_sub() {
        let a = key();
        let b = SigningKey::from_bytes(&[9u8; 32]);
        let now = now_unix();
        let c = Claims::new("node-a", AUD_SERVICE, "POST", "/p", 60);
        let t = tok(&c);
        let u = decode(&t).unwrap();
        assert_eq!(u.kid, "node-a");
        assert_eq!(
            u.verify(&a.verifying_key(), AUD_SERVICE, "POST", "/p", now),
            Ok(c.clone())
        );
        // kid names A, signed by B: the verifier looks up A's key, so B's signature fails.
        let forged = sign(&b, &c);
        assert_eq!(decode(&forged).unwrap().kid, "node-a");
        assert_eq!(
            verify(&forged, &a.verifying_key(), AUD_SERVICE, "POST", "/p", now),
            Err(JwtError::BadSignature)
        );
        // Signed by B under B's own kid but claiming A as subject: sub != kid.
        let cross = sign_with_header(&b, r#"{"alg":"EdDSA","kid":"node-b"}"#, &c);
        assert_eq!(decode(&cross).unwrap().kid, "node-b");
        assert_eq!(
            verify(&cross, &b.verifying_key(), AUD_SERVICE, "POST", "/p", now),
            Err(JwtError::WrongSubject)
        );
        // No kid at all.
        let nokid = sign_with_header(&a, r#"{"alg":"EdDSA","typ":"JWT"}"#, &c);
        assert_eq!(decode(&nokid).err(), Some(JwtError::MissingKeyId));
    }

    #[test]
    fn alg_none_and_hs256_are_refused_even_when_validly_formed() {
        let c = Claims::new("n", AUD_SERVICE, "POST", "/p", 60);
        let now = now_unix();
        let vk = key().verifying_key();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap_or_default());
        // alg none with an empty signature.
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"n"}"#);
        let none = format!("{h}.{body}.");
        assert_eq!(
            verify(&none, &vk, AUD_SERVICE, "POST", "/p", now),
            Err(JwtError::WrongAlgorithm)
        );
        // HS256 keyed with the public key bytes (the classic confusion attack).
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"n"}"#);
        let input = format!("{h}.{body}");
        let mac = {
            use hmac::Mac;
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(vk.as_bytes()).unwrap();
            m.update(input.as_bytes());
            m.finalize().into_bytes()
        };
        let hs = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac));
        assert_eq!(
            verify(&hs, &vk, AUD_SERVICE, "POST", "/p", now),
            Err(JwtError::WrongAlgorithm)
        );
        // Even past `decode`, the library's allow list and the Ed25519-only provider refuse it.
        let u = Unverified {
            token: &hs,
            kid: "n".into(),
        };
        assert_eq!(
            u.verify(&vk, AUD_SERVICE, "POST", "/p", now),
            Err(JwtError::WrongAlgorithm)
        );
    }

    #[test]
    fn lifetime_is_checked_without_overflow() {
        let vk = key().verifying_key();
        let now = now_unix();
        let mut c = Claims::new("n", AUD_SERVICE, "POST", "/p", 60);
        c.iat = i64::MIN;
        assert_eq!(
            verify(&tok(&c), &vk, AUD_SERVICE, "POST", "/p", now),
            Err(JwtError::BadLifetime)
        );
        let mut c = Claims::new("n", AUD_SERVICE, "POST", "/p", 60);
        c.iat = c.exp;
        assert_eq!(
            verify(&tok(&c), &vk, AUD_SERVICE, "POST", "/p", now),
            Err(JwtError::BadLifetime)
        );
        let c = Claims::new("n", AUD_SERVICE, "POST", "/p", 60);
        assert_eq!(
            verify(&tok(&c), &vk, AUD_SERVICE, "POST", "/p", i64::MAX - 1),
            Err(JwtError::Expired)
        );
        let mut c = Claims::new("n", AUD_SERVICE, "POST", "/p", 60);
        c.iat = now + 31;
        c.exp = now + 60;
        assert_eq!(
            verify(&tok(&c), &vk, AUD_SERVICE, "POST", "/p", now),
            Err(JwtError::BadLifetime)
        );
        assert_eq!(peek_claims(&tok(&c)), Ok(c));
    }
}
