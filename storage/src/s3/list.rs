//! Object listings: ListObjects (v1), ListObjectsV2 and ListObjectVersions (unversioned
//! buckets: every object is version `null`), with prefix, delimiter/CommonPrefixes, max-keys,
//! markers and continuation tokens, and `encoding-type=url`. Read-only; nothing secret.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::common;
use super::errors::{ApiError, ApiResult};
use super::object::{bucket_or_404, xml_safe};
use crate::state::NodeState;
use crate::store::meta::Object;

/// What `encoding-type=url` leaves as is (RFC 3986 unreserved characters and `/`).
const KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Encodes names in a listing answer when the client asked for `encoding-type=url` (boto3
/// always does, and decodes with `unquote_plus`, so a raw `+` would come back as a space).
#[derive(Clone, Copy)]
pub(crate) struct Names {
    url: bool,
}

impl Names {
    pub(crate) fn new(encoding_type: Option<&EncodingType>) -> Self {
        Self {
            url: encoding_type.is_some_and(|e| e.as_str().eq_ignore_ascii_case("url")),
        }
    }

    /// A name as the answer carries it. Without `encoding-type=url`, a character XML 1.0 cannot
    /// carry (only in keys written before such keys were refused) becomes U+FFFD, so the
    /// listing stays well-formed XML.
    pub(crate) fn one(self, s: &str) -> String {
        if self.url {
            utf8_percent_encode(s, KEEP).to_string()
        } else if s.chars().all(xml_safe) {
            s.to_string()
        } else {
            s.chars()
                .map(|c| if xml_safe(c) { c } else { '\u{FFFD}' })
                .collect()
        }
    }

    /// Request parameters the answer echoes (prefix, delimiter, markers) must be carried by
    /// XML 1.0 unless they are URL-encoded: 400 InvalidArgument otherwise.
    pub(crate) fn check_echoed(self, params: &[Option<&str>]) -> ApiResult<()> {
        if self.url || params.iter().flatten().all(|p| p.chars().all(xml_safe)) {
            return Ok(());
        }
        Err(ApiError::InvalidArgument(
            "A listing parameter contains a control character that XML cannot carry; use encoding-type=url.".into(),
        ))
    }

    pub(crate) fn opt(self, s: Option<&str>) -> Option<String> {
        s.map(|s| self.one(s))
    }
}

/// One page of a listing: objects and common prefixes after `after`.
pub(crate) struct Page {
    pub objects: Vec<Object>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// Last key or prefix returned (for markers and continuation tokens).
    pub last: Option<String>,
    /// Whether `last` is a common prefix.
    pub last_is_prefix: bool,
}

/// The common prefix `key` rolls up into: `prefix` and what follows it up to and including the
/// first `delimiter`.
fn common_prefix(key: &str, prefix: &str, delimiter: Option<&str>) -> Option<String> {
    let d = delimiter?;
    let rest = key.strip_prefix(prefix)?;
    rest.find(d)
        .map(|i| format!("{prefix}{}", &rest[..i + d.len()]))
}

/// A cursor past every key that starts with `p` (keys compare as UTF-8 bytes).
fn past(p: &str) -> String {
    format!("{p}\u{10FFFF}")
}

/// Walk keys in order after `after`, folding keys that contain `delimiter` after `prefix` into
/// common prefixes. A common prefix is listed once and the walk jumps past its keys; a marker
/// that is itself a common prefix of this listing (the last entry of the previous page) resumes
/// past it, so pages never repeat a prefix (issue 11 E19).
pub(crate) async fn list_page(
    state: &NodeState,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    after: &str,
    max: usize,
) -> ApiResult<Page> {
    let delimiter = delimiter.filter(|d| !d.is_empty());
    let mut page = Page {
        objects: Vec::new(),
        prefixes: Vec::new(),
        truncated: false,
        last: None,
        last_is_prefix: false,
    };
    if max == 0 {
        return Ok(page); // as S3: nothing listed, not truncated
    }
    let mut cursor = after.to_string();
    // Keys under this prefix are already listed (as it).
    let mut skip: Option<String> = None;
    if !after.is_empty() && common_prefix(after, prefix, delimiter).as_deref() == Some(after) {
        cursor = past(after);
        skip = Some(after.to_string());
    }
    'query: loop {
        let batch = state
            .meta
            .list_objects(bucket, prefix, &cursor, 1000)
            .await?;
        if batch.is_empty() {
            return Ok(page);
        }
        for o in batch {
            cursor = o.key.clone();
            if skip.as_deref().is_some_and(|s| o.key.starts_with(s)) {
                continue;
            }
            if page.objects.len() + page.prefixes.len() >= max {
                page.truncated = true;
                return Ok(page);
            }
            match common_prefix(&o.key, prefix, delimiter) {
                Some(cp) => {
                    page.last = Some(cp.clone());
                    page.last_is_prefix = true;
                    page.prefixes.push(cp.clone());
                    cursor = past(&cp);
                    skip = Some(cp);
                    continue 'query;
                }
                None => {
                    page.last = Some(o.key.clone());
                    page.last_is_prefix = false;
                    page.objects.push(o);
                }
            }
        }
    }
}

