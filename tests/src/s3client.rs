//! A small SigV4-signing S3 client for Rust integration tests: one call = one signed HTTP request
//! (path style, unsigned-payload-free: the body's SHA-256 is signed), answered as status, headers
//! and body, with helpers to read XML elements. Real clients (boto3, aws-cli, s3cmd, rclone) are
//! exercised by the pytest suites; this one pins wire behaviour from `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sha2::{Digest, Sha256};

use crate::sigv4::{Request, Signer, uri_encode};

/// One HTTP answer.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, or "" when absent.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// Every `<tag>value</tag>` in the XML body, in order.
    pub fn all(&self, tag: &str) -> Vec<String> {
        let text = self.text();
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let mut out = Vec::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(&open) {
            rest = &rest[i + open.len()..];
            let Some(j) = rest.find(&close) else { break };
            out.push(rest[..j].to_string());
            rest = &rest[j..];
        }
        out
    }

    /// The first `<tag>value</tag>`, or "".
    pub fn one(&self, tag: &str) -> String {
        self.all(tag).into_iter().next().unwrap_or_default()
    }
}

/// Signs and sends requests to one S3 endpoint (`scheme://host`).
pub struct S3Client {
    pub http: reqwest::Client,
    pub scheme: &'static str,
    pub host: String,
    pub signer: Signer,
}

impl S3Client {
    /// A client for `http://host` with the given access key and secret, region us-east-1.
    pub fn plain(host: &str, access_key: &str, secret_key: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            scheme: "http",
            host: host.to_string(),
            signer: Signer {
                access_key: access_key.into(),
                secret_key: secret_key.into(),
                region: "us-east-1".into(),
            },
        }
    }

    /// Send one SigV4-signed request (panics when no answer arrives).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        self.try_call(method, path, query, headers, body)
            .await
            .unwrap()
    }

    /// Send one SigV4-signed request; a transport failure (refused, reset, timed out, body cut)
    /// is an `Err`.
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Answer, reqwest::Error> {
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        let sha = hex::encode(Sha256::digest(&body));
        let signed = self.signer.sign(
            &Request {
                method,
                host: &self.host,
                path,
                query: &query,
                headers: &headers,
                payload_sha256: &sha,
            },
            time::OffsetDateTime::now_utc(),
        );
        let qs: Vec<String> = query
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    uri_encode(k, false)
                } else {
                    format!("{}={}", uri_encode(k, false), uri_encode(v, false))
                }
            })
            .collect();
        let mut url = format!("{}://{}{}", self.scheme, self.host, uri_encode(path, true));
        if !qs.is_empty() {
            url = format!("{url}?{}", qs.join("&"));
        }
        let mut rb = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
            .body(body);
        for (k, v) in signed {
            if k != "host" {
                rb = rb.header(k, v);
            }
        }
        let resp = rb.send().await?;
        Ok(Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await?.to_vec(),
        })
    }
}
