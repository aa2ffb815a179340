//! Shared code of Coffer's integration tests and benchmark tool: a SigV4 signer ([`sigv4`]) and
//! process harnesses that boot the real daemons with temp dirs and ephemeral ports.

pub mod kms;
pub mod pg;
pub mod proc;
pub mod s3client;
pub mod sigv4;
pub mod storage;
