package appservice

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/database"
)

// ManagementRoomTopic is the topic of the private rooms the bot opens to reach a user.
const ManagementRoomTopic = "Custodian tells you here what is meant for you alone: notices, secrets, your data exports. " +
	"Treat this room as private: do not invite anyone."

// CoreNoticeScope is the scope of the core's own notices in their transaction IDs (see
// [Notifier.Notify]); a bridge's notices are scoped by its ID.
const CoreNoticeScope = "core"

// ErrUserBeingErased is returned by [Host.NotifyUser] while the user's erasure is queued or
// running: a notice then would recreate the users row and open a room the erasure just deleted.
var ErrUserBeingErased = errors.New("appservice: the user is being erased")

// ErrInvalidNotice is returned by [Host.NotifyUser] for a notice without Cause or Content.
var ErrInvalidNotice = errors.New("appservice: a notice needs a cause and content")

// Notifier sends private notices to users in their management rooms: the one implementation
// behind [Host.NotifyUser], which the core and the test fakes share. Create it with
// [NewNotifier]. It is safe for concurrent use.
type Notifier struct {
	bot   *mxas.IntentAPI
	users *database.UserQuery

	// erasing, if set, reports whether user's erasure is pending (see RefuseDuringErasure).
	erasing func(ctx context.Context, user id.UserID) (bool, error)
	// encrypt, if set, reports whether new management rooms are created encrypted (see
	// EncryptRooms).
	encrypt func() bool

	lock  sync.Mutex
	locks map[id.UserID]*userLock
}

// RefuseDuringErasure makes Notify refuse, with [ErrUserBeingErased], a notice to a user for
// whom erasing reports true: the core passes the privacy engine's pending-erasure check. It
// must be called before the Notifier is used.
func (nf *Notifier) RefuseDuringErasure(erasing func(ctx context.Context, user id.UserID) (bool, error)) {
	nf.erasing = erasing
}

// EncryptRooms makes the Notifier create each new management room encrypted (an
// m.room.encryption initial state event, see [EncryptionInitialState]) when encrypt reports
// true at that moment: the core passes encryption.default_encrypted while the bot can read and
// write encrypted rooms. Notices into an encrypted room are encrypted when the bot's client has
// a Crypto helper. It must be called before the Notifier is used.
func (nf *Notifier) EncryptRooms(encrypt func() bool) {
	nf.encrypt = encrypt
}

type userLock struct {
	sync.Mutex
	refs int
}

// NewNotifier returns a Notifier that sends as bot and keeps management rooms in users.
func NewNotifier(bot *mxas.IntentAPI, users *database.UserQuery) *Notifier {
	return &Notifier{bot: bot, users: users, locks: make(map[id.UserID]*userLock)}
}

// lockUser serialises the notices of one user, so that two first notices open one room. It
// returns the unlock function.
func (nf *Notifier) lockUser(user id.UserID) func() {
	nf.lock.Lock()
	ul, ok := nf.locks[user]
	if !ok {
		ul = &userLock{}
		nf.locks[user] = ul
	}
	ul.refs++
	nf.lock.Unlock()
	ul.Lock()
	return func() {
		ul.Unlock()
		nf.lock.Lock()
		if ul.refs--; ul.refs == 0 {
			delete(nf.locks, user)
		}
		nf.lock.Unlock()
	}
}

// NoticeTxnID returns the transaction ID of notice n of the given scope (a bridge ID, or
// [CoreNoticeScope]): the same scope, cause and purpose always give the same ID.
func NoticeTxnID(scope string, n Notice) string {
	return TxnIDFor(id.EventID(n.Cause), "notice:"+scope+":"+n.Purpose)
}

