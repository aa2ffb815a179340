-- SSE-S3 bucket key rotation (issue 13). `buckets.wrapped_key` holds the newest generation of the
-- bucket's data key, numbered `bk_generation`; `coffer-storage rotate-bucket-key` moves it here
-- and stores a new one. Objects and uploads record the generation that sealed their object key
-- (NULL: generation 1, i.e. rows written before this migration). Older generations stay here,
-- wrapped, and follow root key rotations like the newest. Portable SQL.
CREATE TABLE bucket_key_generations (
    bucket_id           TEXT    NOT NULL,
    generation          INTEGER NOT NULL,
    wrapped_key         BLOB    NOT NULL,
    wrapped_key_version INTEGER NOT NULL,
    created_ms          BIGINT  NOT NULL,
    PRIMARY KEY (bucket_id, generation)
);
ALTER TABLE buckets ADD COLUMN bk_generation INTEGER NOT NULL DEFAULT 1;
ALTER TABLE objects ADD COLUMN bk_generation INTEGER;
ALTER TABLE uploads ADD COLUMN bk_generation INTEGER;
