//! The encrypted blob format: one blob per object part, a 49-byte header, then the plaintext cut
//! into 64 KiB segments, each sealed with AES-256-GCM-SIV (RFC 8452).
//!
//! Secret: the part key inside [`PartCipher`] (derived from the object key, zeroized on drop).
//! Nothing here opens files: the blob store moves [`Batch`]es of segments between the request
//! body, the cipher and its files (see `batch.rs`), and [`SegmentReader`] turns a planned range
//! back into plaintext.
//!
//! Byte layout (all integers big-endian), documented with test vectors in `docs/format.md`:
//!
//! | offset | len | field |
//! |---|---|---|
//! | 0 | 4 | magic `CFOB` |
//! | 4 | 1 | format version `1` |
//! | 5 | 1 | algorithm `1` = AES-256-GCM-SIV |
//! | 6 | 4 | segment size (65536) |
//! | 10 | 32 | part salt |
//! | 42 | 7 | nonce prefix |
//!
//! Then segments `0..n`, `n = max(1, ceil(len / 65536))`; segment `i` is
//! `AES-256-GCM-SIV(part key, nonce = prefix | u32 i | last, aad = header, plaintext_i)` = the
//! plaintext bytes followed by a 16-byte tag. `last` is `0x01` on segment `n-1` and `0x00`
//! elsewhere; an empty part is one empty last segment (16 bytes). The part key is
//! `HKDF-SHA256(ikm = object key, salt = part salt, info = "part" | u32 part number)`.
//! Counter and last flag make reordering, truncation and extension detectable.

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use bytes::Bytes;
use coffer_common::secret::SecretKey32;
use rand::RngCore;

/// Plaintext bytes per segment.
pub const SEGMENT_SIZE: usize = 65536;
/// AES-GCM-SIV tag length.
pub const TAG_LEN: usize = 16;
/// Length of the blob header.
pub const HEADER_LEN: usize = 49;
/// Magic bytes at the start of every encrypted blob.
pub const MAGIC: &[u8; 4] = b"CFOB";
/// Format version written by this code.
pub const FORMAT_VERSION: u8 = 1;
/// Algorithm id of AES-256-GCM-SIV (2 is reserved for AES-256-GCM).
pub const ALG_AES256_GCM_SIV: u8 = 1;

const SEG_CIPHER: u64 = (SEGMENT_SIZE + TAG_LEN) as u64;

/// Why encrypted bytes could not be produced or accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The header is not a Coffer blob header this code understands.
    #[error("blob header is not recognised")]
    BadHeader,
    /// A segment failed authentication (tampered, reordered, wrong key).
    #[error("blob segment failed authentication")]
    Authentication,
    /// The blob ended before the expected segments, or had extra bytes.
    #[error("blob is truncated or has trailing bytes")]
    Truncated,
    /// Encryption itself failed (not expected with valid inputs).
    #[error("encryption failed")]
    Encrypt,
}

/// A part's cipher: the derived part key and the header it authenticates.
pub struct PartCipher {
    aead: Aes256GcmSiv,
    header: [u8; HEADER_LEN],
}

fn derive_part_key(object_key: &SecretKey32, salt: &[u8], part_number: u32) -> SecretKey32 {
    let mut info = Vec::with_capacity(8);
    info.extend_from_slice(b"part");
    info.extend_from_slice(&part_number.to_be_bytes());
    crate::crypto::keys::hkdf32(object_key, salt, &info)
}

/// An object key as the store layer holds it: an opaque handle that only makes [`PartCipher`]s,
/// so the key bytes never leave `crypto` (the store takes this, not a `SecretKey32`).
#[derive(Clone, Copy)]
pub struct PartSealer<'a>(&'a SecretKey32);

impl<'a> PartSealer<'a> {
    pub fn new(object_key: &'a SecretKey32) -> Self {
        Self(object_key)
    }

    /// See [`PartCipher::for_write`].
    pub fn for_write(self, part_number: u32) -> PartCipher {
        PartCipher::for_write(self.0, part_number)
    }