// Notify implements [Host.NotifyUser] for scope, a bridge ID or [CoreNoticeScope]: it sends
// n.Content to user in their management room, opening one first when none is usable, with the
// transaction ID [NoticeTxnID] gives. A room is usable while the bot is joined, the user is
// joined or invited, and nobody else is joined, invited or knocking (read from the homeserver
// before each send). If the send is refused because the bot lost the room meanwhile, the room
// is reopened once and the notice sent there. While the user's erasure is pending it sends
// nothing and returns [ErrUserBeingErased] (see [Notifier.RefuseDuringErasure]); an erasure
// that commits while a notice is on its way is noticed when the room is recorded, and the
// notice is dropped rather than bring the users row back.
func (nf *Notifier) Notify(ctx context.Context, user id.UserID, scope string, n Notice) (id.RoomID, id.EventID, error) {
	if n.Cause == "" || n.Content == nil {
		return "", "", ErrInvalidNotice
	}
	unlock := nf.lockUser(user)
	defer unlock()
	// The row is read first: an erasure that commits after this read is caught when the room is
	// recorded (see record), one that is still pending by the check below.
	roomID, hadRow, err := nf.users.ManagementRoomOf(ctx, user)
	if err != nil {
		return "", "", fmt.Errorf("failed to get management room: %w", err)
	}
	if nf.erasing != nil {
		if pending, err := nf.erasing(ctx, user); err != nil {
			return "", "", err
		} else if pending {
			return "", "", ErrUserBeingErased
		}
	}
	fresh := false
	if hint, ok := ctx.Value(commandRoomKey{}).(commandRoom); ok && hint.user == user && hint.room != roomID &&
		nf.privateToUser(ctx, hint.room, user) {
		// The user is running a command in a direct chat with the bot: answer there.
		if err = nf.record(ctx, user, hint.room, hadRow); err != nil {
			return "", "", err
		}
		roomID = hint.room
	} else if roomID != "" {
		usable, err := nf.usable(ctx, roomID, user)
		if err != nil {
			return "", "", err
		} else if !usable {
			roomID = ""
		}
	}
	if roomID == "" {
		if roomID, err = nf.open(ctx, user, hadRow); err != nil {
			return "", "", err
		}
		fresh = true
	}
	txnID := NoticeTxnID(scope, n)
	evtID, err := nf.send(ctx, roomID, txnID, n.Content)
	if err != nil && !fresh && isRoomGone(err) {
		if roomID, err = nf.open(ctx, user, true); err != nil {
			return "", "", err
		}
		evtID, err = nf.send(ctx, roomID, txnID, n.Content)
	}
	if err != nil {
		return "", "", fmt.Errorf("failed to send notice: %w", err)
	}
	return roomID, evtID, nil
}

// record stores roomID as user's management room. If the user had a users row when the notice
// started (hadRow), it only updates it: finding none now means their erasure committed
// meanwhile, and the notice is dropped with [ErrUserBeingErased] instead of bringing the row
// back. Otherwise it creates the row.
func (nf *Notifier) record(ctx context.Context, user id.UserID, roomID id.RoomID, hadRow bool) error {
	if !hadRow {
		if err := nf.users.SetManagementRoom(ctx, user, roomID); err != nil {
			return fmt.Errorf("failed to record management room: %w", err)
		}
		return nil
	}
	if updated, err := nf.users.UpdateManagementRoom(ctx, user, roomID); err != nil {
		return fmt.Errorf("failed to record management room: %w", err)
	} else if !updated {
		return ErrUserBeingErased
	}
	return nil
}

// privateToUser reports whether roomID, a direct chat the user runs a command in, may carry
// what is meant for them alone: it is usable (see [Notifier.usable]) and its history is hidden
// from whoever joins later (history_visibility invited or joined). A user-made direct chat
// usually shares its history with later members; the bot then makes it "invited" where its
// power level allows (it has the creator's in a trusted_private_chat), and otherwise the notice
// goes to a room the bot opens itself.
func (nf *Notifier) privateToUser(ctx context.Context, roomID id.RoomID, user id.UserID) bool {
	log := zerolog.Ctx(ctx)
	if usable, err := nf.usable(ctx, roomID, user); err != nil || !usable {
		return false
	}
	var hv event.HistoryVisibilityEventContent
	err := nf.bot.StateEvent(ctx, roomID, event.StateHistoryVisibility, "", &hv)
	if err == nil && (hv.HistoryVisibility == event.HistoryVisibilityInvited || hv.HistoryVisibility == event.HistoryVisibilityJoined) {
		return true
	} else if err != nil && !errors.Is(err, mautrix.MNotFound) {
		log.Debug().Err(err).Msg("Failed to read the direct chat's history visibility")
		return false
	}
	_, err = nf.bot.SendStateEvent(ctx, roomID, event.StateHistoryVisibility, "",
		&event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityInvited})
	if err != nil {
		log.Debug().Err(err).Msg("Could not hide the direct chat's history from later members")
		return false
	}
	return true
}

// send sends content to roomID as the bot, marked as sensitive so that mautrix never logs the
// body: notices carry secrets (webhook URLs, signing secrets) and personal data. In an
// encrypted room it is encrypted (see [SendMessageSensitive]), export files' keys included.
func (nf *Notifier) send(ctx context.Context, roomID id.RoomID, txnID string, content *event.MessageEventContent) (id.EventID, error) {
	resp, err := SendMessageSensitive(ctx, nf.bot.Client, roomID, event.EventMessage, content, txnID)
	if err != nil {
		return "", err
	}
	return resp.EventID, nil
}

