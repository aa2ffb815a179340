//! POST Object (browser form upload), answered here instead of by s3s, which would buffer the
//! whole file in memory before any check. The multipart form is parsed as it streams (`multer`):
//! the fields before the file are read with bounds, the form is authenticated (SigV4 POST
//! signature over the policy; anonymous and SigV2 forms are refused before one byte of the file
//! is read) and its policy checked (expiration, conditions, every field covered), then the file
//! part streams through the same PutObject path as a PUT: the form's fields become the request
//! headers, so SSE, SSE-C and checksum fields are validated by the same code as the headers.
//! `content-length-range` is enforced while the file streams. Secret: SSE-C keys in the form
//! live only in the request's header map, as for a PUT.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use s3s::S3Request;
use s3s::dto::{PutObjectInput, StreamingBlob, Timestamp, TimestampFormat};

use super::errors::ApiError;

use crate::post_policy::{self, Fields, PostError};
use crate::state::NodeState;

/// Largest value of one form field before the file.
const MAX_FIELD_BYTES: usize = 64 * 1024;
/// Largest total of the form fields before the file.
const MAX_FIELDS_BYTES: usize = 256 * 1024;
/// Most form fields before the file.
const MAX_FIELDS: usize = 200;
/// Bytes handed to the form parser per poll before it yields (bounds its buffer).
const POLL_BUDGET: usize = 1 << 20;
/// What is read (and discarded) after the file part so that the connection can be reused.
const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// Fields that configure the POST itself and are not request headers of the write.
fn is_form_control(name: &str) -> bool {
    matches!(
        name,
        "key"
            | "policy"
            | "x-amz-signature"
            | "x-amz-algorithm"
            | "x-amz-credential"
            | "x-amz-date"
            | "x-amz-security-token"
            | "success_action_status"
            | "success_action_redirect"
            | "redirect"
            | "bucket"
            | "acl"
            | "tagging"
            | "file"
            | "awsaccesskeyid"
            | "signature"
    ) || name.starts_with("x-ignore-")
}

/// The bucket a request addresses when it is a POST of a multipart form (`Some(None)` when it
/// is such a POST but not addressed to a bucket: root or object path).
pub(crate) fn form_post_target(
    state: &NodeState,
    method: &http::Method,
    headers: &HeaderMap,
    path: &str,
) -> Option<Option<String>> {
    if method != http::Method::POST {
        return None;
    }
    let ct = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    if !ct
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return None;
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    if let Some((_, bucket)) =
        host.and_then(|h| crate::state::vhost_bucket(&state.cfg.virtual_host_domains, h))
    {
        return Some((path == "/" || path.is_empty()).then(|| bucket.to_string()));
    }
    let rest = path.strip_prefix('/').unwrap_or(path);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains('/') {
        return Some(None);
    }
    let bucket = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .ok()?;
    Some(Some(bucket.into_owned()))
}

/// Why a form upload is refused (this boundary's one error enum).
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    /// Not well-formed multipart/form-data (also: the file part ends early).
    #[error("malformed form")]
    Malformed,
    /// No `file` part.
    #[error("no file part")]
    NoFile,
    /// Fields before the file beyond the bounds.
    #[error("fields before the file too large")]
    PreDataTooLarge,
    /// A field that cannot be a request header of the write.
    #[error("field is not a valid header")]
    BadField,
    /// The Expires field is not an HTTP date.
    #[error("bad Expires")]
    BadExpires,
    /// The key is empty after `${filename}` substitution.
    #[error("empty key")]
    EmptyKey,
    /// Above the policy's `content-length-range`.
    #[error("file too large for the policy")]
    TooLarge,
    /// Below the policy's `content-length-range`.
    #[error("file too small for the policy")]
    TooSmall,
    /// Authentication or policy.
    #[error("{0}")]
    Post(#[from] PostError),
    /// The write itself (SSE fields, bucket, checksums, KMS, disk...), answered as a PUT is.
    #[error("write refused: {0}")]
    Write(ApiError),
}

