//! A small AWS Signature Version 4 signer for S3 requests (header authentication), used by the
//! benchmark tool and Rust tests. Secret: the secret access key, used only to derive the signing
//! key. Payloads are sent as `UNSIGNED-PAYLOAD` or with their SHA-256.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Credentials and scope for signing.
pub struct Signer {
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// S3's URI encoding of a path (slashes kept) or a query component.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What is signed of one request. `headers` are (lower-case name, value) pairs that will be sent
/// and signed (`host`, `x-amz-date` and `x-amz-content-sha256` are added by [`Signer::sign`]).
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub headers: &'a [(String, String)],
    pub payload_sha256: &'a str,
}

impl Signer {
    /// Sign a request. `headers` are (lower-case name, value) pairs that will be sent and signed
    /// (the `host`, `x-amz-date` and `x-amz-content-sha256` headers are added here). Returns the
    /// full header list to send, including `authorization`.
    pub fn sign(&self, req: &Request<'_>, now: time::OffsetDateTime) -> Vec<(String, String)> {
        let Request {
            method,
            host,
            path,
            query,
            headers,
            payload_sha256,
        } = *req;
        let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let amz_date = now.format(&fmt).unwrap_or_default();
        let date = amz_date.get(..8).unwrap_or_default().to_string();
        let mut all: Vec<(String, String)> = headers.to_vec();
        all.push(("host".into(), host.into()));
        all.push(("x-amz-date".into(), amz_date.clone()));
        all.push(("x-amz-content-sha256".into(), payload_sha256.into()));
        all.sort();
        let signed_headers = all
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let canonical_headers: String = all
            .iter()
            .map(|(k, v)| format!("{k}:{}\n", v.trim()))
            .collect();
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
            .collect();
        q.sort();
        let canonical_query = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let canonical = format!(
            "{method}\n{}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_sha256}",
            uri_encode(path, true)
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let sts = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let k = hmac(
            format!("AWS4{}", self.secret_key).as_bytes(),
            date.as_bytes(),
        );
        let k = hmac(&k, self.region.as_bytes());
        let k = hmac(&k, b"s3");
        let k = hmac(&k, b"aws4_request");
        let sig = hex::encode(hmac(&k, sts.as_bytes()));
        all.push((
            "authorization".into(),
            format!("AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={sig}", self.access_key),
        ));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published S3 SigV4 example "GET Object" (Range header, 2013-05-24).
    #[test]
    fn aws_get_object_example() {
        let s = Signer {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
        };
        let now = time::macros::datetime!(2013-05-24 00:00:00 UTC);
        let headers = [("range".to_string(), "bytes=0-9".to_string())];
        let req = Request {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            query: &[],
            headers: &headers,
            payload_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        };
        let h = s.sign(&req, now);
        let auth = h
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        assert!(
            auth.ends_with(
                "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            ),
            "{auth}"
        );
    }
}
