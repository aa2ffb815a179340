//! Completes S3 error answers on the way out: s3s writes `<Error>` with Code and Message only,
//! and AWS also names the `Resource` (the request path) and the `RequestId` (the same id as the
//! `x-amz-request-id` header, which every answer carries). Plain HTTP: no s3s types here.
//! Nothing secret; the error body is small and rewritten in memory.

use axum::body::Body;
use axum::response::Response;
use http::HeaderValue;

/// Largest error body rewritten (s3s error bodies are a few hundred bytes).
const MAX_ERROR_BODY: usize = 64 * 1024;

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // A character XML 1.0 cannot carry (a control character in a requested key).
            c if !crate::s3::xml_safe(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Add `x-amz-request-id` to every answer, and `Resource`/`RequestId` to S3 XML error bodies.
pub(crate) async fn complete(mut resp: Response, path: &str, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    let is_xml = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/xml"));
    if resp.status().as_u16() < 400 || !is_xml {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_ERROR_BODY).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "error body could not be read");
            return Response::from_parts(parts, Body::empty());
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let Some(at) = text.rfind("</Error>") else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let mut extra = String::new();
    if !text.contains("<Resource>") {
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        extra.push_str(&format!("<Resource>{}</Resource>", xml_escape(&decoded)));
    }
    if !text.contains("<RequestId>") {
        extra.push_str(&format!(
            "<RequestId>{}</RequestId>",
            xml_escape(request_id)
        ));
    }
    let body = format!("{}{}{}", &text[..at], extra, &text[at..]);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn adds_resource_and_request_id() {
        let resp = Response::builder()
            .status(404)
            .header("content-type", "application/xml")
            .header("content-length", "10")
            .body(Body::from(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code><Message>m</Message></Error>",
            ))
            .unwrap();
        let out = complete(resp, "/b/a%20%3Ck", "rid-1").await;
        assert_eq!(out.headers()["x-amz-request-id"], "rid-1");
        assert!(out.headers().get("content-length").is_none());
        let body = axum::body::to_bytes(out.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code><Message>m</Message><Resource>/b/a &lt;k</Resource><RequestId>rid-1</RequestId></Error>"
        );
    }

    #[tokio::test]
    async fn leaves_success_and_non_xml_alone() {
        let resp = Response::builder()
            .status(200)
            .header("content-type", "application/xml")
            .body(Body::from("<ok/>"))
            .unwrap();
        let out = complete(resp, "/b", "r").await;
        let body = axum::body::to_bytes(out.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(&body[..], b"<ok/>");
    }
}