/// An answer with a status and no body.
fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// The answer, and whether the request body was read to its end (else the connection closes).
pub(crate) struct Answer {
    pub response: Response,
    pub body_consumed: bool,
}

impl Answer {
    fn early(state: &NodeState, e: FormError) -> Self {
        let e = ApiError::from(e);
        super::errors::note(state, &e);
        Answer {
            response: super::errors::http_response(&e),
            body_consumed: false,
        }
    }
}

/// Feeds the form parser at most [`POLL_BUDGET`] bytes per poll, then yields, so that its
/// buffer stays bounded however fast the client sends.
struct Budgeted<S> {
    inner: S,
    since_yield: usize,
}

impl<S> Stream for Budgeted<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.since_yield >= POLL_BUDGET {
            self.since_yield = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let r = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(b))) = &r {
            self.since_yield += b.len();
        }
        r
    }
}

/// Why the file stream stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileProblem {
    TooLarge,
    TooSmall,
    Malformed,
}

/// The file part as the object body: counts bytes against the policy's size range and records
/// why it failed, so that the answer names the cause rather than the write's generic error.
struct FileBody {
    field: multer::Field<'static>,
    seen: u64,
    range: (u64, u64),
    problem: Arc<Mutex<Option<FileProblem>>>,
    done: bool,
}

impl FileBody {
    fn fail(&mut self, p: FileProblem) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.done = true;
        if let Ok(mut g) = self.problem.lock() {
            *g = Some(p);
        }
        Poll::Ready(Some(Err(std::io::Error::other(format!("{p:?}")))))
    }
}

impl Stream for FileBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.field).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(b))) => {
                self.seen = self.seen.saturating_add(b.len() as u64);
                if self.seen > self.range.1 {
                    return self.fail(FileProblem::TooLarge);
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(_))) => self.fail(FileProblem::Malformed),
            Poll::Ready(None) => {
                if self.seen < self.range.0 {
                    return self.fail(FileProblem::TooSmall);
                }
                self.done = true;
                Poll::Ready(None)
            }
        }
    }
}

/// Read one field's value, bounded.
async fn read_value(field: &mut multer::Field<'static>, total: &mut usize) -> Option<String> {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = field.chunk().await.map_err(|_| ()) {
        buf.extend_from_slice(&chunk);
        *total = total.saturating_add(chunk.len());
        if buf.len() > MAX_FIELD_BYTES || *total > MAX_FIELDS_BYTES {
            return None;
        }
    }
    String::from_utf8(buf).ok()
}

/// Read the fields up to the file part.
async fn read_fields(
    multipart: &mut multer::Multipart<'static>,
) -> Result<(Fields, multer::Field<'static>), FormError> {
    let mut fields = Fields::default();
    let mut total = 0usize;
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(FormError::NoFile),
            Err(_) => return Err(FormError::Malformed),
        };
        let name = field.name().unwrap_or_default().to_ascii_lowercase();
        if name == "file" {
            return Ok((fields, field));
        }
        if fields.0.len() >= MAX_FIELDS {
            return Err(FormError::PreDataTooLarge);
        }
        match read_value(&mut field, &mut total).await {
            Some(v) => fields.0.push((name, v)),
            None if total > MAX_FIELDS_BYTES => return Err(FormError::PreDataTooLarge),
            None => return Err(FormError::Malformed),
        }
    }
}

/// The request headers of the write: every form field that is not a POST control field.
fn write_headers(fields: &Fields) -> Result<HeaderMap, FormError> {
    let mut h = HeaderMap::new();
    for (name, value) in &fields.0 {
        if is_form_control(name) {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.trim().as_bytes()),
        ) else {
            return Err(FormError::BadField);
        };
        h.append(n, v);
    }
    Ok(h)
}

