package appservice

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"net/http"
	"slices"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// joinedMembersNow returns the joined members of roomID as the homeserver has them now. It reads
// /joined_members without touching the state cache, which may have been scrubbed by an erasure
// (see scrubStateCache) and must not learn erased users again from here.
func (svc *Service) joinedMembersNow(ctx context.Context, roomID id.RoomID) ([]id.UserID, error) {
	bot := svc.as.BotIntent()
	var resp mautrix.RespJoinedMembers
	url := bot.BuildClientURL("v3", "rooms", roomID, "joined_members")
	if _, err := bot.MakeRequest(ctx, http.MethodGet, url, nil, &resp); err != nil {
		return nil, fmt.Errorf("failed to fetch joined members: %w", err)
	}
	members := make([]id.UserID, 0, len(resp.Joined))
	for userID := range resp.Joined {
		members = append(members, userID)
	}
	return members, nil
}

// onlyBotAnd reports whether members, a room's joined members, are exactly the bot and user, or
// the bot alone when allowAlone is set. Anyone else, a real user or a ghost of any bridge, makes
// the room shared.
func (svc *Service) onlyBotAnd(members []id.UserID, user id.UserID, allowAlone bool) bool {
	return OnlyBotAnd(members, svc.as.BotMXID(), user, allowAlone)
}

// OnlyBotAnd reports whether members, a room's joined members, are exactly bot and user, or bot
// alone when allowAlone is set. Anyone else, a real user or a ghost of any bridge, makes the
// room shared. It is the one rule behind [Host.IsPrivateWith] and the erasure's choice of rooms
// to leave; test fakes call it too.
func OnlyBotAnd(members []id.UserID, bot, user id.UserID, allowAlone bool) bool {
	if !slices.Contains(members, bot) {
		return false
	}
	others := slices.DeleteFunc(slices.Clone(members), func(member id.UserID) bool { return member == bot })
	switch len(others) {
	case 0:
		return allowAlone
	case 1:
		return others[0] == user
	default:
		return false
	}
}

// IsPrivateWith implements [Host.IsPrivateWith].
func (bh *bridgeHost) IsPrivateWith(ctx context.Context, roomID id.RoomID, userID id.UserID) (bool, error) {
	members, err := bh.svc.joinedMembersNow(ctx, roomID)
	if err != nil {
		return false, err
	}
	return bh.svc.onlyBotAnd(members, userID, true), nil
}

// isDirectChat reports whether roomID is a direct chat between the bot and user: its joined
// members are exactly those two (invariant 9). A state cache that holds the room's full member
// list can only rule that out; a "yes" is always confirmed with the homeserver, so a missed join
// cannot turn a group room into a direct chat. A room found to be a direct chat with nobody is
// remembered as such ([directChats]) until its members change, so the messages of a group room
// cost no state cache reads and no homeserver request.
func (svc *Service) isDirectChat(ctx context.Context, roomID id.RoomID, user id.UserID) (bool, error) {
	notDirect, token := svc.directChats.lookup(roomID, svc.now())
	if notDirect {
		return false, nil
	}
	with, err := svc.directChatWith(ctx, roomID)
	if err != nil {
		return false, err
	}
	if with == "" {
		svc.directChats.store(roomID, token, svc.now())
	}
	return with == user, nil
}

// directChatWith returns the user with whom roomID is a direct chat, by isDirectChat's rule, or
// "" if it is none.
func (svc *Service) directChatWith(ctx context.Context, roomID id.RoomID) (id.UserID, error) {
	if fetched, err := svc.stateStore.HasFetchedMembers(ctx, roomID); err == nil && fetched {
		cached, err := svc.stateStore.GetRoomMembers(ctx, roomID, event.MembershipJoin)
		if err == nil && directChatPartner(maps.Keys(cached), svc.as.BotMXID()) == "" {
			return "", nil
		}
	}
	members, err := svc.joinedMembersNow(ctx, roomID)
	if err != nil {
		return "", err
	}
	return directChatPartner(slices.Values(members), svc.as.BotMXID()), nil
}

// directChatPartner returns the one member other than bot if members are exactly bot and that
// member ([OnlyBotAnd] without allowAlone), "" otherwise.
func directChatPartner(members iter.Seq[id.UserID], bot id.UserID) id.UserID {
	var list []id.UserID
	for member := range members {
		list = append(list, member)
	}
	for _, member := range list {
		if member != bot && OnlyBotAnd(list, bot, member, false) {
			return member
		}
	}
	return ""
}

