//! Envelope encryption for the storage node: the blob format ([`format`]), object-key
//! derivation and sealing ([`keys`]), the KMS client ([`kms_client`]) and the bucket-key cache
//! ([`key_cache`]). Only this module holds plaintext keys; the store sees sealed keys and
//! ciphertext. The hierarchy is described in `docs/design.md` ("Key hierarchy"), the SSE
//! behaviour in `docs/s3-encryption.md`, the byte layout in `docs/format.md`.

pub mod batch;
pub mod envelope;
pub mod format;
pub mod key_cache;
pub mod keys;
pub mod kms_client;
pub mod sse;
pub mod sse_kms;
