//! The blob store: the only module that touches object files. A blob is one part's bytes
//! (ciphertext when a `PartCipher` is given) under a random name. It is sealed into `tmp/`, then
//! made durable in the backend before the caller commits the metadata row that references it:
//! locally (the default) fsynced, renamed into `blobs/` and the directory fsynced; on an S3
//! backend ([`super::blobs_s3`]) uploaded. Reads stream a plaintext range, decrypting (and, on
//! S3, fetching) only the segments that cover it.
//!
//! Secret: none stored; the `PartCipher` passed in holds the part key and is dropped (zeroized)
//! with the writer/reader. Atomic: a blob file either exists complete under `blobs/` or not at all.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use std::io::{Seek, Write};
use tokio::io::AsyncReadExt;

use super::blobs_s3::{self, S3BlobConfig, S3Blobs, S3ConfigError};
use super::disk::DiskHealth;
use crate::crypto::format::{
    self, BATCH_BYTES, BATCH_SEGMENTS, Batch, HEADER_LEN, PartCipher, SEGMENT_SIZE, SegmentReader,
};

/// A request body stream's error, as it came.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Why a blob could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The request body stream failed; the source is kept for the S3 edge to classify (size
    /// cap, chunk signature, client gone).
    #[error("request body: {0}")]
    Body(BodyError),
    #[error("blob format: {0}")]
    Format(#[from] format::FormatError),
    /// A digest the request declared (`Content-MD5`, `x-amz-checksum-*`) does not match the
    /// body; nothing was made durable.
    #[error("digest mismatch")]
    DigestMismatch,
    #[error("body length {got} does not match Content-Length {want}")]
    LengthMismatch { got: u64, want: u64 },
    /// The S3 blob backend failed or timed out (answered 503 + Retry-After).
    #[error("blob store: {0}")]
    Backend(String),
}

/// A blob that is durable under `blobs/`.
pub struct WrittenBlob {
    pub file: String,
    pub size: u64,
    /// MD5 of the plaintext, when it was asked for.
    pub md5: Option<[u8; 16]>,
}

/// Blobs of a node: staged under the data dir's `tmp/`, kept in `blobs/` or on S3.
pub struct BlobStore {
    tmp: PathBuf,
    blobs: PathBuf,
    disk: DiskHealth,
    s3: Option<S3Blobs>,
    /// Incomplete backend multipart uploads (by upload id) and when a sweep first saw them.
    uploads_seen: std::sync::Mutex<std::collections::HashMap<String, SystemTime>>,
}

