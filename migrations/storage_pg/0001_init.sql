-- coffer-storage schema on PostgreSQL (issue 14): the SQLite schema of migrations/storage/
-- 0001..0006 in one file. Append-only from here: later changes go in new files, in both
-- directories. Same tables, columns and meanings as the SQLite schema (see the comments there);
-- only the types differ: every integer is BIGINT (decoded as i64 on both backends), every blob
-- BYTEA, and every text column that is compared, ordered or listed by (bucket names, keys,
-- upload, version and bucket ids, blob file names) is COLLATE "C", so that listings and
-- pagination are in UTF-8 byte order, as in S3 and as SQLite's BINARY collation, whatever the
-- database's default collation is.

CREATE TABLE buckets (
    name                TEXT COLLATE "C" PRIMARY KEY,
    id                  TEXT COLLATE "C" NOT NULL UNIQUE,
    created_ms          BIGINT NOT NULL,
    wrapped_key         BYTEA,
    wrapped_key_version BIGINT,
    encryption_config   TEXT,
    bk_generation       BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE objects (
    bucket           TEXT COLLATE "C" NOT NULL,
    key              TEXT COLLATE "C" NOT NULL,
    version_id       TEXT COLLATE "C" NOT NULL UNIQUE,
    size             BIGINT NOT NULL,
    etag             TEXT NOT NULL,
    content_type     TEXT,
    headers          TEXT NOT NULL,
    metadata         TEXT NOT NULL,
    last_modified_ms BIGINT NOT NULL,
    sse_mode         TEXT NOT NULL,
    seal_salt        BYTEA,
    sealed_key       BYTEA,
    part_count       BIGINT NOT NULL,
    multipart        BIGINT NOT NULL,
    sse_kms          TEXT,
    bk_generation    BIGINT,
    PRIMARY KEY (bucket, key)
);

CREATE TABLE blobs (
    owner       TEXT COLLATE "C" NOT NULL,
    part_number BIGINT NOT NULL,
    size        BIGINT NOT NULL,
    etag        TEXT NOT NULL,
    file        TEXT COLLATE "C" NOT NULL UNIQUE,
    created_ms  BIGINT NOT NULL,
    checksums   TEXT,
    PRIMARY KEY (owner, part_number)
);

CREATE TABLE uploads (
    upload_id      TEXT COLLATE "C" PRIMARY KEY,
    bucket         TEXT COLLATE "C" NOT NULL,
    key            TEXT COLLATE "C" NOT NULL,
    version_id     TEXT COLLATE "C" NOT NULL UNIQUE,
    created_ms     BIGINT NOT NULL,
    content_type   TEXT,
    headers        TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    sse_mode       TEXT NOT NULL,
    seal_salt      BYTEA,
    sealed_key     BYTEA,
    completed_etag TEXT,
    completed_ms   BIGINT,
    sse_kms        TEXT,
    bk_generation  BIGINT
);

CREATE TABLE versions (
    version_id  TEXT COLLATE "C" PRIMARY KEY,
    bucket      TEXT COLLATE "C" NOT NULL,
    key         TEXT COLLATE "C" NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('writing', 'complete', 'aborted')),
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL
);

CREATE INDEX versions_by_state ON versions (state);

CREATE TABLE bucket_key_generations (
    bucket_id           TEXT COLLATE "C" NOT NULL,
    generation          BIGINT NOT NULL,
    wrapped_key         BYTEA NOT NULL,
    wrapped_key_version BIGINT NOT NULL,
    created_ms          BIGINT NOT NULL,
    PRIMARY KEY (bucket_id, generation)
);
