-- audit_log.hash loses its UNIQUE index. The chain is verified in id order and nothing looks a record up
-- by its hash, while the index on 64 random hex characters dirtied one random page per record.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_hash_key;
