//! The object data path: every byte an S3 request writes or reads, and every state change that
//! publishes or retires blobs, goes through these functions. They take an [`Encryption`]
//! argument and our own types only (no s3s types), so the S3 edge stays thin and the encryption
//! layer plugs in by choosing the argument.
//!
//! Secret: no key bytes here: `Encryption::Keyed` carries an opaque `PartSealer` (the object key
//! stays in `crypto`); part keys derived from it live inside the `PartCipher` of one blob
//! writer/reader and are zeroized with it. Atomic: a blob is durable
//! before the transaction that references it; blob files are deleted only after the rows that
//! referenced them are gone (a crash in between leaves orphans the start-up sweep removes).

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::blobs::{BlobError, BlobStore, BodyError, WrittenBlob};
use super::conditions::{ConditionFailed, WriteCondition};
use super::meta::{BlobRow, Completion, DbError, Meta, Object, Upload};
use crate::crypto::format::{FormatError, PartSealer};

/// How the bytes of an object version (or multipart upload) are stored.
#[derive(Clone, Copy)]
pub enum Encryption<'a> {
    /// Plaintext blobs.
    None,
    /// Segmented AES-256-GCM-SIV blobs under part keys derived from this object key.
    Keyed(PartSealer<'a>),
}

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A part's header does not authenticate under its key (tampered or foreign blob).
    #[error("part header: {0}")]
    Header(FormatError),
}

