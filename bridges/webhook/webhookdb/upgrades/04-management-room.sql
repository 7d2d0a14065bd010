-- v4 (compatible with v4+): Move the secrets rooms to the core's management rooms
-- The bot now reaches a user privately only through the core (Host.NotifyUser), which keeps the
-- room on users.management_room (core schema v6; the core's migrations run before any
-- bridge's). A user who has no management room yet gets the one the bridge used; then the
-- bridge's table goes.
UPDATE users SET management_room = (SELECT room_id FROM webhook_dm WHERE webhook_dm.user_mxid = users.mxid)
WHERE management_room IS NULL AND mxid IN (SELECT user_mxid FROM webhook_dm);
DROP TABLE webhook_dm;
