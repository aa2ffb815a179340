//! A batch: up to [`BATCH_SEGMENTS`] consecutive 64 KiB segments of one part, the unit in which
//! the blob store hashes, seals, writes, reads and opens object data (1 MiB at a time, on a
//! blocking thread, so the async workers only move bytes).
//!
//! The plaintext of a batch sits in one buffer whose start is 64-byte aligned, with the tags kept
//! apart: every segment starts aligned, ciphertext and tags reach the file through one vectored
//! write, and a read lands segments and tags in place through one vectored read, so no segment is
//! copied between the cipher and the file. Copies into the buffer start at an aligned
//! destination after a short head: on some CPUs (seen on this project's AMD EPYC machines) the
//! `rep movsb` that glibc's memcpy uses for 2 KiB..256 KiB runs 20x slower into a misaligned
//! destination (2 GB/s instead of 40 GB/s).
//!
//! Secret: plaintext while the batch is filled or after it is opened; no keys (the
//! [`PartCipher`] is borrowed). A batch that fails to open has its plaintext area zeroed.

use std::io::{IoSlice, IoSliceMut, Read, Write};

use bytes::Bytes;

use super::format::{FormatError, PartCipher, SEGMENT_SIZE, TAG_LEN};

/// Segments per batch (1 MiB of plaintext).
pub const BATCH_SEGMENTS: usize = 16;
/// Plaintext bytes of a full batch.
pub const BATCH_BYTES: usize = BATCH_SEGMENTS * SEGMENT_SIZE;
const ALIGN: usize = 64;

/// Consecutive segments of one part, starting at segment `first`.
pub struct Batch {
    buf: Vec<u8>,
    start: usize,
    cap: usize,
    len: usize,
    tags: [[u8; TAG_LEN]; BATCH_SEGMENTS],
    first: u64,
}

