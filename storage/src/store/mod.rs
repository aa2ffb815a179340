//! The storage node's durable state: SQLite metadata ([`meta`]), version states ([`versions`]),
//! blob files ([`blobs`]), the "disk full" mark ([`disk`]), the start-up sweep ([`recovery`]), and the data path the S3 edge
//! calls ([`objects`]: write/read/publish/retire, taking an `Encryption`). Only `blobs` touches
//! object files. Nothing here stores keys: it keeps sealed object keys and ciphertext; an object
//! key is only borrowed for one request, as an opaque `crypto::format::PartSealer` (no key
//! bytes), through `objects::Encryption::Keyed`. What an
//! acknowledged write guarantees: `docs/design.md` ("Durability of the storage node") and
//! `docs/storage.md` ("Durability").

pub mod blobs;
pub mod blobs_s3;
pub mod bucket_keys;
pub mod conditions;
pub mod db;
pub mod disk;
pub mod meta;
pub mod objects;
pub mod recovery;
pub mod versions;

#[cfg(test)]
mod tests;