/// The delimiter as the answer echoes it: an empty one is no delimiter (not echoed).
fn delimiter_of(d: Option<&str>) -> Option<&str> {
    d.filter(|d| !d.is_empty())
}

fn to_object(o: &Object, owner: bool, names: Names) -> s3s::dto::Object {
    s3s::dto::Object {
        key: Some(names.one(&o.key)),
        e_tag: Some(ETag::Strong(o.etag.clone())),
        size: Some(o.size as i64),
        last_modified: Some(common::ts(o.last_modified_ms)),
        storage_class: Some(ObjectStorageClass::from_static(
            ObjectStorageClass::STANDARD,
        )),
        owner: owner.then(|| Owner {
            display_name: Some("coffer".into()),
            id: Some("coffer".into()),
        }),
        ..Default::default()
    }
}

fn prefixes(p: Vec<String>, names: Names) -> Option<Vec<CommonPrefix>> {
    if p.is_empty() {
        None
    } else {
        Some(
            p.iter()
                .map(|p| CommonPrefix {
                    prefix: Some(names.one(p)),
                })
                .collect(),
        )
    }
}

pub(crate) async fn list_objects_v2(
    state: &NodeState,
    req: S3Request<ListObjectsV2Input>,
) -> ApiResult<S3Response<ListObjectsV2Output>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    let names = Names::new(input.encoding_type.as_ref());
    names.check_echoed(&[
        input.prefix.as_deref(),
        input.delimiter.as_deref(),
        input.start_after.as_deref(),
    ])?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
    let after = match input.continuation_token.as_deref() {
        Some(t) => String::from_utf8(hex::decode(t).map_err(|_| {
            ApiError::InvalidArgument("The continuation token provided is incorrect".into())
        })?)
        .map_err(|_| {
            ApiError::InvalidArgument("The continuation token provided is incorrect".into())
        })?,
        None => input.start_after.clone().unwrap_or_default(),
    };
    let page = list_page(
        state,
        &input.bucket,
        &prefix,
        input.delimiter.as_deref(),
        &after,
        max,
    )
    .await?;
    let count = (page.objects.len() + page.prefixes.len()) as i32;
    let next = if page.truncated {
        page.last.as_deref().map(hex::encode)
    } else {
        None
    };
    let owner = input.fetch_owner.unwrap_or(false);
    Ok(S3Response::new(ListObjectsV2Output {
        name: Some(input.bucket),
        prefix: names.opt(input.prefix.as_deref()),
        delimiter: names.opt(delimiter_of(input.delimiter.as_deref())),
        max_keys: Some(max as i32),
        key_count: Some(count),
        is_truncated: Some(page.truncated),
        contents: Some(
            page.objects
                .iter()
                .map(|o| to_object(o, owner, names))
                .collect(),
        ),
        common_prefixes: prefixes(page.prefixes, names),
        continuation_token: input.continuation_token,
        next_continuation_token: next,
        start_after: names.opt(input.start_after.as_deref()),
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}

pub(crate) async fn list_objects(
    state: &NodeState,
    req: S3Request<ListObjectsInput>,
) -> ApiResult<S3Response<ListObjectsOutput>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    let names = Names::new(input.encoding_type.as_ref());
    names.check_echoed(&[
        input.prefix.as_deref(),
        input.delimiter.as_deref(),
        input.marker.as_deref(),
    ])?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
    let after = input.marker.clone().unwrap_or_default();
    let page = list_page(
        state,
        &input.bucket,
        &prefix,
        input.delimiter.as_deref(),
        &after,
        max,
    )
    .await?;
    // As AWS: NextMarker only with a delimiter (otherwise the last key is the next marker).
    let next = if page.truncated && delimiter_of(input.delimiter.as_deref()).is_some() {
        page.last.clone()
    } else {
        None
    };
    Ok(S3Response::new(ListObjectsOutput {
        name: Some(input.bucket),
        prefix: names.opt(input.prefix.as_deref()),
        delimiter: names.opt(delimiter_of(input.delimiter.as_deref())),
        marker: Some(names.one(input.marker.as_deref().unwrap_or_default())),
        max_keys: Some(max as i32),
        is_truncated: Some(page.truncated),
        contents: Some(
            page.objects
                .iter()
                .map(|o| to_object(o, true, names))
                .collect(),
        ),
        common_prefixes: prefixes(page.prefixes, names),
        next_marker: names.opt(next.as_deref()),
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}

pub(crate) async fn list_object_versions(
    state: &NodeState,
    req: S3Request<ListObjectVersionsInput>,
) -> ApiResult<S3Response<ListObjectVersionsOutput>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    let names = Names::new(input.encoding_type.as_ref());
    names.check_echoed(&[
        input.prefix.as_deref(),
        input.delimiter.as_deref(),
        input.key_marker.as_deref(),
        input.version_id_marker.as_deref(),
    ])?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
    if input.version_id_marker.is_some() && input.key_marker.is_none() {
        return Err(ApiError::InvalidArgument(
            "A version-id marker cannot be specified without a key marker.".into(),
        ));
    }
    // Every key has one version (`null`), so after (key-marker, version-id-marker) is after
    // key-marker.
    let after = input.key_marker.clone().unwrap_or_default();
    let page = list_page(
        state,
        &input.bucket,
        &prefix,
        input.delimiter.as_deref(),
        &after,
        max,
    )
    .await?;
    let versions = page
        .objects
        .iter()
        .map(|o| ObjectVersion {
            key: Some(names.one(&o.key)),
            version_id: Some("null".into()),
            is_latest: Some(true),
            e_tag: Some(ETag::Strong(o.etag.clone())),
            size: Some(o.size as i64),
            last_modified: Some(common::ts(o.last_modified_ms)),
            storage_class: Some(ObjectVersionStorageClass::from_static(
                ObjectVersionStorageClass::STANDARD,
            )),
            owner: Some(Owner {
                display_name: Some("coffer".into()),
                id: Some("coffer".into()),
            }),
            ..Default::default()
        })
        .collect();
    Ok(S3Response::new(ListObjectVersionsOutput {
        name: Some(input.bucket),
        prefix: names.opt(input.prefix.as_deref()),
        delimiter: names.opt(delimiter_of(input.delimiter.as_deref())),
        key_marker: names.opt(input.key_marker.as_deref()),
        max_keys: Some(max as i32),
        is_truncated: Some(page.truncated),
        versions: Some(versions),
        common_prefixes: prefixes(page.prefixes, names),
        next_key_marker: if page.truncated {
            names.opt(page.last.as_deref())
        } else {
            None
        },
        next_version_id_marker: (page.truncated && !page.last_is_prefix).then(|| "null".into()),
        version_id_marker: input.version_id_marker,
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}
