-- The root key version of the wrapping a storage node last presented (unwrapped) for each data
-- key: `admin keys retire N` refuses while any data key's current or last presented wrapping is
-- under version N. Keys issued before this column existed count as holding the wrapping they
-- were issued with (the oldest one registered), which is the conservative guess.
ALTER TABLE data_keys ADD COLUMN presented_version INTEGER;
UPDATE data_keys SET presented_version =
    (SELECT MIN(w.version) FROM key_wrappings w WHERE w.data_key_id = data_keys.id);
CREATE INDEX data_keys_by_presented ON data_keys (presented_version);
