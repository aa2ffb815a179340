//! POST Object (browser form upload) authentication and policy, on the form fields that precede
//! the file: the SigV4 POST signature (HMAC of the base64 policy under the derived signing key),
//! the policy document (expiration and conditions: exact match, `eq`, `starts-with`,
//! `content-length-range`) and the rule that every submitted field is covered by a condition.
//! AWS S3 semantics (docs/s3-compat.md lists where Coffer differs). Plain data: no s3s types,
//! no I/O. Secret: the S3 secret key is only used to derive the signing key here; signatures
//! and the secret never appear in errors.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Form fields (names lower-cased) in the order they came, the file excluded.
#[derive(Debug, Default, Clone)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// The first value of a field (names are case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Replace the value of a field (all occurrences).
    pub fn set(&mut self, name: &str, value: String) {
        for (k, v) in &mut self.0 {
            if k.eq_ignore_ascii_case(name) {
                *v = value.clone();
            }
        }
    }
}

/// Why a form is refused (one enum for this boundary; the S3 edge maps it to status and code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// SigV2 form fields (`AWSAccessKeyId`, `signature`): 400 InvalidRequest.
    #[error("SigV2 POST")]
    SigV2,
    /// No policy and no signature: an anonymous upload, which Coffer never allows. 403.
    #[error("anonymous POST")]
    Anonymous,
    /// A required field is missing: 400 InvalidArgument.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// `x-amz-algorithm` other than AWS4-HMAC-SHA256: 400 InvalidArgument.
    #[error("unsupported algorithm")]
    Algorithm,
    /// `x-amz-credential` or `x-amz-date` malformed: 400 InvalidArgument.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The credential names another region: 400 AuthorizationQueryParametersError.
    #[error("credential region {got}, expected {expected}")]
    Region { got: String, expected: String },
    /// Unknown access key: 403 InvalidAccessKeyId.
    #[error("unknown access key")]
    AccessKey,
    /// Wrong signature: 403 SignatureDoesNotMatch.
    #[error("signature mismatch")]
    Signature,
    /// The policy is not base64 JSON of the expected shape: 400 InvalidPolicyDocument.
    #[error("invalid policy document: {0}")]
    PolicyDocument(&'static str),
    /// Past the policy's expiration: 403 AccessDenied.
    #[error("policy expired")]
    Expired,
    /// A condition does not hold: 403 AccessDenied (the message names the condition).
    #[error("policy condition failed: {0}")]
    Condition(String),
    /// A submitted field no condition covers: 403 AccessDenied.
    #[error("extra input field {0}")]
    ExtraField(String),
}

/// One policy condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `{"field": "value"}` or `["eq", "$field", "value"]`.
    Eq(String, String),
    /// `["starts-with", "$field", "prefix"]`.
    StartsWith(String, String),
    /// `["content-length-range", min, max]`.
    LengthRange(u64, u64),
}

