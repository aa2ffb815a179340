//! Tests of the blob format: round trips at segment boundaries, ranges, tampering, truncation,
//! and the published test vector (docs/format.md).

use super::*;
use sha2::{Digest, Sha256};

fn ok_key() -> SecretKey32 {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    SecretKey32::from_bytes(k)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// Encrypt like the blob store: fill batches chunk by chunk, seal a full batch only once more
/// bytes arrive, seal the final batch as last.
fn encrypt_with(c: PartCipher, plain: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut header = Some(c.header_bytes());
    let mut batch = Batch::new(0);
    for piece in plain.chunks(chunk.max(1)) {
        let mut rest = piece;
        while !rest.is_empty() {
            if batch.is_full() {
                batch.seal(&c, false).unwrap();
                batch
                    .write_sealed(header.take().as_ref().map(|h| &h[..]), &mut out)
                    .unwrap();
                batch.reset(batch.first_segment() + BATCH_SEGMENTS as u64);
            }
            let n = batch.fill(rest);
            rest = &rest[n..];
        }
    }
    batch.seal(&c, true).unwrap();
    batch
        .write_sealed(header.take().as_ref().map(|h| &h[..]), &mut out)
        .unwrap();
    out
}

fn encrypt(plain: &[u8], chunk: usize) -> (Vec<u8>, [u8; HEADER_LEN]) {
    let c = PartCipher::for_write(&ok_key(), 3);
    let header = c.header_bytes();
    (encrypt_with(c, plain, chunk), header)
}

fn format_error(e: std::io::Error) -> FormatError {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<FormatError>())
        .copied()
        .unwrap_or(FormatError::Truncated)
}

/// Decrypt a range like the blob store, with `c` over the blob's bytes from the plan's offset.
fn read_range_with(
    c: PartCipher,
    blob: &[u8],
    len: u64,
    plan: &SegmentPlan,
) -> Result<Vec<u8>, FormatError> {
    let mut input = blob.get(plan.file_offset as usize..).unwrap_or_default();
    let mut r = SegmentReader::new(c, len, plan);
    let mut out = Vec::new();
    while !r.is_done() {
        out.extend_from_slice(&r.read_next(&mut input).map_err(format_error)?);
    }
    Ok(out)
}

fn decrypt_range(blob: &[u8], len: u64, start: u64, end: u64) -> Result<Vec<u8>, FormatError> {
    let c = PartCipher::for_read(&ok_key(), 3, &blob[..HEADER_LEN])?;
    let plan = if len == 0 {
        plan_full(0)
    } else {
        plan_range(len, start, end)
    };
    read_range_with(c, blob, len, &plan)
}

#[test]
fn round_trip_at_segment_boundaries() {
    for len in [
        0usize,
        1,
        65535,
        65536,
        65537,
        2 * 65536,
        5 * 1024 * 1024 + 1,
    ] {
        let plain = pattern(len);
        for chunk in [1000usize, 65536, 70001] {
            let (blob, _) = encrypt(&plain, chunk);
            assert_eq!(blob.len() as u64, encrypted_len(len as u64), "len {len}");
            let back = decrypt_range(&blob, len as u64, 0, (len as u64).saturating_sub(1)).unwrap();
            assert_eq!(back, plain, "len {len} chunk {chunk}");
        }
    }
}

#[test]
fn ranges_crossing_segments() {
    let len = 3 * 65536 + 123;
    let plain = pattern(len);
    let (blob, _) = encrypt(&plain, 9999);
    let cases = [
        (0u64, 0u64),
        (65535, 65536),
        (65530, 131080),
        (131072, 131072),
        (len as u64 - 1, len as u64 - 1),
        (5, len as u64 - 1),
    ];
    for (s, e) in cases {
        let got = decrypt_range(&blob, len as u64, s, e).unwrap();
        assert_eq!(got, &plain[s as usize..=e as usize], "range {s}-{e}");
    }
}

#[test]
fn ranges_crossing_batches() {
    let batch = (BATCH_SEGMENTS * SEGMENT_SIZE) as u64;
    let len = 2 * batch + 65_536 * 3 + 5;
    let plain = pattern(len as usize);
    let (blob, _) = encrypt(&plain, 100_003);
    assert_eq!(blob.len() as u64, encrypted_len(len));
    let cases = [
        (batch - 1, batch),
        (batch - 70_000, 2 * batch + 70_000),
        (2 * batch, 2 * batch),
        (batch + 65_535, len - 1),
        (0, len - 1),
    ];
    for (s, e) in cases {
        let got = decrypt_range(&blob, len, s, e).unwrap();
        assert_eq!(got, &plain[s as usize..=e as usize], "range {s}-{e}");
    }
}

