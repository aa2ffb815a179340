//! coffer-storage: the S3-compatible storage node (placeholder while the S3 surface lands).

pub mod crypto;
