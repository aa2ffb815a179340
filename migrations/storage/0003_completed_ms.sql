-- When a multipart upload was completed. A completed upload's row is kept only so that a
-- repeated CompleteMultipartUpload answers the same result; the node prunes it a while after
-- this time (rows completed before this column existed have NULL and are pruned first).
-- Portable SQL.
ALTER TABLE uploads ADD COLUMN completed_ms BIGINT;
