-- v2 (compatible with v1+): Record the original event of an edit's messages and media links
-- An edit's irc_message and irc_media rows name the event it edits, so that redacting that
-- original removes them too (and with them the edit's media link).
ALTER TABLE irc_message ADD COLUMN original_event_id TEXT;
CREATE INDEX irc_message_original_idx ON irc_message (original_event_id);
ALTER TABLE irc_media ADD COLUMN original_event_id TEXT;
CREATE INDEX irc_media_original_idx ON irc_media (original_event_id);