    /// See [`PartCipher::for_read`].
    pub fn for_read(self, part_number: u32, header: &[u8]) -> Result<PartCipher, FormatError> {
        PartCipher::for_read(self.0, part_number, header)
    }
}

impl<'a> From<Option<&'a SecretKey32>> for crate::store::objects::Encryption<'a> {
    fn from(k: Option<&'a SecretKey32>) -> Self {
        match k {
            Some(k) => Self::Keyed(PartSealer::new(k)),
            None => Self::None,
        }
    }
}

impl PartCipher {
    /// A cipher for writing a new part: fresh random salt and nonce prefix.
    pub fn for_write(object_key: &SecretKey32, part_number: u32) -> Self {
        let mut salt = [0u8; 32];
        let mut prefix = [0u8; 7];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut prefix);
        Self::with_parts(object_key, part_number, &salt, &prefix)
    }

    /// Deterministic constructor (test vectors).
    pub fn with_parts(
        object_key: &SecretKey32,
        part_number: u32,
        salt: &[u8; 32],
        prefix: &[u8; 7],
    ) -> Self {
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(MAGIC);
        header[4] = FORMAT_VERSION;
        header[5] = ALG_AES256_GCM_SIV;
        header[6..10].copy_from_slice(&(SEGMENT_SIZE as u32).to_be_bytes());
        header[10..42].copy_from_slice(salt);
        header[42..49].copy_from_slice(prefix);
        let key = derive_part_key(object_key, salt, part_number);
        let aead = Aes256GcmSiv::new(key.expose_secret().into());
        Self { aead, header }
    }

    /// A cipher for reading an existing part from its header bytes.
    pub fn for_read(
        object_key: &SecretKey32,
        part_number: u32,
        header: &[u8],
    ) -> Result<Self, FormatError> {
        let header: [u8; HEADER_LEN] = header.try_into().map_err(|_| FormatError::BadHeader)?;
        let ok = header.get(0..4) == Some(MAGIC.as_slice())
            && header[4] == FORMAT_VERSION
            && header[5] == ALG_AES256_GCM_SIV
            && header.get(6..10) == Some((SEGMENT_SIZE as u32).to_be_bytes().as_slice());
        if !ok {
            return Err(FormatError::BadHeader);
        }
        let key = derive_part_key(object_key, &header[10..42], part_number);
        let aead = Aes256GcmSiv::new(key.expose_secret().into());
        Ok(Self { aead, header })
    }

    /// The header bytes to write at the start of the blob.
    pub fn header_bytes(&self) -> [u8; HEADER_LEN] {
        self.header
    }

    fn nonce(&self, index: u64, last: bool) -> Result<[u8; 12], FormatError> {
        let index = u32::try_from(index).map_err(|_| FormatError::Truncated)?;
        let mut n = [0u8; 12];
        n[0..7].copy_from_slice(&self.header[42..49]);
        n[7..11].copy_from_slice(&index.to_be_bytes());
        n[11] = u8::from(last);
        Ok(n)
    }

    /// Seal one segment in place; returns its tag (stored after the ciphertext).
    pub fn seal_segment(
        &self,
        index: u64,
        last: bool,
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], FormatError> {
        let n = Nonce::from(self.nonce(index, last)?);
        self.aead
            .encrypt_inout_detached(&n, &self.header, buf.into())
            .map(Into::into)
            .map_err(|_| FormatError::Encrypt)
    }

    /// Open one segment in place against its tag. On failure the buffer holds no plaintext.
    pub fn open_segment(
        &self,
        index: u64,
        last: bool,
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), FormatError> {
        let n = Nonce::from(self.nonce(index, last)?);
        self.aead
            .decrypt_inout_detached(&n, &self.header, buf.into(), &Tag::from(*tag))
            .map_err(|_| FormatError::Authentication)
    }
}

/// Number of segments of a part of `plain_len` bytes (at least one).
pub fn segment_count(plain_len: u64) -> u64 {
    plain_len.div_ceil(SEGMENT_SIZE as u64).max(1)
}

