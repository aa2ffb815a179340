//! The storage node's durable state: SQLite metadata ([`meta`]) and blob files ([`blobs`]), plus
//! the start-up sweep ([`recovery`]). Only `blobs` touches object files. Nothing here holds keys:
//! it stores sealed object keys and ciphertext, and takes a `PartCipher` from the caller.

pub mod blobs;
pub mod meta;
pub mod recovery;
pub mod versions;

#[cfg(test)]
mod tests;