/// Plaintext bytes streamed to the client.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Stream `body` into a new durable blob for part `part_number`, encrypted when keyed; `observe`
/// sees every plaintext chunk (checksums); `md5`: compute the plaintext MD5. Nothing references the blob yet: the caller
/// publishes it, or calls [`discard`].
pub async fn write_part<S, E>(
    blobs: &BlobStore,
    body: S,
    part_number: u32,
    enc: Encryption<'_>,
    expected_len: Option<u64>,
    md5: bool,
    observe: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<WrittenBlob, BlobError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BodyError>,
{
    write_part_verified(
        blobs,
        body,
        part_number,
        enc,
        expected_len,
        md5,
        observe,
        &mut |_| true,
    )
    .await
}

/// [`write_part`], with the request's digests checked by `verify` before the blob is made
/// durable (see `BlobStore::write_verified`): a refused digest leaves nothing in `blobs/`.
#[allow(clippy::too_many_arguments)]
pub async fn write_part_verified<S, E>(
    blobs: &BlobStore,
    body: S,
    part_number: u32,
    enc: Encryption<'_>,
    expected_len: Option<u64>,
    md5: bool,
    observe: &mut (dyn FnMut(&[u8]) + Send),
    verify: &mut (dyn FnMut(Option<&[u8; 16]>) -> bool + Send),
) -> Result<WrittenBlob, BlobError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BodyError>,
{
    let cipher = match enc {
        Encryption::Keyed(k) => Some(k.for_write(part_number)),
        Encryption::None => None,
    };
    blobs
        .write_verified(body, cipher, expected_len, md5, observe, verify)
        .await
}

/// Remove a blob that will not be published (checksum mismatch, failed commit).
pub async fn discard(blobs: &BlobStore, file: &str) {
    blobs.remove(file).await;
}

/// The transaction that was to reference `file` failed. A failed COMMIT does not always mean
/// nothing was committed (an I/O error after the commit record was written), so the blob is
/// removed only when a fresh read shows no row references it; when that cannot be told, it is
/// kept and the start-up sweep removes it if it is unreferenced.
async fn discard_unpublished(meta: &Meta, blobs: &BlobStore, file: &str) {
    match meta.blob_file_referenced(file).await {
        Ok(false) => discard(blobs, file).await,
        Ok(true) => tracing::warn!(file, "a commit reported failure but its blob is referenced"),
        Err(e) => {
            tracing::warn!(file, error = %e, "keeping blob of a failed commit for the start-up sweep")
        }
    }
}

/// Plaintext of bytes `range` (inclusive; whole object when `None`) of an object made of
/// `parts`. Every covered part is opened, and its header authenticated, before this returns:
/// a bad header fails before the first byte, and an overwrite or delete that commits while the
/// stream runs does not cut it short.
pub async fn read_range(
    blobs: &BlobStore,
    parts: &[BlobRow],
    enc: Encryption<'_>,
    range: Option<(u64, u64)>,
) -> Result<ByteStream, ReadError> {
    let mut streams: Vec<ByteStream> = Vec::new();
    let mut offset = 0u64;
    for p in parts {
        let (pstart, pend) = (offset, offset + p.size);
        offset = pend;
        let local = match range {
            None => None,
            Some((s, e)) => {
                if e < pstart || s >= pend || p.size == 0 {
                    continue;
                }
                Some((s.max(pstart) - pstart, e.min(pend - 1) - pstart))
            }
        };
        let cipher = match enc {
            Encryption::Keyed(k) => {
                let header = blobs.read_header(&p.file).await?;
                Some(
                    k.for_read(p.part_number, &header)
                        .map_err(ReadError::Header)?,
                )
            }
            Encryption::None => None,
        };
        if p.size == 0 && local.is_none() && cipher.is_none() {
            continue;
        }
        streams.push(Box::pin(
            blobs.open_read(&p.file, p.size, local, cipher).await?,
        ));
    }
    Ok(Box::pin(futures::stream::iter(streams).flatten()))
}

async fn remove_all(blobs: &BlobStore, files: Vec<String>) {
    for f in files {
        blobs.remove(&f).await;
    }
}

/// Publish a single-part object whose blob is durable (its version `writing` → `complete`),
/// then delete the blobs of the version it replaced. If the commit fails, the new blob is
/// removed and nothing changed.
pub async fn publish_single_part(
    meta: &Meta,
    blobs: &BlobStore,
    obj: &Object,
    row: &BlobRow,
) -> Result<(), DbError> {
    publish_single_part_if(meta, blobs, obj, row, &WriteCondition::default())
        .await?
        .map_err(|f| DbError::Protocol(format!("unconditional write failed {f:?}")))
}

/// [`publish_single_part`] if `cond` holds when the metadata commits; otherwise the new blob is
/// removed, nothing changed, and the answer says why.
pub async fn publish_single_part_if(
    meta: &Meta,
    blobs: &BlobStore,
    obj: &Object,
    row: &BlobRow,
    cond: &WriteCondition,
) -> Result<Result<(), ConditionFailed>, DbError> {
    match meta.put_object_if(obj, row, cond).await {
        Ok(Ok(old)) => {
            remove_all(blobs, old).await;
            Ok(Ok(()))
        }
        Ok(Err(f)) => {
            discard(blobs, &row.file).await;
            Ok(Err(f))
        }
        Err(e) => {
            discard_unpublished(meta, blobs, &row.file).await;
            Err(e)
        }
    }
}

/// Record an uploaded part (replacing an earlier one with the same number). `Ok(false)`: the
/// upload is gone (aborted or completed); the new blob is removed.
pub async fn publish_part(
    meta: &Meta,
    blobs: &BlobStore,
    upload_id: &str,
    row: &BlobRow,
) -> Result<bool, DbError> {
    match meta.put_part(upload_id, row).await {
        Ok(Some(old)) => {
            remove_all(blobs, old).await;
            Ok(true)
        }
        Ok(None) => {
            discard(blobs, &row.file).await;
            Ok(false)
        }
        Err(e) => {
            discard_unpublished(meta, blobs, &row.file).await;
            Err(e)
        }
    }
}

/// Publish a completed upload as the object made of `parts` if it is live and `cond` holds;
/// unused parts and the replaced version's blobs are deleted. See [`Completion`].
pub async fn complete_upload(
    meta: &Meta,
    blobs: &BlobStore,
    upload: &Upload,
    obj: &Object,
    parts: &[u32],
    cond: &WriteCondition,
) -> Result<Completion, DbError> {
    let mut done = meta.complete_upload(upload, obj, parts, cond).await?;
    if let Completion::Published(dead) = &mut done {
        remove_all(blobs, std::mem::take(dead)).await;
    }
    Ok(done)
}

/// Abort a live upload and delete its parts. `Ok(false)`: no such live upload.
pub async fn abort_upload(
    meta: &Meta,
    blobs: &BlobStore,
    upload_id: &str,
) -> Result<bool, DbError> {
    match meta.abort_upload(upload_id).await? {
        Some(files) => {
            remove_all(blobs, files).await;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Delete a bucket without objects: its multipart uploads in progress are aborted and their
/// parts deleted (as AWS), and writes still in flight into it can no longer publish.
/// `Ok(false)`: it has objects (BucketNotEmpty).
pub async fn delete_bucket(meta: &Meta, blobs: &BlobStore, name: &str) -> Result<bool, DbError> {
    match meta.delete_bucket(name).await? {
        Some(files) => {
            remove_all(blobs, files).await;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Delete the visible version of a key and its blobs (a missing key is fine).
pub async fn delete_object(
    meta: &Meta,
    blobs: &BlobStore,
    bucket: &str,
    key: &str,
) -> Result<(), DbError> {
    let files = meta.delete_object(bucket, key).await?;
    remove_all(blobs, files).await;
    Ok(())
}
