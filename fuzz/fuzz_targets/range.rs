//! HTTP Range against an object size (`storage::s3::resolve_range`, after s3s's own parse) and
//! the segment plan the blob reader follows (`crypto::format::plan_range`): a resolved range
//! lies inside the object, and its plan covers exactly its bytes.
#![no_main]

use coffer_storage::crypto::format::{SEGMENT_SIZE, plan_range};
use coffer_storage::s3::resolve_range;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap_or_default()) % (1 << 40);
    let Ok(header) = std::str::from_utf8(&data[8..]) else {
        return;
    };
    let Ok(range) = s3s::dto::Range::parse(header) else {
        return;
    };
    let Ok((first, last)) = resolve_range(&range, size) else {
        return;
    };
    assert!(
        first <= last && last < size,
        "{header:?} on {size}: {first}-{last}"
    );
    let plan = plan_range(size, first, last);
    let seg = SEGMENT_SIZE as u64;
    assert_eq!(plan.first_segment, first / seg);
    assert_eq!(plan.last_segment, last / seg);
    assert_eq!(plan.take, last - first + 1);
    assert_eq!(plan.skip as u64, first % seg);
});