impl Batch {
    fn with_capacity(first: u64, cap: usize) -> Self {
        let buf = vec![0u8; cap + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        Self {
            buf,
            start,
            cap,
            len: 0,
            tags: [[0; TAG_LEN]; BATCH_SEGMENTS],
            first,
        }
    }

    /// A batch holding `len` bytes (at most a full batch) to be read into, from segment `first`.
    fn sized(first: u64, len: usize) -> Self {
        let len = len.min(BATCH_BYTES);
        let mut b = Self::with_capacity(first, len);
        b.len = len;
        b
    }

    /// An empty batch to fill with plaintext, starting at segment `first`.
    pub fn new(first: u64) -> Self {
        Self::with_capacity(first, BATCH_BYTES)
    }

    /// Empty this batch for reuse as the batch starting at segment `first`.
    pub fn reset(&mut self, first: u64) {
        self.len = 0;
        self.first = first;
    }

    /// Index of the first segment.
    pub fn first_segment(&self) -> u64 {
        self.first
    }

    /// No room left (1 MiB for a batch made by [`Batch::new`]).
    pub fn is_full(&self) -> bool {
        self.len == self.cap
    }

    /// The plaintext held (before sealing or after opening).
    pub fn plaintext(&self) -> &[u8] {
        self.buf
            .get(self.start..self.start + self.len)
            .unwrap_or_default()
    }

    /// Copy as much of `src` as fits; returns the number of bytes taken (0 only when full).
    pub fn fill(&mut self, src: &[u8]) -> usize {
        let n = (self.cap - self.len).min(src.len());
        let at = self.start + self.len;
        let (Some(dst), Some(src)) = (self.buf.get_mut(at..at + n), src.get(..n)) else {
            return 0;
        };
        let head = dst.as_ptr().align_offset(ALIGN).min(n);
        let (dst_head, dst_rest) = dst.split_at_mut(head);
        let (src_head, src_rest) = src.split_at(head);
        dst_head.copy_from_slice(src_head);
        dst_rest.copy_from_slice(src_rest);
        self.len += n;
        n
    }

    /// Segments in this batch: the plaintext cut at 64 KiB, and at least one (an empty part is
    /// one empty segment).
    fn segment_count(&self) -> usize {
        self.len.div_ceil(SEGMENT_SIZE).max(1)
    }

    fn area_mut(&mut self) -> (&mut [u8], &mut [[u8; TAG_LEN]; BATCH_SEGMENTS]) {
        let area = self
            .buf
            .get_mut(self.start..self.start + self.len)
            .unwrap_or_default();
        (area, &mut self.tags)
    }

    /// Encrypt every segment in place; `last` marks the batch holding the part's last segment.
    pub fn seal(&mut self, cipher: &PartCipher, last: bool) -> Result<(), FormatError> {
        let count = self.segment_count();
        let first = self.first;
        let (area, tags) = self.area_mut();
        if area.is_empty() {
            tags[0] = cipher.seal_segment(first, last, &mut [])?;
            return Ok(());
        }
        for (i, (seg, tag)) in area
            .chunks_mut(SEGMENT_SIZE)
            .zip(tags.iter_mut())
            .enumerate()
        {
            *tag = cipher.seal_segment(first + i as u64, last && i + 1 == count, seg)?;
        }
        Ok(())
    }

    /// Write the sealed segments (each followed by its tag), after `header` when given.
    pub fn write_sealed(&self, header: Option<&[u8]>, out: &mut impl Write) -> std::io::Result<()> {
        let mut slices = Vec::with_capacity(2 * BATCH_SEGMENTS + 1);
        slices.extend(header.map(IoSlice::new));
        let count = self.segment_count();
        let segs = self
            .plaintext()
            .chunks(SEGMENT_SIZE)
            .chain(std::iter::once(&[][..]));
        for (seg, tag) in segs.zip(self.tags.iter()).take(count) {
            slices.push(IoSlice::new(seg));
            slices.push(IoSlice::new(tag));
        }
        write_all_vectored(out, &mut slices)
    }

    /// Read `plain_len` bytes of sealed segments starting at segment `first` (ciphertext and
    /// tags, as written by [`Batch::write_sealed`]) from `input`.
    pub fn read_sealed(
        first: u64,
        plain_len: usize,
        input: &mut impl Read,
    ) -> std::io::Result<Self> {
        let mut b = Self::sized(first, plain_len);
        let count = b.segment_count();
        let (area, tags) = b.area_mut();
        let mut slices = Vec::with_capacity(2 * count);
        let segs = area
            .chunks_mut(SEGMENT_SIZE)
            .chain(std::iter::once(&mut [][..]));
        for (seg, tag) in segs.zip(tags.iter_mut()).take(count) {
            slices.push(IoSliceMut::new(seg));
            slices.push(IoSliceMut::new(tag));
        }
        read_exact_vectored(input, &mut slices)?;
        Ok(b)
    }

    /// Read `len` plaintext bytes (an unencrypted blob) from `input`.
    pub fn read_plain(len: usize, input: &mut impl Read) -> std::io::Result<Self> {
        let mut b = Self::sized(0, len);
        let (area, _) = b.area_mut();
        input.read_exact(area)?;
        Ok(b)
    }

    /// Authenticate and decrypt every segment in place; `part_segments` is the part's segment
    /// count (its last segment carries the last flag). On failure the plaintext area is zeroed.
    pub fn open(&mut self, cipher: &PartCipher, part_segments: u64) -> Result<(), FormatError> {
        let first = self.first;
        let count = self.segment_count();
        let (area, tags) = self.area_mut();
        let is_last = |i: usize| first + i as u64 + 1 == part_segments;
        let result = if area.is_empty() {
            cipher.open_segment(first, is_last(0), &mut [], &tags[0])
        } else {
            area.chunks_mut(SEGMENT_SIZE)
                .zip(tags.iter())
                .take(count)
                .enumerate()
                .try_for_each(|(i, (seg, tag))| {
                    cipher.open_segment(first + i as u64, is_last(i), seg, tag)
                })
        };
        if result.is_err() {
            area.fill(0);
        }
        result
    }

    /// The plaintext as shared bytes (no copy).
    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf).slice(self.start..self.start + self.len)
    }
}

/// `write_all` for a list of slices (one `writev` per call that the kernel takes whole).
fn write_all_vectored(out: &mut impl Write, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `read_exact` into a list of slices.
fn read_exact_vectored(
    input: &mut impl Read,
    mut slices: &mut [IoSliceMut<'_>],
) -> std::io::Result<()> {
    IoSliceMut::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match input.read_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => IoSliceMut::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
