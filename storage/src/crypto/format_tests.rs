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

fn encrypt(plain: &[u8], chunk: usize) -> (Vec<u8>, [u8; HEADER_LEN]) {
    let c = PartCipher::for_write(&ok_key(), 3);
    let header = c.header_bytes();
    let mut e = Encryptor::new(c);
    let mut out = Vec::new();
    for piece in plain.chunks(chunk.max(1)) {
        out.extend(e.push(piece).unwrap());
    }
    out.extend(e.finish().unwrap());
    (out, header)
}

fn decrypt_range(
    blob: &[u8],
    len: u64,
    start: u64,
    end: u64,
    chunk: usize,
) -> Result<Vec<u8>, FormatError> {
    let c = PartCipher::for_read(&ok_key(), 3, &blob[..HEADER_LEN])?;
    let plan = if len == 0 {
        plan_full(0)
    } else {
        plan_range(len, start, end)
    };
    let region = &blob[plan.file_offset as usize..(plan.file_offset + plan.file_len) as usize];
    let mut d = Decryptor::new(c, len, &plan);
    let mut out = Vec::new();
    for piece in region.chunks(chunk.max(1)) {
        out.extend(d.push(piece)?);
    }
    out.extend(d.finish()?);
    Ok(out)
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
            let back = decrypt_range(
                &blob,
                len as u64,
                0,
                (len as u64).saturating_sub(1),
                4096 + 7,
            )
            .unwrap();
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
        let got = decrypt_range(&blob, len as u64, s, e, 1500).unwrap();
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
            decrypt_range(&bad, 200_000, 0, 199_999, 65552).is_err(),
            "flip at {pos}"
        );
    }
    // Dropping the final segment and claiming a shorter length fails (last flag).
    let short_len = 3 * 65536u64;
    let cut = &blob[..HEADER_LEN + 3 * (65536 + 16)];
    assert!(decrypt_range(cut, short_len, 0, short_len - 1, 65552).is_err());
    // Swapping two full segments fails (counter).
    let mut swapped = blob.clone();
    let s = 65536 + 16;
    let (a, b) = (HEADER_LEN, HEADER_LEN + s);
    let seg0 = blob[a..a + s].to_vec();
    swapped[a..a + s].copy_from_slice(&blob[b..b + s]);
    swapped[b..b + s].copy_from_slice(&seg0);
    assert!(decrypt_range(&swapped, 200_000, 0, 199_999, 65552).is_err());
    // Wrong object key.
    let c =
        PartCipher::for_read(&SecretKey32::from_bytes([9; 32]), 3, &blob[..HEADER_LEN]).unwrap();
    let plan = plan_full(200_000);
    let mut d = Decryptor::new(c, 200_000, &plan);
    assert_eq!(
        d.push(&blob[HEADER_LEN..]).err(),
        Some(FormatError::Authentication)
    );
    // Wrong part number.
    let c = PartCipher::for_read(&ok_key(), 4, &blob[..HEADER_LEN]).unwrap();
    let mut d = Decryptor::new(c, 200_000, &plan);
    assert!(d.push(&blob[HEADER_LEN..]).is_err());
    // Truncated stream: finish without all bytes.
    let c = PartCipher::for_read(&ok_key(), 3, &blob[..HEADER_LEN]).unwrap();
    let mut d = Decryptor::new(c, 200_000, &plan);
    let _ = d.push(&blob[HEADER_LEN..HEADER_LEN + 1000]).unwrap();
    assert_eq!(d.finish().err(), Some(FormatError::Truncated));
}

/// The vector published in docs/format.md: object key 00..1f, part 1, salt 32×0x11, nonce
/// prefix 7×0x22, plaintext = 70000 bytes of `i*31 % 251`.
#[test]
fn published_test_vector() {
    let c = PartCipher::with_parts(&ok_key(), 1, &[0x11; 32], &[0x22; 7]);
    let mut e = Encryptor::new(c);
    let mut blob = e.push(&pattern(70000)).unwrap();
    blob.extend(e.finish().unwrap());
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
