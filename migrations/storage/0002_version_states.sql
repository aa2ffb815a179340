-- Object version states. A version is 'writing' from before its first blob byte is written
-- until the transaction that publishes it ('complete'), or 'aborted' when the write fails, the
-- client goes away, or the node restarts with the write unfinished. Only complete versions are
-- visible: the `objects` table holds exactly the complete, current ones. A multipart upload's
-- version stays 'writing' while the upload is live. Portable SQL.
CREATE TABLE versions (
    version_id  TEXT    PRIMARY KEY,
    bucket      TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('writing', 'complete', 'aborted')),
    created_ms  BIGINT  NOT NULL,
    updated_ms  BIGINT  NOT NULL
);

CREATE INDEX versions_by_state ON versions (state);

INSERT INTO versions (version_id, bucket, key, state, created_ms, updated_ms)
    SELECT version_id, bucket, key, 'complete', last_modified_ms, last_modified_ms FROM objects;

INSERT INTO versions (version_id, bucket, key, state, created_ms, updated_ms)
    SELECT version_id, bucket, key, 'writing', created_ms, created_ms FROM uploads
    WHERE completed_etag IS NULL;
