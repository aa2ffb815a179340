//! KMS JSON bodies (`common::kms_api`): every request and response type of the service and admin
//! APIs is parsed from arbitrary bytes; a body that parses re-serializes and parses again to the
//! same JSON (no lossy or panicking field handling).
#![no_main]

use coffer_common::kms_api as api;
use libfuzzer_sys::fuzz_target;

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let once = serde_json::to_value(&v).unwrap_or_default();
        let again: T = match serde_json::from_value(once.clone()) {
            Ok(a) => a,
            Err(e) => panic!("re-parse failed: {e}"),
        };
        assert_eq!(serde_json::to_value(&again).unwrap_or_default(), once);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<api::GenerateDataKeyRequest>(data);
    round_trip::<api::UnwrapDataKeyRequest>(data);
    round_trip::<api::ErrorBody>(data);
    round_trip::<api::CreateClientRequest>(data);
    round_trip::<api::IssueClientCertRequest>(data);
    let _ = serde_json::from_slice::<api::GenerateDataKeyResponse>(data);
    let _ = serde_json::from_slice::<api::UnwrapDataKeyResponse>(data);
});
