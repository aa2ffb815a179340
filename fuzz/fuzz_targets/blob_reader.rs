//! The blob format reader (`crypto::format`): a valid blob of a fuzzer-chosen plaintext is
//! damaged by fuzzer-chosen edits (byte flips, truncation, appended bytes, a swapped header) and
//! read over a fuzzer-chosen range. The reader never panics and never returns a byte that is not
//! the plaintext's: it yields exactly the requested range or an error.
#![no_main]

use coffer_common::secret::SecretKey32;
use coffer_storage::crypto::format::{
    HEADER_LEN, PartCipher, SEGMENT_SIZE, SegmentReader, plan_full, plan_range, segment_count,
};
use libfuzzer_sys::fuzz_target;

fn seal(plain: &[u8]) -> Vec<u8> {
    let key = SecretKey32::from_bytes([7; 32]);
    let c = PartCipher::for_write(&key, 1);
    let mut blob = c.header_bytes().to_vec();
    let n = segment_count(plain.len() as u64);
    for i in 0..n {
        let from = (i as usize * SEGMENT_SIZE).min(plain.len());
        let to = (from + SEGMENT_SIZE).min(plain.len());
        let mut buf = plain[from..to].to_vec();
        let tag = c.seal_segment(i, i + 1 == n, &mut buf).unwrap_or_default();
        blob.extend_from_slice(&buf);
        blob.extend_from_slice(&tag);
    }
    blob
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], 0]) as usize % 200_000;
    let start = u32::from_le_bytes([data[3], data[4], data[5], 0]) as u64;
    let end = u32::from_le_bytes([data[6], data[7], data[8], 0]) as u64;
    let plain: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ data[9])
        .collect();
    let mut blob = seal(&plain);
    // Edits: (op, position, value) triples.
    for e in data[12..].chunks(4) {
        if e.len() < 4 || blob.is_empty() {
            break;
        }
        let pos = u16::from_le_bytes([e[1], e[2]]) as usize * 7 % blob.len();
        match e[0] % 4 {
            0 => blob[pos] ^= e[3] | 1,
            1 => blob.truncate(pos),
            2 => blob.extend_from_slice(&[e[3]; 17]),
            _ => {}
        }
    }
    let plain_len = len as u64;
    let (plan, want) = if plain_len == 0 {
        (plan_full(0), &plain[..])
    } else {
        let (s, e) = (start % plain_len, end % plain_len);
        let (s, e) = (s.min(e), s.max(e));
        (plan_range(plain_len, s, e), &plain[s as usize..=e as usize])
    };
    let key = SecretKey32::from_bytes([7; 32]);
    let Ok(c) = PartCipher::for_read(&key, 1, blob.get(..HEADER_LEN).unwrap_or_default()) else {
        return;
    };
    let mut input = blob.get(plan.file_offset as usize..).unwrap_or_default();
    let mut r = SegmentReader::new(c, plain_len, &plan);
    let mut out = Vec::new();
    while !r.is_done() {
        match r.read_next(&mut input) {
            Ok(b) => out.extend_from_slice(&b),
            Err(_) => return,
        }
        assert!(
            want.starts_with(&out),
            "reader returned bytes that are not the plaintext"
        );
    }
    assert_eq!(out, want);
});