/// Removes a temporary file unless disarmed.
struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl BlobStore {
    /// Create `tmp/` and `blobs/` under the data dir.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let tmp = data_dir.join("tmp");
        let blobs = data_dir.join("blobs");
        std::fs::create_dir_all(&tmp)?;
        std::fs::create_dir_all(&blobs)?;
        let disk = DiskHealth::new(&tmp);
        Ok(Self {
            tmp,
            blobs,
            disk,
            s3: None,
            uploads_seen: std::sync::Mutex::default(),
        })
    }

    /// Blobs on an S3 backend (`tmp/` under the data dir still stages writes and reads).
    pub fn open_s3(data_dir: &Path, cfg: &S3BlobConfig) -> Result<Self, S3ConfigError> {
        let mut s = Self::open(data_dir)?;
        s.s3 = Some(S3Blobs::new(cfg)?);
        Ok(s)
    }

    /// Whether the data dir's file system is marked full.
    pub fn disk(&self) -> &DiskHealth {
        &self.disk
    }

    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    fn path(&self, file: &str) -> PathBuf {
        self.blobs.join(file)
    }

    /// Stream `body` into a new durable blob, encrypting when `cipher` is given; the MD5 of the
    /// plaintext is computed when `md5` is set. `expected_len` (Content-Length) is enforced.
    ///
    /// The body is gathered into 1 MiB [`Batch`]es; hashing, sealing and writing a batch runs on
    /// a blocking thread while the next one is received, so at most two batches are in memory.
    /// A full batch is handed on only once more bytes arrive, since only then is it known not to
    /// hold the part's last segment.
    pub async fn write<S, E>(
        &self,
        body: S,
        cipher: Option<PartCipher>,
        expected_len: Option<u64>,
        md5: bool,
        observe: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<WrittenBlob, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BodyError>,
    {
        self.write_verified(body, cipher, expected_len, md5, observe, &mut |_| true)
            .await
    }

    /// [`write`](Self::write), with the request's digests checked before the blob is made
    /// durable: once the last byte is hashed, `verify` is given the plaintext MD5 (when `md5`
    /// was asked for); if it refuses, the temporary file is removed and nothing is renamed
    /// into `blobs/` ([`BlobError::DigestMismatch`]). Only then is the file fsynced and renamed.
    pub async fn write_verified<S, E>(
        &self,
        mut body: S,
        cipher: Option<PartCipher>,
        expected_len: Option<u64>,
        md5: bool,
        observe: &mut (dyn FnMut(&[u8]) + Send),
        verify: &mut (dyn FnMut(Option<&[u8; 16]>) -> bool + Send),
    ) -> Result<WrittenBlob, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BodyError>,
    {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let tmp_path = self.tmp.join(&name);
        let mut guard = TmpGuard(Some(tmp_path.clone()));
        let file = tokio::fs::File::create(&tmp_path).await?.into_std().await;
        let sink = Sink {
            file,
            header: cipher.as_ref().map(PartCipher::header_bytes),
            cipher,
            md5: md5.then(Md5::new),
        };
        let mut stage = Stage::Ready(Box::new(sink));
        let mut spare: Option<Batch> = None;
        let mut batch = Batch::new(0);
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Body(e.into()))?;
            observe(&chunk);
            size += chunk.len() as u64;
            let mut rest: &[u8] = &chunk;
            while !rest.is_empty() {
                if batch.is_full() {
                    let sink = stage.ready(&mut spare).await?;
                    let next = batch.first_segment() + BATCH_SEGMENTS as u64;
                    let fresh = match spare.take() {
                        Some(mut b) => {
                            b.reset(next);
                            b
                        }
                        None => Batch::new(next),
                    };
                    let full = std::mem::replace(&mut batch, fresh);
                    stage = Stage::Busy(tokio::task::spawn_blocking(move || sink.put(full, false)));
                }
                let n = batch.fill(rest);
                rest = rest.get(n..).unwrap_or_default();
            }
        }
        if let Some(want) = expected_len
            && want != size
        {
            return Err(BlobError::LengthMismatch { got: size, want });
        }
        let sink = stage.ready(&mut spare).await?;
        let (mut sink, _) =
            join(tokio::task::spawn_blocking(move || sink.put(batch, true))).await?;
        let digest: Option<[u8; 16]> = sink.md5.take().map(|m| m.finalize().into());
        if !verify(digest.as_ref()) {
            // `guard` removes the temporary file; nothing reached `blobs/`.
            return Err(BlobError::DigestMismatch);
        }
        let file = sink.file;
        if let Some(s3) = &self.s3 {
            // The upload is the durable step; `guard` removes the staged file either way.
            drop(file);
            let staged = std::fs::File::open(&tmp_path)?;
            let len = staged.metadata()?.len();
            s3.upload(&name, staged, len).await?;
            return Ok(WrittenBlob {
                file: name,
                size,
                md5: digest,
            });
        }
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(std::io::Error::other)??;
        let final_path = self.path(&name);
        tokio::fs::rename(&tmp_path, &final_path).await?;
        guard.0 = None;
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || sync_dir(&blobs))
            .await
            .map_err(std::io::Error::other)??;
        Ok(WrittenBlob {
            file: name,
            size,
            md5: digest,
        })
    }

    /// The header of an encrypted blob (to build its `PartCipher`).
    pub async fn read_header(&self, file: &str) -> Result<[u8; HEADER_LEN], BlobError> {
        if let Some(s3) = &self.s3 {
            return s3.header(file).await;
        }
        let mut f = tokio::fs::File::open(self.path(file)).await?;
        let mut h = [0u8; HEADER_LEN];
        f.read_exact(&mut h).await?;
        Ok(h)
    }

    /// Stream plaintext bytes `start..=end` (or the whole blob when `range` is `None`) of a blob
    /// holding `plain_len` plaintext bytes; decrypts when `cipher` is given. The file is opened
    /// here, before the caller answers, so a GET that has started keeps reading the version it
    /// resolved even if that version is overwritten or deleted meanwhile (the open descriptor
    /// keeps the unlinked file readable). Batches are read and authenticated on a blocking
    /// thread, the next one while the previous is sent; nothing is read before the first poll.
    pub async fn open_read(
        &self,
        file: &str,
        plain_len: u64,
        range: Option<(u64, u64)>,
        cipher: Option<PartCipher>,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, BlobError> {
        // The blob bytes the read needs: `offset..end` (`end` may lie past the blob's end).
        let (offset, end, source) = match cipher {
            Some(c) => {
                let plan = match range {
                    Some((s, e)) => format::plan_range(plain_len, s, e),
                    None => format::plan_full(plain_len),
                };
                let covered = (plan.last_segment + 1).saturating_mul(SEGMENT_SIZE as u64);
                let end = format::encrypted_len(covered).min(format::encrypted_len(plain_len));
                let reader = SegmentReader::new(c, plain_len, &plan);
                (plan.file_offset, end, Source::Sealed(Box::new(reader)))
            }
            None => match range {
                Some((s, e)) => (s, e + 1, Source::Plain((e + 1).saturating_sub(s))),
                None => (0, plain_len, Source::Plain(plain_len)),
            },
        };
        let f = match &self.s3 {
            Some(s3) => {
                let scratch = blobs_s3::scratch_file(&self.tmp)?;
                let mut f = if end > offset {
                    s3.fetch(file, offset..end, scratch).await?
                } else {
                    scratch
                };
                f.seek(std::io::SeekFrom::Start(0))?;
                f
            }
            None => {
                let mut f = tokio::fs::File::open(self.path(file))
                    .await?
                    .into_std()
                    .await;
                f.seek(std::io::SeekFrom::Start(offset))?;
                f
            }
        };
        let cursor = Cursor { file: f, source };
        Ok(futures::stream::try_unfold(
            ReadStage::Start(Box::new(cursor)),
            next_batch,
        ))
    }

    /// Every blob in the backend with its last-modified time (for the orphan sweep).
    pub async fn list(&self) -> Result<Vec<(String, SystemTime)>, BlobError> {
        if let Some(s3) = &self.s3 {
            return s3.list().await;
        }
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.blobs)?.flatten() {
            let modified = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| SystemTime::now());
            names.push((e.file_name().to_string_lossy().to_string(), modified));
        }
        Ok(names)
    }

    /// Abort the S3 backend's incomplete multipart uploads under the prefix that were started
    /// more than `grace` before `now` and that this node has seen pending for that long; how
    /// many (none on `blobs/`).
    pub async fn abort_stale_uploads(
        &self,
        grace: std::time::Duration,
        now: SystemTime,
    ) -> Result<usize, BlobError> {
        let Some(s3) = &self.s3 else { return Ok(0) };
        let pending = s3.pending_uploads().await?;
        // When this node first saw each upload: some stores (moto) answer a fixed, old
        // initiation time, so an upload must also have been seen pending for the grace period.
        let first_seen: Vec<SystemTime> = {
            let mut seen = self
                .uploads_seen
                .lock()
                .map_err(|_| BlobError::Backend("upload registry poisoned".into()))?;
            seen.retain(|id, _| pending.iter().any(|u| &u.upload_id == id));
            pending
                .iter()
                .map(|u| *seen.entry(u.upload_id.clone()).or_insert(now))
                .collect()
        };
        let old = |t: SystemTime| now.duration_since(t).is_ok_and(|age| age > grace);
        let mut n = 0;
        for (u, first) in pending.iter().zip(first_seen) {
            if grace.is_zero() || (old(u.initiated) && old(first)) {
                s3.abort_upload(u).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// True when blobs live in a store other nodes may share (the S3 backend): blobs there
    /// that no row references may be another node's write in flight.
    pub fn is_shared(&self) -> bool {
        self.s3.is_some()
    }

    /// For readiness: the S3 backend answers within `bound` (always true for `blobs/`, whose
    /// disk `/ready` checks apart).
    pub async fn check(&self, bound: std::time::Duration) -> Result<(), BlobError> {
        let Some(s3) = &self.s3 else { return Ok(()) };
        match tokio::time::timeout(bound, s3.check()).await {
            Ok(r) => r,
            Err(_) => Err(BlobError::Backend(
                "blob store did not answer in time".into(),
            )),
        }
    }

    /// Delete a blob (after its metadata row is gone). Missing blobs are fine.
    pub async fn remove(&self, file: &str) {
        if let Some(s3) = &self.s3 {
            if let Err(e) = s3.delete(file).await {
                tracing::warn!(file, error = %e, "removing blob failed");
            }
            return;
        }
        if let Err(e) = tokio::fs::remove_file(self.path(file)).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file, error = %e, "removing blob failed");
        }
    }
}

