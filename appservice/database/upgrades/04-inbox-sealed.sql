-- v4 (compatible with v4+): Seal the inbox's event content
-- Sealed rows keep event_json empty, which an older binary would drop as undecodable: it must
-- not run against this schema. Rows written by an older binary stay in plaintext (event_sealed
-- NULL) until the service seals them at its next start.
-- only: postgres
ALTER TABLE as_inbox ADD COLUMN event_sealed BYTEA;
-- only: sqlite
ALTER TABLE as_inbox ADD COLUMN event_sealed BLOB;
