-- coffer-kms schema v1. Append-only: later changes go in new files.

-- Root keys, each sealed (AES-KW) under the Argon2id passphrase key; the KDF parameters and salt
-- are stored with every sealed key so that unsealing needs nothing but the passphrase.
CREATE TABLE root_keys (
    version     INTEGER PRIMARY KEY,
    kdf_m_kib   INTEGER NOT NULL,
    kdf_t       INTEGER NOT NULL,
    kdf_p       INTEGER NOT NULL,
    kdf_salt    BLOB    NOT NULL,
    sealed_key  BLOB    NOT NULL,
    created_ms  INTEGER NOT NULL
);

-- The audit signing key (Ed25519 seed), sealed the same way; the public key in the clear.
CREATE TABLE audit_key (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    kdf_m_kib   INTEGER NOT NULL,
    kdf_t       INTEGER NOT NULL,
    kdf_p       INTEGER NOT NULL,
    kdf_salt    BLOB    NOT NULL,
    sealed_seed BLOB    NOT NULL,
    public_key  BLOB    NOT NULL
);

-- Identities: the admin and the service identities. Only public keys are stored.
CREATE TABLE identities (
    name        TEXT    PRIMARY KEY,
    kind        TEXT    NOT NULL CHECK (kind IN ('admin', 'service')),
    public_key  BLOB    NOT NULL,
    buckets     TEXT    NOT NULL,
    ops         TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
);

-- Every data key the KMS issued, with its current wrapping (re-wrapped after a root rotation).
CREATE TABLE data_keys (
    id          INTEGER PRIMARY KEY,
    bucket_id   TEXT    NOT NULL,
    cur_version INTEGER NOT NULL,
    cur_wrapped BLOB    NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE INDEX data_keys_by_version ON data_keys (cur_version, id);

-- Every wrapping ever handed out, by SHA-256(bucket, version, wrapped), to find the current one.
CREATE TABLE key_wrappings (
    lookup      BLOB    PRIMARY KEY,
    data_key_id INTEGER NOT NULL REFERENCES data_keys (id),
    version     INTEGER NOT NULL
);

-- The audit log: one hash-chained record per service call and admin action. `record` is the
-- exact JSON that was hashed; the other columns are copies for filtering.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    ts_ms       INTEGER NOT NULL,
    identity    TEXT    NOT NULL,
    operation   TEXT    NOT NULL,
    bucket_id   TEXT,
    result      TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    record      TEXT    NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (ts_ms);

-- Signed checkpoints over the chain head.
CREATE TABLE audit_checkpoints (
    seq         INTEGER PRIMARY KEY,
    checkpoint  TEXT    NOT NULL
);