/// The blocking side of a blob write: the file, the cipher and the running MD5.
struct Sink {
    file: std::fs::File,
    cipher: Option<PartCipher>,
    /// The blob header, until it is written with the first batch.
    header: Option<[u8; HEADER_LEN]>,
    md5: Option<Md5>,
}

type WriteJob = tokio::task::JoinHandle<Result<(Sink, Batch), BlobError>>;

impl Sink {
    /// Hash, seal (when keyed) and append one batch; `last`: it holds the part's last segment.
    fn put(mut self, mut batch: Batch, last: bool) -> Result<(Self, Batch), BlobError> {
        if let Some(m) = self.md5.as_mut() {
            m.update(batch.plaintext());
        }
        match self.cipher.as_ref() {
            Some(c) => {
                batch.seal(c, last)?;
                let header = self.header.take();
                batch.write_sealed(header.as_ref().map(|h| h.as_slice()), &mut self.file)?;
            }
            None => self.file.write_all(batch.plaintext())?,
        }
        Ok((self, batch))
    }
}

/// The sink is either free or busy with one batch on a blocking thread.
enum Stage {
    Ready(Box<Sink>),
    Busy(WriteJob),
}

impl Stage {
    /// The sink, once its batch (if any) is written; the written batch goes to `spare`.
    async fn ready(self, spare: &mut Option<Batch>) -> Result<Sink, BlobError> {
        match self {
            Stage::Ready(s) => Ok(*s),
            Stage::Busy(job) => {
                let (sink, batch) = join(job).await?;
                *spare = Some(batch);
                Ok(sink)
            }
        }
    }
}