impl Condition {
    /// The condition as AWS names it in an error message.
    fn show(&self) -> String {
        match self {
            Condition::Eq(f, v) => format!("[\"eq\", \"${f}\", {}]", json_str(v)),
            Condition::StartsWith(f, v) => {
                format!("[\"starts-with\", \"${f}\", {}]", json_str(v))
            }
            Condition::LengthRange(a, b) => format!("[\"content-length-range\", {a}, {b}]"),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Condition::Eq(f, _) | Condition::StartsWith(f, _) => Some(f),
            Condition::LengthRange(..) => None,
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A decoded POST policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub expiration: time::OffsetDateTime,
    pub conditions: Vec<Condition>,
}

fn field_name(v: &serde_json::Value) -> Result<String, PostError> {
    let s = v
        .as_str()
        .ok_or(PostError::PolicyDocument("condition field is not a string"))?;
    let name = s.strip_prefix('$').ok_or(PostError::PolicyDocument(
        "condition field does not start with $",
    ))?;
    Ok(name.to_ascii_lowercase())
}

fn number(v: &serde_json::Value) -> Result<u64, PostError> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or(PostError::PolicyDocument(
            "content-length-range bounds are not non-negative integers",
        ))
}

/// Largest decoded policy accepted.
const MAX_POLICY_BYTES: usize = 64 * 1024;

impl Policy {
    /// Decode a base64 policy document.
    pub fn parse(b64: &str) -> Result<Policy, PostError> {
        let raw = STANDARD
            .decode(b64.trim())
            .map_err(|_| PostError::PolicyDocument("not base64"))?;
        if raw.len() > MAX_POLICY_BYTES {
            return Err(PostError::PolicyDocument("too large"));
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|_| PostError::PolicyDocument("not JSON"))?;
        let exp = doc
            .get("expiration")
            .and_then(|v| v.as_str())
            .ok_or(PostError::PolicyDocument("missing expiration"))?;
        let expiration =
            time::OffsetDateTime::parse(exp, &time::format_description::well_known::Rfc3339)
                .map_err(|_| PostError::PolicyDocument("expiration is not ISO 8601"))?;
        let list = doc
            .get("conditions")
            .and_then(|v| v.as_array())
            .ok_or(PostError::PolicyDocument("missing conditions"))?;
        let mut conditions = Vec::with_capacity(list.len());
        for c in list {
            match c {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        let v = v
                            .as_str()
                            .ok_or(PostError::PolicyDocument("condition value is not a string"))?;
                        conditions.push(Condition::Eq(k.to_ascii_lowercase(), v.to_string()));
                    }
                }
                serde_json::Value::Array(a) if a.len() == 3 => {
                    let op = a[0]
                        .as_str()
                        .ok_or(PostError::PolicyDocument("condition operator"))?;
                    match op.to_ascii_lowercase().as_str() {
                        "eq" | "starts-with" => {
                            let f = field_name(&a[1])?;
                            let v = a[2].as_str().ok_or(PostError::PolicyDocument(
                                "condition value is not a string",
                            ))?;
                            conditions.push(if op.eq_ignore_ascii_case("eq") {
                                Condition::Eq(f, v.to_string())
                            } else {
                                Condition::StartsWith(f, v.to_string())
                            });
                        }
                        "content-length-range" => {
                            let (lo, hi) = (number(&a[1])?, number(&a[2])?);
                            if lo > hi {
                                return Err(PostError::PolicyDocument(
                                    "content-length-range minimum above maximum",
                                ));
                            }
                            conditions.push(Condition::LengthRange(lo, hi));
                        }
                        _ => return Err(PostError::PolicyDocument("unknown condition operator")),
                    }
                }
                _ => return Err(PostError::PolicyDocument("malformed condition")),
            }
        }
        Ok(Policy {
            expiration,
            conditions,
        })
    }

    /// Check expiration and every condition against the submitted fields (the key after
    /// `${filename}` substitution) and the bucket of the URL, and that every submitted field
    /// is named by a condition. Returns the allowed file size range (`content-length-range`,
    /// the intersection if several), checked by the caller while the file streams.
    pub fn check(
        &self,
        fields: &Fields,
        bucket: &str,
        now: time::OffsetDateTime,
    ) -> Result<(u64, u64), PostError> {
        if now >= self.expiration {
            return Err(PostError::Expired);
        }
        let value = |name: &str| -> String {
            if name == "bucket" {
                bucket.to_string()
            } else {
                fields.get(name).unwrap_or_default().to_string()
            }
        };
        let mut range = (0u64, u64::MAX);
        for c in &self.conditions {
            let ok = match c {
                Condition::Eq(f, v) => value(f) == *v,
                Condition::StartsWith(f, p) if f == "content-type" => value(f)
                    .split(',')
                    .all(|part| part.trim_start().starts_with(p.as_str())),
                Condition::StartsWith(f, p) => value(f).starts_with(p.as_str()),
                Condition::LengthRange(lo, hi) => {
                    range = (range.0.max(*lo), range.1.min(*hi));
                    true
                }
            };
            if !ok {
                return Err(PostError::Condition(c.show()));
            }
        }
        for (name, _) in &fields.0 {
            if is_exempt(name) {
                continue;
            }
            if !self.conditions.iter().any(|c| c.field() == Some(name)) {
                return Err(PostError::ExtraField(name.clone()));
            }
        }
        Ok(range)
    }
}

/// Fields that need no condition (AWS: the signature, the file, the policy, `x-ignore-*`).
fn is_exempt(name: &str) -> bool {
    matches!(name, "x-amz-signature" | "file" | "policy") || name.starts_with("x-ignore-")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The SigV4 signature of a string to sign under `secret` for date/region/service.
pub fn sigv4_signature(
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
    to_sign: &str,
) -> String {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    hex::encode(hmac(&k_signing, to_sign.as_bytes()))
}

/// The node's credentials as the POST check needs them.
pub struct Credentials<'a> {
    pub access_key: &'a str,
    pub secret_key: &'a str,
    pub region: &'a str,
}

