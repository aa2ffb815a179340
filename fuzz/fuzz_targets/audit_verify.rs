//! The audit export verifier (`kms::audit::verify`): arbitrary JSON lines are checked against a
//! fixed public key. It never panics, and it never accepts an export that holds a record, since
//! no fuzzer input carries a checkpoint signed by that key.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[9; 32]).verifying_key();
    if let Ok(v) = coffer_kms::audit::verify::verify(data, &key) {
        assert_eq!(v.records, 0, "an unsigned export with records verified");
    }
});
