//! The only module that touches object files. A blob is one part's bytes (ciphertext when a
//! `PartCipher` is given): written to `tmp/`, fsynced, renamed into `blobs/`, and the directory
//! fsynced, before the caller commits the metadata row that references it. Reads stream a
//! plaintext range, decrypting only the segments that cover it.
//!
//! Secret: none stored; the `PartCipher` passed in holds the part key and is dropped (zeroized)
//! with the writer/reader. Atomic: a blob file either exists complete under `blobs/` or not at all.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::crypto::format::{self, Decryptor, Encryptor, HEADER_LEN, PartCipher};

/// Why a blob could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("request body: {0}")]
    Body(String),
    #[error("blob format: {0}")]
    Format(#[from] format::FormatError),
    #[error("body length {got} does not match Content-Length {want}")]
    LengthMismatch { got: u64, want: u64 },
}

/// A blob that is durable under `blobs/`.
pub struct WrittenBlob {
    pub file: String,
    pub size: u64,
    pub md5: [u8; 16],
}

/// Blob files under a data dir.
pub struct BlobStore {
    tmp: PathBuf,
    blobs: PathBuf,
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
        Ok(Self { tmp, blobs })
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

    /// Stream `body` into a new durable blob, encrypting when `cipher` is given. The MD5 is of
    /// the plaintext. `expected_len` (Content-Length) is enforced.
    pub async fn write<S, E>(
        &self,
        mut body: S,
        cipher: Option<PartCipher>,
        expected_len: Option<u64>,
        observe: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<WrittenBlob, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let tmp_path = self.tmp.join(&name);
        let mut guard = TmpGuard(Some(tmp_path.clone()));
        let mut file = tokio::fs::File::create(&tmp_path).await?;
        let mut md5 = Md5::new();
        let mut size = 0u64;
        let mut enc = cipher.map(Encryptor::new);
        let mut pending: Vec<u8> = Vec::with_capacity(1 << 20);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
            md5.update(&chunk);
            observe(&chunk);
            size += chunk.len() as u64;
            match enc.as_mut() {
                Some(e) => pending.extend(e.push(&chunk)?),
                None => pending.extend_from_slice(&chunk),
            }
            if pending.len() >= 1 << 20 {
                file.write_all(&pending).await?;
                pending.clear();
            }
        }
        if let Some(want) = expected_len
            && want != size
        {
            return Err(BlobError::LengthMismatch { got: size, want });
        }
        if let Some(e) = enc.take() {
            pending.extend(e.finish()?);
        }
        file.write_all(&pending).await?;
        file.sync_all().await?;
        drop(file);
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
            md5: md5.finalize().into(),
        })
    }

    /// The header of an encrypted blob (to build its `PartCipher`).
    pub async fn read_header(&self, file: &str) -> Result<[u8; HEADER_LEN], BlobError> {
        let mut f = tokio::fs::File::open(self.path(file)).await?;
        let mut h = [0u8; HEADER_LEN];
        f.read_exact(&mut h).await?;
        Ok(h)
    }

    /// Stream plaintext bytes `start..=end` (or the whole blob when `range` is `None`) of a blob
    /// holding `plain_len` plaintext bytes; decrypts when `cipher` is given. The file is opened
    /// here, before the caller answers, so a GET that has started keeps reading the version it
    /// resolved even if that version is overwritten or deleted meanwhile (the open descriptor
    /// keeps the unlinked file readable).
    pub async fn open_read(
        &self,
        file: &str,
        plain_len: u64,
        range: Option<(u64, u64)>,
        cipher: Option<PartCipher>,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, BlobError> {
        let (offset, len, dec) = match cipher {
            Some(c) => {
                let plan = match range {
                    Some((s, e)) => format::plan_range(plain_len, s, e),
                    None => format::plan_full(plain_len),
                };
                (
                    plan.file_offset,
                    plan.file_len,
                    Some(Decryptor::new(c, plain_len, &plan)),
                )
            }
            None => match range {
                Some((s, e)) => (s, (e + 1).saturating_sub(s), None),
                None => (0, plain_len, None),
            },
        };
        let mut f = tokio::fs::File::open(self.path(file)).await?;
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let st = ReadState {
            file: f,
            remaining: len,
            dec,
            done: false,
        };
        Ok(futures::stream::try_unfold(st, next_chunk))
    }

    /// Delete a blob file (after its metadata row is gone). Missing files are fine.
    pub async fn remove(&self, file: &str) {
        if let Err(e) = tokio::fs::remove_file(self.path(file)).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file, error = %e, "removing blob failed");
        }
    }
}

/// A blob read in progress.
struct ReadState {
    file: tokio::fs::File,
    remaining: u64,
    dec: Option<Decryptor>,
    done: bool,
}

/// Bytes read per step: four encrypted segments (a bounded buffer, whatever the object size).
const READ_CHUNK: u64 = 4 * (format::SEGMENT_SIZE + format::TAG_LEN) as u64;

async fn next_chunk(mut st: ReadState) -> Result<Option<(Bytes, ReadState)>, std::io::Error> {
    loop {
        if st.done {
            return Ok(None);
        }
        if st.remaining == 0 {
            st.done = true;
            let tail = match st.dec.take() {
                Some(d) => d.finish().map_err(std::io::Error::other)?,
                None => Vec::new(),
            };
            if tail.is_empty() {
                return Ok(None);
            }
            return Ok(Some((Bytes::from(tail), st)));
        }
        let want = st.remaining.min(READ_CHUNK) as usize;
        let mut buf = vec![0u8; want];
        st.file.read_exact(&mut buf).await?;
        st.remaining -= want as u64;
        let out = match st.dec.as_mut() {
            Some(d) => d.push(&buf).map_err(std::io::Error::other)?,
            None => buf,
        };
        if !out.is_empty() {
            return Ok(Some((Bytes::from(out), st)));
        }
    }
}
