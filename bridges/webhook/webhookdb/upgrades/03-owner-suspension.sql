-- v3 (compatible with v3+): Suspend outbound hooks whose owner lost the right to them
ALTER TABLE webhook_hook ADD COLUMN suspended_at BIGINT;
ALTER TABLE webhook_hook ADD COLUMN suspended_reason TEXT;
