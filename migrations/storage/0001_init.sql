-- coffer-storage schema v1. Append-only: later changes go in new files. Portable SQL (SQLite now,
-- Postgres later): no SQLite-only types or functions.

-- Buckets. `id` is the internal id the KMS and the key derivations bind to; the data key is
-- stored only wrapped (with the KMS root key version that wrapped it).
CREATE TABLE buckets (
    name                TEXT    PRIMARY KEY,
    id                  TEXT    NOT NULL UNIQUE,
    created_ms          BIGINT  NOT NULL,
    wrapped_key         BLOB,
    wrapped_key_version INTEGER,
    encryption_config   TEXT
);

-- Complete, visible object versions (one per key: buckets are unversioned).
CREATE TABLE objects (
    bucket           TEXT    NOT NULL,
    key              TEXT    NOT NULL,
    version_id       TEXT    NOT NULL UNIQUE,
    size             BIGINT  NOT NULL,
    etag             TEXT    NOT NULL,
    content_type     TEXT,
    headers          TEXT    NOT NULL,
    metadata         TEXT    NOT NULL,
    last_modified_ms BIGINT  NOT NULL,
    sse_mode         TEXT    NOT NULL,
    seal_salt        BLOB,
    sealed_key       BLOB,
    part_count       INTEGER NOT NULL,
    multipart        INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
);

-- Blob files, one per part, owned by an object version or by a multipart upload.
CREATE TABLE blobs (
    owner       TEXT    NOT NULL,
    part_number INTEGER NOT NULL,
    size        BIGINT  NOT NULL,
    etag        TEXT    NOT NULL,
    file        TEXT    NOT NULL UNIQUE,
    created_ms  BIGINT  NOT NULL,
    PRIMARY KEY (owner, part_number)
);

-- Multipart uploads in progress (or completed, kept so a repeated Complete succeeds).
CREATE TABLE uploads (
    upload_id      TEXT    PRIMARY KEY,
    bucket         TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    version_id     TEXT    NOT NULL UNIQUE,
    created_ms     BIGINT  NOT NULL,
    content_type   TEXT,
    headers        TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    sse_mode       TEXT    NOT NULL,
    seal_salt      BLOB,
    sealed_key     BLOB,
    completed_etag TEXT
);