#[test]
fn tampering_truncation_and_wrong_key_fail() {
    let plain = pattern(200_000);
    let (blob, _) = encrypt(&plain, 65536);
    for pos in [
        0usize,
        5,
        20,
        45,
        HEADER_LEN + 3,
        HEADER_LEN + 65536 + 16 + 2,
        blob.len() - 1,
    ] {
        let mut bad = blob.clone();
        bad[pos] ^= 0x01;
        assert!(
            decrypt_range(&bad, 200_000, 0, 199_999).is_err(),
            "flip at {pos}"
        );
    }
    // Dropping the final segment and claiming a shorter length fails (last flag).
    let short_len = 3 * 65536u64;
    let cut = &blob[..HEADER_LEN + 3 * (65536 + 16)];
    assert!(decrypt_range(cut, short_len, 0, short_len - 1).is_err());
    // Swapping two full segments fails (counter).
    let mut swapped = blob.clone();
    let s = 65536 + 16;
    let (a, b) = (HEADER_LEN, HEADER_LEN + s);
    let seg0 = blob[a..a + s].to_vec();
    swapped[a..a + s].copy_from_slice(&blob[b..b + s]);
    swapped[b..b + s].copy_from_slice(&seg0);
    assert!(decrypt_range(&swapped, 200_000, 0, 199_999).is_err());
    // Wrong object key.
    let plan = plan_full(200_000);
    let c =
        PartCipher::for_read(&SecretKey32::from_bytes([9; 32]), 3, &blob[..HEADER_LEN]).unwrap();
    assert_eq!(
        read_range_with(c, &blob, 200_000, &plan).err(),
        Some(FormatError::Authentication)
    );
    // Wrong part number.
    let c = PartCipher::for_read(&ok_key(), 4, &blob[..HEADER_LEN]).unwrap();
    assert!(read_range_with(c, &blob, 200_000, &plan).is_err());
    // Truncated blob: the input ends inside a segment.
    let c = PartCipher::for_read(&ok_key(), 3, &blob[..HEADER_LEN]).unwrap();
    assert!(read_range_with(c, &blob[..HEADER_LEN + 1000], 200_000, &plan).is_err());
    // A failed batch returns nothing, and its buffer holds no plaintext.
    let mut bad = blob.clone();
    bad[HEADER_LEN + 70_000] ^= 1;
    let c = PartCipher::for_read(&ok_key(), 3, &bad[..HEADER_LEN]).unwrap();
    let mut input = &bad[HEADER_LEN..];
    let mut b = Batch::read_sealed(0, 200_000, &mut input).unwrap();
    assert_eq!(b.open(&c, 4), Err(FormatError::Authentication));
    assert!(b.plaintext().iter().all(|&x| x == 0));
}

#[test]
fn batch_copies_are_exact_at_any_alignment() {
    let plain = pattern(BATCH_SEGMENTS * SEGMENT_SIZE + 1000);
    for chunk in [1usize, 63, 64, 65, 4095, 65_552] {
        let mut b = Batch::new(0);
        let mut got = Vec::new();
        let mut rest = &plain[..];
        while !rest.is_empty() {
            if b.is_full() {
                got.extend_from_slice(b.plaintext());
                b.reset(1);
            }
            let take = chunk.min(rest.len());
            let n = b.fill(&rest[..take]);
            rest = &rest[n..];
        }
        got.extend_from_slice(b.plaintext());
        assert_eq!(got, plain, "chunk {chunk}");
    }
}

/// The vector published in docs/format.md: object key 00..1f, part 1, salt 32×0x11, nonce
/// prefix 7×0x22, plaintext = 70000 bytes of `i*31 % 251`.
#[test]
fn published_test_vector() {
    let c = PartCipher::with_parts(&ok_key(), 1, &[0x11; 32], &[0x22; 7]);
    let blob = encrypt_with(c, &pattern(70000), 70000);
    assert_eq!(blob.len(), 49 + 70000 + 32);
    assert_eq!(hex::encode(&blob[..49]), VECTOR_HEADER_HEX);
    assert_eq!(hex::encode(&blob[blob.len() - 16..]), VECTOR_LAST_TAG_HEX);
    assert_eq!(hex::encode(Sha256::digest(&blob)), VECTOR_BLOB_SHA256);
    let pk = derive_part_key(&ok_key(), &[0x11; 32], 1);
    assert_eq!(hex::encode(pk.expose_secret()), VECTOR_PART_KEY_HEX);
}

const VECTOR_HEADER_HEX: &str = "43464f42010100010000111111111111111111111111111111111111111111111111111111111111111122222222222222";
const VECTOR_LAST_TAG_HEX: &str = "c7c49d8b6836aa5ec55ed4ff3b949443";
const VECTOR_BLOB_SHA256: &str = "c89f49132bbd0faa72a7520245e992a5db6dd69923f0ffb219b454220f654325";
const VECTOR_PART_KEY_HEX: &str =
    "5a44c8cb20df1508b4fbdd5a0dcee2a06278bba0918166ec5f60c57eeaaa62fd";
