-- v6 (compatible with v4+): Keep each user's management room on the users row

-- management_room is the room in which the bot tells the user things meant for them alone
-- (Host.NotifyUser): secrets, notices, export files. It is personal data like the rest of the
-- row: exported, and gone when the user is erased.
ALTER TABLE users ADD COLUMN management_room TEXT;
