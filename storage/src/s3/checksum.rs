//! `x-amz-checksum-*` verification (CRC32, CRC32C, CRC64NVME, SHA-1, SHA-256), for values sent
//! as headers or as aws-chunked trailers, computed over the plaintext while it streams to the
//! blob store and checked before the metadata row is committed (mismatch: 400 BadDigest).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use sha1::Digest as _;

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
        "CRC32" => crc32fast::hash(&joined).to_be_bytes().to_vec(),
        "CRC32C" => crc32c::crc32c(&joined).to_be_bytes().to_vec(),
        "SHA1" => sha1::Sha1::digest(&joined).to_vec(),
        "SHA256" => sha2::Sha256::digest(&joined).to_vec(),
        _ => return None,
    };
    Some(format!("{}-{}", STANDARD.encode(sum), parts.len()))
}

/// Running checksums for the algorithms the request declared.
#[derive(Default)]
pub(crate) struct Checksums {
    crc32: Option<crc32fast::Hasher>,
    crc32c: Option<u32>,
    crc64: Option<crc64fast_nvme::Digest>,
    sha1: Option<sha1::Sha1>,
    sha256: Option<sha2::Sha256>,
}

fn declared(h: &HeaderMap, name: &str) -> bool {
    h.contains_key(name)
        || h.get("x-amz-trailer")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.split(',').any(|x| x.trim().eq_ignore_ascii_case(name)))
}

impl Checksums {
    /// Enable the algorithms named by checksum headers or by `x-amz-trailer`.
    pub(crate) fn for_request(h: &HeaderMap) -> Self {
        Self {
            crc32: declared(h, NAMES[0]).then(crc32fast::Hasher::new),
            crc32c: declared(h, NAMES[1]).then_some(0),
            crc64: declared(h, NAMES[2]).then(crc64fast_nvme::Digest::new),
            sha1: declared(h, NAMES[3]).then(sha1::Sha1::new),
            sha256: declared(h, NAMES[4]).then(sha2::Sha256::new),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        if let Some(c) = self.crc32.as_mut() {
            c.update(data);
        }
        if let Some(c) = self.crc32c.as_mut() {
            *c = crc32c::crc32c_append(*c, data);
        }
        if let Some(c) = self.crc64.as_mut() {
            c.write(data);
        }
        if let Some(c) = self.sha1.as_mut() {
            c.update(data);
        }
        if let Some(c) = self.sha256.as_mut() {
            c.update(data);
        }
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
        let computed: [(usize, Option<Vec<u8>>); 5] = [
            (0, self.crc32.map(|c| c.finalize().to_be_bytes().to_vec())),
            (1, self.crc32c.map(|c| c.to_be_bytes().to_vec())),
            (2, self.crc64.map(|c| c.sum64().to_be_bytes().to_vec())),
            (3, self.sha1.map(|c| c.finalize().to_vec())),
            (4, self.sha256.map(|c| c.finalize().to_vec())),
        ];
        for (i, value) in computed {
            let (Some(value), Some(name)) = (value, NAMES.get(i)) else {
                continue;
            };
            let sent = headers
                .get(*name)
                .or_else(|| trailers.and_then(|t| t.get(*name)))
                .and_then(|v| v.to_str().ok());
            let value = STANDARD.encode(&value);
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
}