// privateRoomsOf returns the rooms that belong to user alone among people: rooms whose joined
// members, read fresh from the homeserver, are exactly the bot and user, or the bot alone after
// user left. Those are the rooms an erasure of user leaves, read before the erasure's
// transaction clears the state cache and the users row; every other room (another user, a
// ghost of any bridge) is shared and stays as it is. The candidates are the user's management
// room and the rooms where the state cache has ever seen user and believes the bot joined; a
// room the cache does not know is kept, which can only keep the bot somewhere, never make it
// leave a room others use.
func (svc *Service) privateRoomsOf(ctx context.Context, user id.UserID) []id.RoomID {
	log := zerolog.Ctx(ctx)
	rows, err := svc.rawDB.Query(ctx, `SELECT DISTINCT room_id FROM mx_user_profile WHERE user_id=$1`, user)
	if err != nil {
		log.Warn().Err(err).Msg("Failed to list the user's rooms; not leaving direct chats")
		return nil
	}
	var rooms []id.RoomID
	for rows.Next() {
		var roomID id.RoomID
		if err = rows.Scan(&roomID); err == nil {
			rooms = append(rooms, roomID)
		}
	}
	_ = rows.Close()
	botID := svc.as.BotMXID()
	management, err := svc.db.User.ManagementRoom(ctx, user)
	if err != nil {
		log.Warn().Err(err).Msg("Failed to read the user's management room")
	}
	var out []id.RoomID
	for _, roomID := range rooms {
		if roomID != management && !svc.stateStore.IsInRoom(ctx, roomID, botID) {
			continue
		}
		if roomID == management {
			management = ""
		}
		members, err := svc.joinedMembersNow(ctx, roomID)
		if err != nil {
			log.Warn().Err(err).Stringer("room_id", roomID).Msg("Failed to read a room's members; treating it as shared")
			continue
		}
		if svc.onlyBotAnd(members, user, true) {
			out = append(out, roomID)
		}
	}
	if management != "" {
		// The state cache never saw the user there (they were only invited, say); the bot
		// opened it, so ask the homeserver. A room the bot already left is no candidate.
		if members, err := svc.joinedMembersNow(ctx, management); err == nil && svc.onlyBotAnd(members, user, true) {
			out = append(out, management)
		} else if err != nil && !isRoomGone(err) {
			log.Warn().Err(err).Stringer("room_id", management).Msg("Failed to read a room's members; treating it as shared")
		}
	}
	slices.Sort(out)
	return out
}

// primeRoomState loads into the state cache what the bot needs before it first sends into
// roomID, which it just joined: all members (joined, invited and the rest, from /members) and
// the room's m.room.encryption event. Without them an encrypted room looks unencrypted, so the
// first message would go out in plaintext, and a room key would be shared with too few
// devices; direct-chat detection and the empty-room check need the members too. Later changes
// reach the cache through the room's events.
func (svc *Service) primeRoomState(ctx context.Context, roomID id.RoomID) error {
	bot := svc.as.BotIntent()
	if _, err := bot.Members(ctx, roomID); err != nil {
		return fmt.Errorf("failed to fetch the room's members: %w", err)
	}
	// The client stores what it reads in the state cache; a room without the event is not
	// encrypted, which the cache says when it has no event either.
	var content event.EncryptionEventContent
	err := bot.Client.StateEvent(ctx, roomID, event.StateEncryption, "", &content)
	if err != nil && !errors.Is(err, mautrix.MNotFound) {
		return fmt.Errorf("failed to fetch the room's encryption state: %w", err)
	}
	return nil
}

// forgetRoomState drops what the state cache holds about roomID: its members, power levels,
// create event and the rest of its state. The bot calls it when it leaves a room or is removed,
// since it hears nothing more from the room until it returns, and authorisation must then read
// the room's power levels afresh.
func (svc *Service) forgetRoomState(ctx context.Context, roomID id.RoomID) error {
	defer svc.directChats.invalidate(roomID)
	return svc.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if _, err := svc.rawDB.Exec(ctx, `DELETE FROM mx_user_profile WHERE room_id=$1`, roomID); err != nil {
			return fmt.Errorf("failed to drop cached members: %w", err)
		}
		if _, err := svc.rawDB.Exec(ctx, `DELETE FROM mx_room_state WHERE room_id=$1`, roomID); err != nil {
			return fmt.Errorf("failed to drop cached room state: %w", err)
		}
		return nil
	})
}

// MayConfigureRoom implements [Host.MayConfigureRoom].
func (bh *bridgeHost) MayConfigureRoom(ctx context.Context, roomID id.RoomID, userID id.UserID, command string) (bool, error) {
	return bh.svc.mayConfigureRoom(ctx, roomID, userID, command)
}

// mayConfigureRoom reports whether userID is joined to roomID and may run the room
// configuration command there; see [Host.MayConfigureRoom].
func (svc *Service) mayConfigureRoom(ctx context.Context, roomID id.RoomID, userID id.UserID, command string) (bool, error) {
	member, err := svc.stateStore.TryGetMember(ctx, roomID, userID)
	if err != nil {
		return false, fmt.Errorf("failed to get cached membership: %w", err)
	}
	if member == nil {
		var content event.MemberEventContent
		err = svc.as.BotIntent().StateEvent(ctx, roomID, event.StateMember, userID.String(), &content)
		if errors.Is(err, mautrix.MNotFound) {
			return false, nil
		} else if err != nil {
			return false, fmt.Errorf("failed to fetch membership: %w", err)
		}
		member = &content
	}
	if member.Membership != event.MembershipJoin {
		return false, nil
	}
	pl, err := svc.bot.roomPowerLevels(ctx, roomID)
	if err != nil {
		return false, err
	}
	_, _, ok := commandPower(svc.cfg.Bot.CommandPowerLevels, command, pl, userID)
	return ok, nil
}

// stillPrivateAfterErasure reports whether roomID, chosen by [Service.privateRoomsOf] for an erasure, is
// still private at clean-up time: its joined members, read now from the homeserver, are the bot
// and at most the erased user, recognised by the erasure's keyed hash userHash because the job no longer holds
// the user ID. A room whose members cannot be read counts as shared (the bot stays).
func (svc *Service) stillPrivateAfterErasure(ctx context.Context, roomID id.RoomID, userHash string) bool {
	members, err := svc.joinedMembersNow(ctx, roomID)
	if err != nil {
		return isRoomGone(err)
	}
	botID := svc.as.BotMXID()
	for _, member := range members {
		if member == botID {
			continue
		}
		if userHash == "" {
			return false
		}
		hash, _, err := svc.engine.UserHash(ctx, member)
		if err != nil || hash != userHash {
			return false
		}
	}
	return true
}
