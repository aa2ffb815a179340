-- coffer-kms schema v3: named KMS keys (SSE-KMS, issue 13).

-- One named key. `state`: Enabled, Disabled, PendingDeletion, Destroyed (the row stays after
-- destruction so that the id is never reused; its material rows are deleted).
CREATE TABLE kms_keys (
    key_id               TEXT    PRIMARY KEY,
    description          TEXT    NOT NULL,
    state                TEXT    NOT NULL
        CHECK (state IN ('Enabled', 'Disabled', 'PendingDeletion', 'Destroyed')),
    created_ms           INTEGER NOT NULL,
    current_version      INTEGER NOT NULL,
    -- Automatic rotation period in days (90-2560), NULL = off; `rotated_ms` is when the current
    -- version was made (the next automatic rotation is due a period after it).
    rotation_period_days INTEGER,
    rotated_ms           INTEGER NOT NULL,
    -- When a key pending deletion is destroyed.
    deletion_ms          INTEGER
);

-- Key material per version: 32 bytes sealed (AES-KW) under a KEK derived from root key version
-- `root_version`. Deleted when the key is destroyed.
CREATE TABLE kms_key_versions (
    key_id       TEXT    NOT NULL REFERENCES kms_keys (key_id),
    version      INTEGER NOT NULL,
    root_version INTEGER NOT NULL,
    sealed       BLOB    NOT NULL,
    created_ms   INTEGER NOT NULL,
    PRIMARY KEY (key_id, version)
);

-- Current aliases.
CREATE TABLE kms_aliases (
    alias      TEXT    PRIMARY KEY,
    key_id     TEXT    NOT NULL REFERENCES kms_keys (key_id),
    created_ms INTEGER NOT NULL
);
CREATE INDEX kms_aliases_by_key ON kms_aliases (key_id);

-- Every alias a key ever had (to tombstone them all when the key is destroyed).
CREATE TABLE kms_alias_history (
    alias  TEXT NOT NULL,
    key_id TEXT NOT NULL,
    PRIMARY KEY (alias, key_id)
);

-- Names (key ids and aliases) of destroyed keys: never reusable.
CREATE TABLE kms_tombstones (
    name         TEXT    PRIMARY KEY,
    key_id       TEXT    NOT NULL,
    destroyed_ms INTEGER NOT NULL
);

-- Data keys issued per (key, key version, bucket of the context's aws:s3:arn or '').
CREATE TABLE kms_data_key_counts (
    key_id      TEXT    NOT NULL,
    key_version INTEGER NOT NULL,
    bucket      TEXT    NOT NULL,
    data_keys   INTEGER NOT NULL,
    PRIMARY KEY (key_id, key_version, bucket)
);

-- Key scope of service identities (glob over key ids and aliases); '' = no key.
ALTER TABLE identities ADD COLUMN keys TEXT NOT NULL DEFAULT '';