/// Authenticate a form (fields before the file): SigV2 and anonymous forms are refused, then
/// the SigV4 fields are checked and the signature verified over the base64 policy.
pub fn authenticate(fields: &Fields, creds: &Credentials<'_>) -> Result<Policy, PostError> {
    if fields.has("awsaccesskeyid") || fields.has("signature") {
        return Err(PostError::SigV2);
    }
    const SIGV4: [&str; 5] = [
        "policy",
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-signature",
    ];
    if SIGV4.iter().all(|f| !fields.has(f)) {
        return Err(PostError::Anonymous);
    }
    if let Some(missing) = SIGV4.iter().find(|f| !fields.has(f)) {
        return Err(PostError::MissingField(missing));
    }
    let get = |f: &str| fields.get(f).unwrap_or_default();
    if get("x-amz-algorithm") != "AWS4-HMAC-SHA256" {
        return Err(PostError::Algorithm);
    }
    let credential = get("x-amz-credential");
    let parts: Vec<&str> = credential.rsplitn(5, '/').collect();
    // rsplitn yields from the end: terminator, service, region, date, access key.
    if parts.len() != 5 || parts[0] != "aws4_request" || parts[1] != "s3" {
        return Err(PostError::Malformed("x-amz-credential"));
    }
    let (region, date, access_key) = (parts[2], parts[3], parts[4]);
    let amz_date = get("x-amz-date");
    if crate::auth_gate::parse_amz_date(amz_date).is_none() {
        return Err(PostError::Malformed("x-amz-date"));
    }
    if region != creds.region {
        return Err(PostError::Region {
            got: region.to_string(),
            expected: creds.region.to_string(),
        });
    }
    if !bool::from(access_key.as_bytes().ct_eq(creds.access_key.as_bytes())) {
        return Err(PostError::AccessKey);
    }
    if !amz_date.starts_with(date) || date.len() != 8 {
        return Err(PostError::Signature);
    }
    let policy_b64 = get("policy");
    let want = sigv4_signature(creds.secret_key, date, region, "s3", policy_b64);
    let got = get("x-amz-signature").to_ascii_lowercase();
    if !bool::from(want.as_bytes().ct_eq(got.as_bytes())) {
        return Err(PostError::Signature);
    }
    Policy::parse(policy_b64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn creds() -> Credentials<'static> {
        Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE",
            secret_key: SECRET,
            region: "us-east-1",
        }
    }

    fn fields(list: &[(&str, &str)]) -> Fields {
        Fields(
            list.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
        )
    }

    /// The AWS documentation's POST example (sigv4-post-example): policy and signature.
    #[test]
    fn aws_documented_post_signature() {
        let policy = "eyAiZXhwaXJhdGlvbiI6ICIyMDE1LTEyLTMwVDEyOjAwOjAwLjAwMFoiLA0KICAiY29uZGl0aW9ucyI6IFsNCiAgICB7ImJ1Y2tldCI6ICJzaWd2NGV4YW1wbGVidWNrZXQifSwNCiAgICBbInN0YXJ0cy13aXRoIiwgIiRrZXkiLCAidXNlci91c2VyMS8iXSwNCiAgICB7ImFjbCI6ICJwdWJsaWMtcmVhZCJ9LA0KICAgIHsic3VjY2Vzc19hY3Rpb25fcmVkaXJlY3QiOiAiaHR0cDovL3NpZ3Y0ZXhhbXBsZWJ1Y2tldC5zMy5hbWF6b25hd3MuY29tL3N1Y2Nlc3NmdWxfdXBsb2FkLmh0bWwifSwNCiAgICBbInN0YXJ0cy13aXRoIiwgIiRDb250ZW50LVR5cGUiLCAiaW1hZ2UvIl0sDQogICAgeyJ4LWFtei1tZXRhLXV1aWQiOiAiMTQzNjUxMjM2NTEyNzQifSwNCiAgICB7IngtYW16LXNlcnZlci1zaWRlLWVuY3J5cHRpb24iOiAiQUVTMjU2In0sDQogICAgWyJzdGFydHMtd2l0aCIsICIkeC1hbXotbWV0YS10YWciLCAiIl0sDQoNCiAgICB7IngtYW16LWNyZWRlbnRpYWwiOiAiQUtJQUlPU0ZPRE5ON0VYQU1QTEUvMjAxNTEyMjkvdXMtZWFzdC0xL3MzL2F3czRfcmVxdWVzdCJ9LA0KICAgIHsieC1hbXotYWxnb3JpdGhtIjogIkFXUzQtSE1BQy1TSEEyNTYifSwNCiAgICB7IngtYW16LWRhdGUiOiAiMjAxNTEyMjlUMDAwMDAwWiIgfQ0KICBdDQp9";
        assert_eq!(
            sigv4_signature(SECRET, "20151229", "us-east-1", "s3", policy),
            "8afdbf4008c03f22c2cd3cdb72e4afbb1f6a588f3255ac628749a66d7f09699e"
        );
        let f = fields(&[
            ("key", "user/user1/${filename}"),
            ("acl", "public-read"),
            (
                "success_action_redirect",
                "http://sigv4examplebucket.s3.amazonaws.com/successful_upload.html",
            ),
            ("Content-Type", "image/jpeg"),
            ("x-amz-server-side-encryption", "AES256"),
            (
                "X-Amz-Credential",
                "AKIAIOSFODNN7EXAMPLE/20151229/us-east-1/s3/aws4_request",
            ),
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Date", "20151229T000000Z"),
            ("x-amz-meta-uuid", "14365123651274"),
            ("x-amz-meta-tag", ""),
            ("Policy", policy),
            (
                "X-Amz-Signature",
                "8afdbf4008c03f22c2cd3cdb72e4afbb1f6a588f3255ac628749a66d7f09699e",
            ),
        ]);
        let p = authenticate(&f, &creds()).unwrap();
        let before = time::macros::datetime!(2015-12-29 12:00 UTC);
        let mut sub = f.clone();
        sub.set("key", "user/user1/photo.jpg".into());
        assert_eq!(
            p.check(&sub, "sigv4examplebucket", before),
            Ok((0, u64::MAX))
        );
        // wrong bucket, expired, violated condition, extra field
        assert!(matches!(
            p.check(&sub, "other", before),
            Err(PostError::Condition(c)) if c.contains("$bucket")
        ));
        assert_eq!(
            p.check(
                &sub,
                "sigv4examplebucket",
                time::macros::datetime!(2016-01-01 0:00 UTC)
            ),
            Err(PostError::Expired)
        );
        let mut bad = sub.clone();
        bad.set("key", "user/user2/x".into());
        assert!(matches!(
            p.check(&bad, "sigv4examplebucket", before),
            Err(PostError::Condition(c)) if c.contains("starts-with")
        ));
        let mut extra = sub.clone();
        extra.0.push((
            "x-amz-server-side-encryption-customer-algorithm".into(),
            "AES256".into(),
        ));
        assert!(matches!(
            p.check(&extra, "sigv4examplebucket", before),
            Err(PostError::ExtraField(f)) if f == "x-amz-server-side-encryption-customer-algorithm"
        ));
        let mut ignored = sub.clone();
        ignored.0.push(("x-ignore-me".into(), "1".into()));
        assert!(p.check(&ignored, "sigv4examplebucket", before).is_ok());
        // a tampered policy or signature
        let mut tampered = f.clone();
        tampered.set("x-amz-signature", "00".repeat(32));
        assert_eq!(
            authenticate(&tampered, &creds()).err(),
            Some(PostError::Signature)
        );
    }

    #[test]
    fn refusals_before_the_signature() {
        assert_eq!(
            authenticate(&fields(&[("key", "k")]), &creds()).err(),
            Some(PostError::Anonymous)
        );
        assert_eq!(
            authenticate(
                &fields(&[
                    ("key", "k"),
                    ("AWSAccessKeyId", "AK"),
                    ("policy", "e30="),
                    ("signature", "x")
                ]),
                &creds()
            )
            .err(),
            Some(PostError::SigV2)
        );
        assert_eq!(
            authenticate(&fields(&[("key", "k"), ("policy", "e30=")]), &creds()).err(),
            Some(PostError::MissingField("x-amz-algorithm"))
        );
        let f = fields(&[
            ("policy", "e30="),
            ("x-amz-algorithm", "AWS4-HMAC-SHA256"),
            (
                "x-amz-credential",
                "AKIAIOSFODNN7EXAMPLE/20151229/eu-west-1/s3/aws4_request",
            ),
            ("x-amz-date", "20151229T000000Z"),
            ("x-amz-signature", "00"),
        ]);
        assert!(matches!(
            authenticate(&f, &creds()),
            Err(PostError::Region { .. })
        ));
        let e = crate::s3::errors::ApiError::from(crate::s3::post::FormError::Post(
            PostError::Anonymous,
        ));
        assert_eq!(e.wire().status.as_u16(), 403);
    }

    #[test]
    fn length_range_and_policy_shapes() {
        let doc = r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[["content-length-range",10,"100"],["content-length-range",0,50],["eq","$key","a"],{"bucket":"b"}]}"#;
        let p = Policy::parse(&STANDARD.encode(doc)).unwrap();
        let now = time::macros::datetime!(2025-01-01 0:00 UTC);
        assert_eq!(p.check(&fields(&[("key", "a")]), "b", now), Ok((10, 50)));
        for bad in [
            "not base64!",
            &STANDARD.encode("[]"),
            &STANDARD.encode(r#"{"expiration":"soon","conditions":[]}"#),
            &STANDARD.encode(
                r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[["gt","$key","a"]]}"#,
            ),
            &STANDARD
                .encode(r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[["eq","key","a"]]}"#),
        ] {
            assert!(
                matches!(Policy::parse(bad), Err(PostError::PolicyDocument(_))),
                "{bad}"
            );
        }
    }
}
