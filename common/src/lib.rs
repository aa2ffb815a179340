//! Shared pieces of Coffer's two processes: KMS wire types, secret key types, EdDSA JWTs,
//! credential files, the data dir lock, secret-file permission checks and logging setup.
//!
//! Nothing here does I/O on a request path except reading credential files at start-up.

pub mod config;
pub mod credential;
pub mod data_dir_lock;
pub mod jwt;
pub mod kms_api;
pub mod metrics;
pub mod secret;
pub mod secret_file;
pub mod server;
pub mod telemetry;
pub mod tls;
