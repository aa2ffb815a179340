//! `x-amz-checksum-*` verification (CRC32, CRC32C, CRC64NVME, SHA-1, SHA-256), for values sent
//! as headers or as aws-chunked trailers, computed over the plaintext while it streams to the
//! blob store and checked before the metadata row is committed (mismatch: 400 BadDigest).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Crc32, Crc32c, Crc64Nvme, Sha1, Sha256};

const NAMES: [&str; 5] = [
    "x-amz-checksum-crc32",
    "x-amz-checksum-crc32c",
    "x-amz-checksum-crc64nvme",
    "x-amz-checksum-sha1",
    "x-amz-checksum-sha256",
];

/// A multipart object's composite checksum, as AWS: the `algorithm` checksum of the
/// concatenated binary part checksums, base64, then `-N`. `None` when a part has no valid value
/// or the algorithm has no composite form (CRC64NVME is full-object only on AWS).
pub(crate) fn composite(algorithm: &str, parts: &[Option<&String>]) -> Option<String> {
    let mut joined = Vec::new();
    for p in parts {
        joined.extend(STANDARD.decode((*p)?.trim()).ok()?);
    }
    let sum: Vec<u8> = match algorithm.to_ascii_uppercase().as_str() {
        "CRC32" => Crc32::checksum(&joined).to_vec(),
        "CRC32C" => Crc32c::checksum(&joined).to_vec(),
        "SHA1" => Sha1::checksum(&joined).as_ref().to_vec(),
        "SHA256" => Sha256::checksum(&joined).as_ref().to_vec(),
        _ => return None,
    };
    Some(format!("{}-{}", STANDARD.encode(sum), parts.len()))
}

/// Running checksums for the algorithms the request declared (s3s's hasher, base64 digests).
#[derive(Default)]
pub(crate) struct Checksums(ChecksumHasher);

fn declared(h: &HeaderMap, name: &str) -> bool {
    h.contains_key(name)
        || h.get("x-amz-trailer")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.split(',').any(|x| x.trim().eq_ignore_ascii_case(name)))
}

impl Checksums {
    /// Enable the algorithms named by checksum headers or by `x-amz-trailer`.
    pub(crate) fn for_request(h: &HeaderMap) -> Self {
        Self(ChecksumHasher {
            crc32: declared(h, NAMES[0]).then(Crc32::default),
            crc32c: declared(h, NAMES[1]).then(Crc32c::default),
            crc64nvme: declared(h, NAMES[2]).then(Crc64Nvme::default),
            sha1: declared(h, NAMES[3]).then(Sha1::default),
            sha256: declared(h, NAMES[4]).then(Sha256::default),
        })
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// Compare with the values sent in headers or trailers; `Err(name)` names the first mismatch
    /// (a declared trailer that never arrived counts as a mismatch). `Ok` holds the verified
    /// values, `(header name, base64)`, to store and return.
    pub(crate) fn verify(
        self,
        headers: &HeaderMap,
        trailers: Option<&HeaderMap>,
    ) -> Result<Vec<(&'static str, String)>, &'static str> {
        let mut verified = Vec::new();
        let sums = self.0.finalize();
        let computed: [(usize, Option<String>); 5] = [
            (0, sums.checksum_crc32),
            (1, sums.checksum_crc32c),
            (2, sums.checksum_crc64nvme),
            (3, sums.checksum_sha1),
            (4, sums.checksum_sha256),
        ];
        for (i, value) in computed {
            let (Some(value), Some(name)) = (value, NAMES.get(i)) else {
                continue;
            };
            let sent = headers
                .get(*name)
                .or_else(|| trailers.and_then(|t| t.get(*name)))
                .and_then(|v| v.to_str().ok());
            if sent.map(str::trim) != Some(value.as_str()) {
                return Err(name);
            }
            verified.push((*name, value));
        }
        Ok(verified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha1::Digest as _;

    #[test]
    fn composite_is_the_checksum_of_the_part_checksums() {
        // SHA-256 of the two decoded part checksums, then -2.
        let a = STANDARD.encode(sha2::Sha256::digest(b"a"));
        let b = STANDARD.encode(sha2::Sha256::digest(b"b"));
        let mut joined = sha2::Sha256::digest(b"a").to_vec();
        joined.extend(sha2::Sha256::digest(b"b"));
        let want = format!("{}-2", STANDARD.encode(sha2::Sha256::digest(&joined)));
        assert_eq!(composite("SHA256", &[Some(&a), Some(&b)]), Some(want));
        assert_eq!(composite("SHA256", &[Some(&a), None]), None);
        assert_eq!(composite("CRC64NVME", &[Some(&a)]), None);
    }

    #[test]
    fn known_values_verify_and_mismatch_is_named() {
        let mut h = HeaderMap::new();
        // CRC32("hello") = 0x3610a686, SHA-256("hello") = 2cf24d...
        h.insert(
            "x-amz-checksum-crc32",
            http::HeaderValue::from_static("NhCmhg=="),
        );
        h.insert(
            "x-amz-checksum-sha256",
            http::HeaderValue::from_static("LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="),
        );
        let mut c = Checksums::for_request(&h);
        c.update(b"hel");
        c.update(b"lo");
        assert_eq!(
            c.verify(&h, None),
            Ok(vec![
                ("x-amz-checksum-crc32", "NhCmhg==".to_string()),
                (
                    "x-amz-checksum-sha256",
                    "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=".to_string()
                )
            ])
        );
        let mut c = Checksums::for_request(&h);
        c.update(b"hellO");
        assert_eq!(c.verify(&h, None), Err("x-amz-checksum-crc32"));
        let mut t = HeaderMap::new();
        t.insert(
            "x-amz-trailer",
            http::HeaderValue::from_static("x-amz-checksum-crc32c"),
        );
        let c = Checksums::for_request(&t);
        assert_eq!(
            c.verify(&t, None),
            Err("x-amz-checksum-crc32c"),
            "a missing trailer is a mismatch"
        );
    }

    #[test]
    fn s3s_hasher_matches_the_reference_crates() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let mut crc64 = crc64fast_nvme::Digest::new();
        crc64.write(&data);
        let mut h = HeaderMap::new();
        for (name, v) in [
            (NAMES[0], b64(&crc32fast::hash(&data).to_be_bytes())),
            (NAMES[1], b64(&crc32c::crc32c(&data).to_be_bytes())),
            (NAMES[2], b64(&crc64.sum64().to_be_bytes())),
            (NAMES[3], b64(&sha1::Sha1::digest(&data))),
            (NAMES[4], b64(&sha2::Sha256::digest(&data))),
        ] {
            h.insert(name, http::HeaderValue::from_str(&v).unwrap());
        }
        let mut c = Checksums::for_request(&h);
        for chunk in data.chunks(7_000) {
            c.update(chunk);
        }
        assert_eq!(c.verify(&h, None).map(|v| v.len()), Ok(5));
    }
}