fn put_input(
    bucket: &str,
    key: &str,
    fields: &Fields,
    body: StreamingBlob,
) -> Result<PutObjectInput, FormError> {
    let get = |n: &str| fields.get(n).map(|v| v.trim().to_string());
    let expires = match fields.get("expires") {
        None => None,
        Some(v) => Some(
            Timestamp::parse(TimestampFormat::HttpDate, v.trim())
                .map_err(|_| FormError::BadExpires)?,
        ),
    };
    let metadata: s3s::dto::Metadata = fields
        .0
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("x-amz-meta-")
                .filter(|m| !m.is_empty())
                .map(|m| (m.to_string(), v.clone()))
        })
        .collect();
    Ok(PutObjectInput {
        bucket: bucket.to_string(),
        key: key.to_string(),
        body: Some(body),
        cache_control: get("cache-control"),
        content_disposition: get("content-disposition"),
        content_encoding: get("content-encoding"),
        content_language: get("content-language"),
        content_md5: get("content-md5"),
        content_type: get("content-type"),
        expires,
        metadata: (!metadata.is_empty()).then_some(metadata),
        ..Default::default()
    })
}

/// Read and discard what follows the file part (closing boundary, ignored fields), bounded.
async fn drain_rest(multipart: &mut multer::Multipart<'static>) -> bool {
    let mut seen = 0usize;
    loop {
        match multipart.next_field().await {
            Ok(None) => return true,
            Ok(Some(mut f)) => loop {
                match f.chunk().await {
                    Ok(Some(c)) => {
                        seen += c.len();
                        if seen > MAX_TRAILER_BYTES {
                            return false;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return false,
                }
            },
            Err(_) => return false,
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// The object's URL, as AWS puts it in `Location`.
fn location(state: &NodeState, host: Option<&str>, bucket: &str, key: &str) -> String {
    let scheme = if state.cfg.tls { "https" } else { "http" };
    let host = host.unwrap_or("localhost");
    let key = percent_encoding::utf8_percent_encode(key, PATH_SEGMENT);
    if state.bucket_in_host(Some(host)) {
        format!("{scheme}://{host}/{key}")
    } else {
        format!("{scheme}://{host}/{bucket}/{key}")
    }
}

/// Handle a POST Object to `bucket`.
pub(crate) async fn post_object(
    state: &NodeState,
    req: axum::extract::Request,
    bucket: String,
) -> Answer {
    let (parts, body) = req.into_parts();
    let Some(Ok(boundary)) = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(multer::parse_boundary)
    else {
        return Answer::early(state, FormError::Malformed);
    };
    let stream = Budgeted {
        inner: body.into_data_stream(),
        since_yield: 0,
    };
    let mut multipart = multer::Multipart::new(stream, boundary);
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let stored = match upload(state, &mut multipart, &bucket, parts.uri, parts.extensions).await {
        Ok(s) => s,
        Err(e) => return Answer::early(state, e),
    };
    let body_consumed = drain_rest(&mut multipart).await;
    Answer {
        response: success(state, &stored, host.as_deref(), &bucket),
        body_consumed,
    }
}

/// A stored form upload and how to answer it.
struct Stored {
    key: String,
    output: s3s::dto::PutObjectOutput,
    status: StatusCode,
    redirect: Option<String>,
}

/// Authenticate the form, check its policy, and stream its file through PutObject.
async fn upload(
    state: &NodeState,
    multipart: &mut multer::Multipart<'static>,
    bucket: &str,
    uri: http::Uri,
    extensions: http::Extensions,
) -> Result<Stored, FormError> {
    let (mut fields, file) = read_fields(multipart).await?;
    let creds = post_policy::Credentials {
        access_key: &state.cfg.access_key,
        secret_key: &state.cfg.secret_key,
        region: &state.cfg.region,
    };
    let policy = post_policy::authenticate(&fields, &creds)?;
    let key = fields
        .get("key")
        .ok_or(PostError::MissingField("key"))?
        .replace("${filename}", file.file_name().unwrap_or_default());
    if key.is_empty() {
        return Err(FormError::EmptyKey);
    }
    fields.set("key", key.clone());
    let range = policy.check(&fields, bucket, time::OffsetDateTime::now_utc())?;
    let status = match fields.get("success_action_status").map(str::trim) {
        Some("200") => StatusCode::OK,
        Some("201") => StatusCode::CREATED,
        _ => StatusCode::NO_CONTENT,
    };
    let redirect = fields
        .get("success_action_redirect")
        .or_else(|| fields.get("redirect"))
        .map(str::trim)
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .map(str::to_string);
    let headers = write_headers(&fields)?;
    let problem = Arc::new(Mutex::new(None));
    let body = FileBody {
        field: file,
        seen: 0,
        range,
        problem: problem.clone(),
        done: false,
    };
    let input = put_input(bucket, &key, &fields, StreamingBlob::wrap(body))?;
    let s3req = S3Request {
        input,
        method: http::Method::PUT,
        uri,
        headers,
        extensions,
        credentials: Some(s3s::auth::Credentials {
            access_key: state.cfg.access_key.clone(),
            secret_key: s3s::auth::SecretKey::from(state.cfg.secret_key.as_str()),
        }),
        region: None,
        service: Some("s3".into()),
        trailing_headers: None,
    };
    let request_id = super::request_id(&s3req);
    let out = super::put::put_object(state, s3req, &request_id).await;
    let problem = problem.lock().ok().and_then(|g| *g);
    match (out, problem) {
        (Ok(o), _) => Ok(Stored {
            key,
            output: o.output,
            status,
            redirect,
        }),
        (Err(_), Some(FileProblem::TooLarge)) => Err(FormError::TooLarge),
        (Err(_), Some(FileProblem::TooSmall)) => Err(FormError::TooSmall),
        (Err(_), Some(FileProblem::Malformed)) => Err(FormError::Malformed),
        (Err(e), None) => Err(FormError::Write(e)),
    }
}

/// The success answer: a 303 to `success_action_redirect`, the 201 PostResponse XML, or an
/// empty 200/204, with ETag, Location and the SSE headers as a PUT answers them.
fn success(state: &NodeState, stored: &Stored, host: Option<&str>, bucket: &str) -> Response {
    let out = &stored.output;
    let key = &stored.key;
    let etag = match &out.e_tag {
        Some(t) => format!("\"{}\"", t.value()),
        None => String::new(),
    };
    let loc = location(state, host, bucket, key);
    let mut resp = if let Some(url) = &stored.redirect {
        let sep = if url.contains('?') { '&' } else { '?' };
        let q = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let target = format!(
            "{url}{sep}bucket={}&key={}&etag={}",
            q(bucket),
            q(key),
            q(&etag)
        );
        let mut r = empty(StatusCode::SEE_OTHER);
        if let Ok(v) = HeaderValue::from_str(&target) {
            r.headers_mut().insert(http::header::LOCATION, v);
        }
        r
    } else if stored.status == StatusCode::CREATED {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<PostResponse><Location>{}</Location><Bucket>{}</Bucket><Key>{}</Key><ETag>{}</ETag></PostResponse>",
            xml_escape(&loc),
            xml_escape(bucket),
            xml_escape(key),
            xml_escape(&etag)
        );
        let mut r = Response::new(Body::from(xml));
        *r.status_mut() = StatusCode::CREATED;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        r
    } else {
        empty(stored.status)
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(http::header::ETAG, v);
    }
    if !h.contains_key(http::header::LOCATION)
        && let Ok(v) = HeaderValue::from_str(&loc)
    {
        h.insert(http::header::LOCATION, v);
    }
    let sse = [
        (
            "x-amz-server-side-encryption",
            out.server_side_encryption
                .as_ref()
                .map(|s| s.as_str().to_string()),
        ),
        (
            "x-amz-server-side-encryption-customer-algorithm",
            out.sse_customer_algorithm.clone(),
        ),
        (
            "x-amz-server-side-encryption-customer-key-md5",
            out.sse_customer_key_md5.clone(),
        ),
        (
            "x-amz-server-side-encryption-aws-kms-key-id",
            out.ssekms_key_id.clone(),
        ),
        (
            "x-amz-server-side-encryption-context",
            out.ssekms_encryption_context.clone(),
        ),
        (
            "x-amz-server-side-encryption-bucket-key-enabled",
            out.bucket_key_enabled.map(|b| b.to_string()),
        ),
    ];
    for (name, value) in sse {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert(name, v);
        }
    }
    resp
}
