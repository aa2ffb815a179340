//! coffer-storage: the S3-compatible storage node. `s3/` is the protocol edge (s3s), `store/`
//! the durable metadata and blobs, `crypto/` the envelope encryption, `server` assembles and
//! serves them, `dev` runs the two-process system locally.

pub mod crypto;
pub mod dev;
mod error_body;
pub mod s3;
pub mod server;
pub mod state;
pub mod store;