// usable reports whether roomID can still carry what is meant for user alone: the bot is joined,
// the user is joined or invited, and nobody else is joined, invited or knocking (an invitee
// would read what is sent meanwhile once they join). A room the bot cannot read any more is not
// usable; any other failure to read it is an error, so a homeserver hiccup does not open a new
// room each time.
func (nf *Notifier) usable(ctx context.Context, roomID id.RoomID, user id.UserID) (bool, error) {
	resp, err := nf.bot.Members(ctx, roomID)
	if isRoomGone(err) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("failed to fetch the management room's members: %w", err)
	}
	botJoined, userIn := false, false
	for _, evt := range resp.Chunk {
		if evt.StateKey == nil {
			continue
		}
		if evt.Content.Parsed == nil {
			_ = evt.Content.ParseRaw(evt.Type)
		}
		membership := evt.Content.AsMember().Membership
		switch member := id.UserID(*evt.StateKey); {
		case member == nf.bot.UserID:
			botJoined = membership == event.MembershipJoin
		case member == user:
			userIn = membership == event.MembershipJoin || membership == event.MembershipInvite
		case membership == event.MembershipJoin || membership == event.MembershipInvite || membership == event.MembershipKnock:
			return false, nil
		}
	}
	return botJoined && userIn, nil
}

// open creates a private room between the bot and user and records it as the user's
// management room (see [Notifier.record]: hadRow tells whether the user had a users row when the
// notice started). It is the one place such rooms are made: a room that should be encrypted is
// set up here (an m.room.encryption initial state event, see [Notifier.EncryptRooms]), and
// nowhere else; mautrix records that state in the state cache when the room is created, so the
// first notice is already encrypted. If Custodian stops between creating and recording, the
// next notice opens another room; nothing is lost.
func (nf *Notifier) open(ctx context.Context, user id.UserID, hadRow bool) (id.RoomID, error) {
	initialState := []*event.Event{{
		// Someone the user invites later sees nothing sent before their own invite.
		Type:    event.StateHistoryVisibility,
		Content: event.Content{Parsed: &event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityInvited}},
	}}
	if nf.encrypt != nil && nf.encrypt() {
		initialState = append(initialState, EncryptionInitialState())
	}
	resp, err := nf.bot.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset:       "trusted_private_chat",
		IsDirect:     true,
		Invite:       []id.UserID{user},
		Topic:        ManagementRoomTopic,
		InitialState: initialState,
	})
	if err != nil {
		return "", fmt.Errorf("failed to create management room: %w", err)
	}
	if err = nf.record(ctx, user, resp.RoomID, hadRow); err != nil {
		if errors.Is(err, ErrUserBeingErased) {
			// Erased while the room was being made: nobody is to be told anything there.
			if _, lerr := nf.bot.LeaveRoom(ctx, resp.RoomID); lerr != nil {
				zerolog.Ctx(ctx).Warn().Err(lerr).Stringer("room_id", resp.RoomID).Msg("Failed to leave a management room opened during an erasure")
			}
		}
		return "", err
	}
	zerolog.Ctx(ctx).Info().Stringer("management_room_id", resp.RoomID).Msg("Opened a management room")
	return resp.RoomID, nil
}

// commandRoomKey is the context key of the direct chat a command runs in (see
// [Service.useAsManagementRoom]).
type commandRoomKey struct{}

type commandRoom struct {
	user id.UserID
	room id.RoomID
}

// useAsManagementRoom makes roomID, a direct chat between the bot and user by its members (the
// rule of [Service.isDirectChat]) in which user is running a command, their management room: it
// records it if the user has a users row, and returns a context in which the notices the
// command sends to user go there and record it (a first command creates the row only when it
// sends a notice). A user who talks to the bot in a new direct chat is answered there, not in
// an older room; a user who only ran "help" has no row at all.
func (svc *Service) useAsManagementRoom(ctx context.Context, user id.UserID, roomID id.RoomID) context.Context {
	if _, err := svc.db.User.UpdateManagementRoom(ctx, user, roomID); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to record the direct chat as management room")
	}
	return context.WithValue(ctx, commandRoomKey{}, commandRoom{user: user, room: roomID})
}

// NotifyUser implements [Host.NotifyUser], with transaction IDs scoped to the bridge.
func (bh *bridgeHost) NotifyUser(ctx context.Context, userID id.UserID, n Notice) (id.RoomID, id.EventID, error) {
	return bh.svc.notifier.Notify(ctx, userID, bh.id, n)
}

// NotifyUser sends the core's own notice n to user in their management room, like
// [Host.NotifyUser] (transaction IDs scoped to [CoreNoticeScope]).
func (svc *Service) NotifyUser(ctx context.Context, user id.UserID, n Notice) (id.RoomID, id.EventID, error) {
	return svc.notifier.Notify(ctx, user, CoreNoticeScope, n)
}
