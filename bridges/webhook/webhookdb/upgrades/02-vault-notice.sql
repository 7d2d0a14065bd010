-- v2 (compatible with v1+): Remember when a hook's owner was told its secrets cannot be opened
ALTER TABLE webhook_hook ADD COLUMN vault_notice_at BIGINT;
