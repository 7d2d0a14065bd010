-- v7 (compatible with v4+): To-device events in the inbox

-- to_device marks an inbox row that holds a to-device event for the bot's device (end-to-end
-- encryption: room keys, key requests). Such rows have no room (room_id is empty) and no event
-- ID; the dispatcher handles them in one ordered lane of their own. An older binary reads them
-- as room events of no room and drops them; a room key lost that way is asked for again.
ALTER TABLE as_inbox ADD COLUMN to_device BOOLEAN NOT NULL DEFAULT false;
