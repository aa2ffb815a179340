-- A part's x-amz-checksum-* values verified on upload (issue 11 E21): JSON map of algorithm to
-- base64, as the object's content headers keep them; NULL when none was sent. A completed
-- multipart object's composite checksum is computed from these. Portable SQL.
ALTER TABLE blobs ADD COLUMN checksums TEXT;
