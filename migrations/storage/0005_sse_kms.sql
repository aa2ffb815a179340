-- SSE-KMS (issue 13): for objects and uploads whose sse_mode is 'sse-kms', a JSON document with
-- the canonical KMS key ARN, the data key's ciphertext blob (base64), the encryption context it
-- is bound to, whether the client sent that context, and whether the data key is a bucket key.
-- NULL for every other mode. Portable SQL.
ALTER TABLE objects ADD COLUMN sse_kms TEXT;
ALTER TABLE uploads ADD COLUMN sse_kms TEXT;