/// Size on disk of an encrypted part of `plain_len` plaintext bytes.
pub fn encrypted_len(plain_len: u64) -> u64 {
    HEADER_LEN as u64 + plain_len + TAG_LEN as u64 * segment_count(plain_len)
}

/// Which part of an encrypted blob to read for a plaintext range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentPlan {
    pub first_segment: u64,
    pub last_segment: u64,
    /// Byte offset in the blob of the first segment to read.
    pub file_offset: u64,
    /// Plaintext bytes to drop from the start of the first segment.
    pub skip: usize,
    /// Plaintext bytes to return in total.
    pub take: u64,
}

/// Plan a read of plaintext bytes `start..=end_inclusive` (the caller has checked
/// `start <= end_inclusive < plain_len`).
pub fn plan_range(plain_len: u64, start: u64, end_inclusive: u64) -> SegmentPlan {
    let seg = SEGMENT_SIZE as u64;
    let first = start / seg;
    let last = (end_inclusive / seg).min(segment_count(plain_len) - 1);
    SegmentPlan {
        first_segment: first,
        last_segment: last,
        file_offset: HEADER_LEN as u64 + first * SEG_CIPHER,
        skip: (start - first * seg) as usize,
        take: end_inclusive.saturating_sub(start) + 1,
    }
}

/// Plan a read of a whole part (works for empty parts too).
pub fn plan_full(plain_len: u64) -> SegmentPlan {
    if plain_len == 0 {
        return SegmentPlan {
            first_segment: 0,
            last_segment: 0,
            file_offset: HEADER_LEN as u64,
            skip: 0,
            take: 0,
        };
    }
    plan_range(plain_len, 0, plain_len - 1)
}

/// Reads a planned range batch by batch (up to [`BATCH_SEGMENTS`] segments per read),
/// authenticating every segment before any of its bytes are returned.
pub struct SegmentReader {
    cipher: PartCipher,
    plain_len: u64,
    next: u64,
    last: u64,
    skip: usize,
    remaining: u64,
}

impl SegmentReader {
    pub fn new(cipher: PartCipher, plain_len: u64, plan: &SegmentPlan) -> Self {
        Self {
            cipher,
            plain_len,
            next: plan.first_segment,
            last: plan.last_segment,
            skip: plan.skip,
            remaining: plan.take,
        }
    }

    /// Whether every planned segment has been read.
    pub fn is_done(&self) -> bool {
        self.next > self.last
    }

    /// Read the next batch of segments from `input` (positioned at the first unread segment),
    /// authenticate them and return their plaintext trimmed to the planned range. Errors carry
    /// a [`FormatError`] (`io::Error::other`) when the bytes do not authenticate.
    pub fn read_next(&mut self, input: &mut impl std::io::Read) -> std::io::Result<Bytes> {
        if self.is_done() {
            return if self.remaining == 0 {
                Ok(Bytes::new())
            } else {
                Err(std::io::Error::other(FormatError::Truncated))
            };
        }
        let seg = SEGMENT_SIZE as u64;
        let count = (self.last - self.next + 1).min(BATCH_SEGMENTS as u64);
        let end = ((self.next + count) * seg).min(self.plain_len);
        let plain = end.saturating_sub(self.next * seg) as usize;
        let mut batch = Batch::read_sealed(self.next, plain, input)?;
        batch
            .open(&self.cipher, segment_count(self.plain_len))
            .map_err(std::io::Error::other)?;
        self.next += count;
        let bytes = batch.into_bytes();
        let start = self.skip.min(bytes.len());
        let n = ((bytes.len() - start) as u64).min(self.remaining) as usize;
        self.skip = 0;
        self.remaining -= n as u64;
        if self.is_done() && self.remaining != 0 {
            return Err(std::io::Error::other(FormatError::Truncated));
        }
        Ok(bytes.slice(start..start + n))
    }
}

pub use super::batch::{BATCH_BYTES, BATCH_SEGMENTS, Batch};

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
