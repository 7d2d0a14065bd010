package appservice

import (
	"context"
	"sync"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/sqlstatestore"
)

// maxDirectChatRooms bounds the rooms whose direct-chat verdict is kept in memory; when it is
// reached, every verdict is dropped and the cache fills again.
const maxDirectChatRooms = 4096

// directChatVerdictLifetime bounds how long a verdict is used without asking again, should a
// membership change ever not reach the service.
const directChatVerdictLifetime = time.Minute

// directChats caches, per room, [Service.isDirectChat]'s verdict that a room is a direct chat
// with nobody: group rooms, where most messages are sent, then cost no state cache reads and no
// homeserver request per message. A "yes" is never cached: it is confirmed with the homeserver
// every time, so a join the service missed cannot make a group room a direct chat. A cached "no"
// can only withhold DM-only behaviour, yet it follows the room's members exactly: a room is a
// direct chat because of who is in it (invariant 9), so every change to a room's members drops
// its verdict: a membership event accepted into the inbox (before any later event of the room
// is handled), and every membership the state cache records, from handled events or from state
// the bot fetched ([watchedStateStore]). A verdict also lasts at most
// [directChatVerdictLifetime].
//
// A verdict is computed outside the lock; it is stored only if the room's members did not change
// while it was being computed (the token of [directChats.lookup]), so a lookup that raced with a
// leave can never store the members from before it. The zero value is ready to use.
type directChats struct {
	mu sync.Mutex
	// clock counts invalidations; a verdict computed from token t is stored only if its room
	// was not invalidated after t, and t is not before floor (the clock when the map was last
	// emptied, which forgets which rooms changed before).
	clock, floor uint64
	rooms        map[id.RoomID]directChatEntry
}

// directChatEntry is a room's cached "not a direct chat" verdict, or, with known false, the time
// its members last changed.
type directChatEntry struct {
	changed uint64
	known   bool
	// until is when the verdict must be computed again.
	until time.Time
}

// lookup reports whether roomID is known at now not to be a direct chat; otherwise it returns
// token, to pass to store if the verdict computed now is that it is none.
func (dc *directChats) lookup(roomID id.RoomID, now time.Time) (notDirect bool, token uint64) {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if e, ok := dc.rooms[roomID]; ok && e.known && now.Before(e.until) {
		return true, 0
	}
	return false, dc.clock
}

// store records that roomID is a direct chat with nobody, computed since lookup returned token,
// unless the room's members changed since then.
func (dc *directChats) store(roomID id.RoomID, token uint64, now time.Time) {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if token < dc.floor {
		return
	}
	e, ok := dc.rooms[roomID]
	if ok && e.changed > token {
		return
	}
	dc.makeRoom(ok)
	dc.rooms[roomID] = directChatEntry{changed: e.changed, known: true, until: now.Add(directChatVerdictLifetime)}
}

// invalidate drops roomID's verdict: its members changed.
func (dc *directChats) invalidate(roomID id.RoomID) {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	dc.clock++
	_, ok := dc.rooms[roomID]
	dc.makeRoom(ok)
	dc.rooms[roomID] = directChatEntry{changed: dc.clock}
}

// invalidateAll drops every verdict.
func (dc *directChats) invalidateAll() {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	dc.clock++
	dc.rooms = nil
	dc.floor = dc.clock
}

// makeRoom makes sure the map exists and, unless the room has an entry already (present), has
// room for one more; a full map is emptied. Called with mu held.
func (dc *directChats) makeRoom(present bool) {
	switch {
	case dc.rooms == nil:
		// Empty since invalidateAll set floor, or from the start: nothing is forgotten.
		dc.rooms = make(map[id.RoomID]directChatEntry)
	case !present && len(dc.rooms) >= maxDirectChatRooms:
		dc.rooms = make(map[id.RoomID]directChatEntry)
		dc.floor = dc.clock
	}
}

// watchedStateStore is the service's state cache: mautrix's SQL state store, which also drops a
// room's direct-chat verdict ([directChats]) whenever it records members of the room, whether
// from an event the dispatcher handled or from state a client fetched. It drops it before the
// write (no verdict cached earlier is used while it runs) and after it (no verdict computed
// while it ran is kept).
type watchedStateStore struct {
	*sqlstatestore.SQLStateStore
	directChats *directChats
}

// newWatchedStateStore wraps store so that its membership writes invalidate dc.
func newWatchedStateStore(store *sqlstatestore.SQLStateStore, dc *directChats) *watchedStateStore {
	return &watchedStateStore{SQLStateStore: store, directChats: dc}
}

// SetMembership records userID's membership in roomID and drops the room's direct-chat verdict.
func (s *watchedStateStore) SetMembership(ctx context.Context, roomID id.RoomID, userID id.UserID, membership event.Membership) error {
	s.directChats.invalidate(roomID)
	defer s.directChats.invalidate(roomID)
	return s.SQLStateStore.SetMembership(ctx, roomID, userID, membership)
}

// SetMember records userID's member event in roomID and drops the room's direct-chat verdict.
func (s *watchedStateStore) SetMember(ctx context.Context, roomID id.RoomID, userID id.UserID, member *event.MemberEventContent) error {
	s.directChats.invalidate(roomID)
	defer s.directChats.invalidate(roomID)
	return s.SQLStateStore.SetMember(ctx, roomID, userID, member)
}

// ReplaceCachedMembers replaces roomID's cached members with evts (a fetched member list) and
// drops the room's direct-chat verdict.
func (s *watchedStateStore) ReplaceCachedMembers(ctx context.Context, roomID id.RoomID, evts []*event.Event, onlyMemberships ...event.Membership) error {
	s.directChats.invalidate(roomID)
	defer s.directChats.invalidate(roomID)
	return s.SQLStateStore.ReplaceCachedMembers(ctx, roomID, evts, onlyMemberships...)
}

// ClearCachedMembers forgets roomID's cached members and drops the room's direct-chat verdict.
func (s *watchedStateStore) ClearCachedMembers(ctx context.Context, roomID id.RoomID, memberships ...event.Membership) error {
	s.directChats.invalidate(roomID)
	defer s.directChats.invalidate(roomID)
	return s.SQLStateStore.ClearCachedMembers(ctx, roomID, memberships...)
}
