//! SSE headers that are not visible ASCII (a non-ASCII byte, say) are refused here, before s3s
//! parses the request: s3s answers such a header with `invalid header: NAME: "VALUE"` and logs
//! that at ERROR, which for an SSE-C key echoes key material (issue 11 B7). The answer here is
//! the SSE error the value would have earned had it been readable, and names no value.
//!
//! Secret: the header values are only tested, never copied, logged or answered.

use http::HeaderMap;

use crate::crypto::sse::SseError;

/// The SSE error for an unreadable value of SSE header `name`, if `name` is one.
fn error_for(name: &str) -> Option<SseError> {
    let rest = name
        .strip_prefix("x-amz-copy-source-server-side-encryption")
        .or_else(|| name.strip_prefix("x-amz-server-side-encryption"))?;
    Some(match rest {
        "-customer-key" => SseError::BadKey,
        "-customer-key-md5" => SseError::KeyMd5Mismatch,
        "-customer-algorithm" => SseError::BadAlgorithm,
        _ => SseError::UnknownMethod,
    })
}

/// The first SSE header whose value is not visible ASCII, as the error it earns.
pub(crate) fn unreadable(h: &HeaderMap) -> Option<SseError> {
    h.iter()
        .filter(|(_, v)| v.to_str().is_err())
        .find_map(|(name, _)| error_for(name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_sse_headers_are_named_by_kind_only() {
        let mut h = HeaderMap::new();
        h.insert("content-type", http::HeaderValue::from_static("text/plain"));
        h.insert(
            "x-amz-server-side-encryption-customer-key",
            http::HeaderValue::from_static("c2VjcmV0"),
        );
        assert_eq!(unreadable(&h), None);
        let bad = http::HeaderValue::from_bytes(b"SECRET\xe9AAAA").unwrap();
        for (name, want) in [
            (
                "x-amz-server-side-encryption-customer-key",
                SseError::BadKey,
            ),
            (
                "x-amz-copy-source-server-side-encryption-customer-key",
                SseError::BadKey,
            ),
            (
                "x-amz-server-side-encryption-customer-key-md5",
                SseError::KeyMd5Mismatch,
            ),
            (
                "x-amz-copy-source-server-side-encryption-customer-algorithm",
                SseError::BadAlgorithm,
            ),
            ("x-amz-server-side-encryption", SseError::UnknownMethod),
        ] {
            let mut h = h.clone();
            h.insert(http::HeaderName::from_static(name), bad.clone());
            assert_eq!(unreadable(&h), Some(want), "{name}");
        }
        let mut other = h.clone();
        other.insert("x-amz-meta-k", bad);
        assert_eq!(
            unreadable(&other),
            None,
            "not an SSE header: s3s answers it"
        );
    }
}
