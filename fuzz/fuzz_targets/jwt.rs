//! KMS bearer tokens (`common::jwt`): any string is decoded and verified against a fixed key.
//! Nothing panics, and no token the fuzzer builds verifies (it cannot hold a valid Ed25519
//! signature by the key), whatever its header, claims or base64.
#![no_main]

use coffer_common::jwt;
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = jwt::peek_claims(token);
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let now = jwt::now_unix();
    let r = jwt::verify(
        token,
        &key,
        "coffer-kms-service",
        "POST",
        "/v1/keys/unwrap",
        now,
    );
    assert!(r.is_err(), "a fuzzer-made token verified");
});