async fn join<T>(job: tokio::task::JoinHandle<Result<T, BlobError>>) -> Result<T, BlobError> {
    job.await
        .map_err(|e| BlobError::Io(std::io::Error::other(e)))?
}

/// What a blob read still has to return.
enum Source {
    /// Plaintext blob: bytes left to read.
    Plain(u64),
    /// Encrypted blob: the segments of the planned range.
    Sealed(Box<SegmentReader>),
}

/// A blob read in progress (moved to a blocking thread for each batch).
struct Cursor {
    file: std::fs::File,
    source: Source,
}

impl Cursor {
    fn is_done(&self) -> bool {
        match &self.source {
            Source::Plain(left) => *left == 0,
            Source::Sealed(r) => r.is_done(),
        }
    }

    /// Read (and authenticate) the next batch; blocking.
    fn read_batch(mut self) -> Result<(Self, Bytes), std::io::Error> {
        let bytes = match &mut self.source {
            Source::Plain(left) => {
                let n = (*left).min(BATCH_BYTES as u64) as usize;
                let b = Batch::read_plain(n, &mut self.file)?;
                *left -= n as u64;
                b.into_bytes()
            }
            Source::Sealed(r) => r.read_next(&mut self.file)?,
        };
        Ok((self, bytes))
    }
}

type ReadJob = tokio::task::JoinHandle<Result<(Cursor, Bytes), std::io::Error>>;

enum ReadStage {
    Start(Box<Cursor>),
    Busy(ReadJob),
    Done,
}

fn spawn_read(c: Cursor) -> ReadJob {
    tokio::task::spawn_blocking(move || c.read_batch())
}

/// Next plaintext chunk of a blob read: await the batch in flight, start reading the one after
/// it, and return this one (empty batches, as of an empty part, are skipped).
async fn next_batch(mut stage: ReadStage) -> Result<Option<(Bytes, ReadStage)>, std::io::Error> {
    loop {
        let job = match stage {
            ReadStage::Done => return Ok(None),
            ReadStage::Start(c) => spawn_read(*c),
            ReadStage::Busy(job) => job,
        };
        let (cursor, bytes) = job.await.map_err(std::io::Error::other)??;
        stage = if cursor.is_done() {
            ReadStage::Done
        } else {
            ReadStage::Busy(spawn_read(cursor))
        };
        if !bytes.is_empty() {
            return Ok(Some((bytes, stage)));
        }
    }
}
