//! The encrypted blob format: one blob per object part, a 49-byte header, then the plaintext cut
//! into 64 KiB segments, each sealed with AES-256-GCM-SIV (RFC 8452).
//!
//! Secret: the part key inside [`PartCipher`] (derived from the object key, zeroized on drop).
//! Nothing here does I/O; the blob store streams bytes through [`Encryptor`] and [`Decryptor`].
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

use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
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

    /// Seal one segment in place (appends the tag).
    pub fn seal_segment(
        &self,
        index: u64,
        last: bool,
        buf: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        let n = self.nonce(index, last)?;
        self.aead
            .encrypt_in_place(Nonce::from_slice(&n), &self.header, buf)
            .map_err(|_| FormatError::Encrypt)
    }

    /// Open one segment in place (checks and removes the tag).
    pub fn open_segment(
        &self,
        index: u64,
        last: bool,
        buf: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        let n = self.nonce(index, last)?;
        self.aead
            .decrypt_in_place(Nonce::from_slice(&n), &self.header, buf)
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

/// Streaming encryption of one part: push plaintext, write what comes out, then `finish`.
pub struct Encryptor {
    cipher: PartCipher,
    buf: Vec<u8>,
    index: u64,
    header_written: bool,
}

impl Encryptor {
    pub fn new(cipher: PartCipher) -> Self {
        Self {
            cipher,
            buf: Vec::with_capacity(SEGMENT_SIZE + TAG_LEN),
            index: 0,
            header_written: false,
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.header_written {
            out.extend_from_slice(&self.cipher.header);
            self.header_written = true;
        }
    }

    /// Accept plaintext; returns the ciphertext that is ready (header first time). A full
    /// segment is held back until more bytes arrive, since only then is it known not to be last.
    pub fn push(&mut self, mut plain: &[u8]) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        self.start(&mut out);
        while !plain.is_empty() {
            if self.buf.len() == SEGMENT_SIZE {
                self.cipher.seal_segment(self.index, false, &mut self.buf)?;
                out.extend_from_slice(&self.buf);
                self.buf.clear();
                self.index += 1;
            }
            let room = SEGMENT_SIZE - self.buf.len();
            let n = room.min(plain.len());
            let (now, rest) = plain.split_at(n);
            self.buf.extend_from_slice(now);
            plain = rest;
        }
        Ok(out)
    }

    /// Seal the last segment; returns the remaining ciphertext.
    pub fn finish(mut self) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        self.start(&mut out);
        self.cipher.seal_segment(self.index, true, &mut self.buf)?;
        out.extend_from_slice(&self.buf);
        Ok(out)
    }
}

/// Which part of an encrypted blob to read for a plaintext range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentPlan {
    pub first_segment: u64,
    pub last_segment: u64,
    /// Byte offset in the blob of the first segment to read.
    pub file_offset: u64,
    /// Bytes to read from `file_offset`.
    pub file_len: u64,
    /// Plaintext bytes to drop from the start of the first segment.
    pub skip: usize,
    /// Plaintext bytes to return in total.
    pub take: u64,
}

fn segment_cipher_len(plain_len: u64, index: u64) -> u64 {
    let n = segment_count(plain_len);
    if index + 1 < n {
        SEG_CIPHER
    } else {
        plain_len - index * SEGMENT_SIZE as u64 + TAG_LEN as u64
    }
}

/// Plan a read of plaintext bytes `start..=end_inclusive` (the caller has checked
/// `start <= end_inclusive < plain_len`).
pub fn plan_range(plain_len: u64, start: u64, end_inclusive: u64) -> SegmentPlan {
    let seg = SEGMENT_SIZE as u64;
    let first = start / seg;
    let last = (end_inclusive / seg).min(segment_count(plain_len) - 1);
    let file_len = (first..=last)
        .map(|i| segment_cipher_len(plain_len, i))
        .sum();
    SegmentPlan {
        first_segment: first,
        last_segment: last,
        file_offset: HEADER_LEN as u64 + first * SEG_CIPHER,
        file_len,
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
            file_len: TAG_LEN as u64,
            skip: 0,
            take: 0,
        };
    }
    plan_range(plain_len, 0, plain_len - 1)
}

/// Streaming decryption of a planned range: push ciphertext as read from `file_offset`, get
/// authenticated plaintext back. Never returns bytes of a segment that failed authentication.
pub struct Decryptor {
    cipher: PartCipher,
    plain_len: u64,
    next: u64,
    last: u64,
    skip: usize,
    remaining: u64,
    buf: Vec<u8>,
}

impl Decryptor {
    pub fn new(cipher: PartCipher, plain_len: u64, plan: &SegmentPlan) -> Self {
        Self {
            cipher,
            plain_len,
            next: plan.first_segment,
            last: plan.last_segment,
            skip: plan.skip,
            remaining: plan.take,
            buf: Vec::with_capacity(SEGMENT_SIZE + TAG_LEN),
        }
    }

    /// Accept ciphertext; returns the plaintext that authenticated, trimmed to the range.
    pub fn push(&mut self, mut cipher: &[u8]) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        while !cipher.is_empty() {
            if self.next > self.last {
                return Err(FormatError::Truncated);
            }
            let want = segment_cipher_len(self.plain_len, self.next) as usize;
            let n = (want - self.buf.len()).min(cipher.len());
            let (now, rest) = cipher.split_at(n);
            self.buf.extend_from_slice(now);
            cipher = rest;
            if self.buf.len() == want {
                self.open_current(&mut out)?;
            }
        }
        Ok(out)
    }

    fn open_current(&mut self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        let is_last = self.next + 1 == segment_count(self.plain_len);
        self.cipher
            .open_segment(self.next, is_last, &mut self.buf)?;
        let start = self.skip.min(self.buf.len());
        let avail = (self.buf.len() - start) as u64;
        let n = avail.min(self.remaining) as usize;
        out.extend_from_slice(self.buf.get(start..start + n).unwrap_or_default());
        self.remaining -= n as u64;
        self.skip = 0;
        self.buf.clear();
        self.next += 1;
        Ok(())
    }

    /// Check that the whole plan was read (returns no further bytes; kept symmetric with
    /// [`Encryptor::finish`]).
    pub fn finish(self) -> Result<Vec<u8>, FormatError> {
        if self.next <= self.last || !self.buf.is_empty() || self.remaining != 0 {
            return Err(FormatError::Truncated);
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
