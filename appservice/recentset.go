package appservice

import (
	"container/list"

	"maunium.net/go/mautrix/id"
)

const (
	// recentRefs bounds each in-memory set of encrypted-event references: any federated user can
	// send events with random session IDs, so the sets must not grow with them.
	recentRefs = 4096
	// recentPerUser bounds the keys of one user in a set: a user who sends events under ever
	// new sessions (a remote partner in a direct chat, say) pushes out only their own oldest
	// keys, never other users'.
	recentPerUser = 64
	// recentPerServer bounds the keys of all the users of one other homeserver in a set, so
	// that one server's many accounts take at most a quarter of it. The homeserver's own users
	// are bounded each by recentPerUser only.
	recentPerServer = recentRefs / 4
)

// recentSet is a set of at most recentRefs keys, each recorded with the user it concerns; adding
// to a full set drops the least recently used key. No user holds more than recentPerUser keys,
// and the users of a server other than home no more than recentPerServer together: adding
// beyond such a share drops the least recently used key of that user, or of that server, not
// another's. The zero value is ready (with no home server: every server has a share); it is
// not safe for concurrent use.
type recentSet[K comparable] struct {
	max       int    // 0 means recentRefs
	perUser   int    // 0 means recentPerUser
	perServer int    // 0 means recentPerServer
	home      string // the server whose users have no server share (this homeserver)

	items   map[K]*list.Element
	order   list.List // of *recentEntry[K], most recently used first
	users   map[id.UserID]int
	servers map[string]int
}

type recentEntry[K comparable] struct {
	key  K
	user id.UserID
}

// has reports whether key is in the set, marking it used.
func (rs *recentSet[K]) has(key K) bool {
	el, ok := rs.items[key]
	if ok {
		rs.order.MoveToFront(el)
	}
	return ok
}

// add records key for user, dropping first the least recently used key of user if user holds
// its share, then that of user's server if that server holds its share, then the set's least
// recently used key if the set is full. A key already there is marked used, and moves to user.
func (rs *recentSet[K]) add(key K, user id.UserID) {
	if rs.items == nil {
		rs.items = make(map[K]*list.Element)
		rs.users = make(map[id.UserID]int)
		rs.servers = make(map[string]int)
	}
	if el, ok := rs.items[key]; ok {
		rs.order.MoveToFront(el)
		if entry := el.Value.(*recentEntry[K]); entry.user != user {
			rs.count(entry.user, -1)
			entry.user = user
			rs.count(user, 1)
		}
		return
	}
	if rs.users[user] >= shareOr(rs.perUser, recentPerUser) {
		rs.dropOldest(func(u id.UserID) bool { return u == user })
	}
	if server := user.Homeserver(); server != rs.home && rs.servers[server] >= shareOr(rs.perServer, recentPerServer) {
		rs.dropOldest(func(u id.UserID) bool { return u.Homeserver() == server })
	}
	for limit := shareOr(rs.max, recentRefs); rs.order.Len() >= limit; {
		rs.remove(rs.order.Back())
	}
	rs.items[key] = rs.order.PushFront(&recentEntry[K]{key: key, user: user})
	rs.count(user, 1)
}

// dropOldest removes the least recently used key whose user matches.
func (rs *recentSet[K]) dropOldest(match func(id.UserID) bool) {
	for el := rs.order.Back(); el != nil; el = el.Prev() {
		if match(el.Value.(*recentEntry[K]).user) {
			rs.remove(el)
			return
		}
	}
}

// remove removes el's key.
func (rs *recentSet[K]) remove(el *list.Element) {
	entry := el.Value.(*recentEntry[K])
	delete(rs.items, entry.key)
	rs.order.Remove(el)
	rs.count(entry.user, -1)
}

// count adds delta to the keys counted for user and user's server.
func (rs *recentSet[K]) count(user id.UserID, delta int) {
	if rs.users[user] += delta; rs.users[user] <= 0 {
		delete(rs.users, user)
	}
	server := user.Homeserver()
	if rs.servers[server] += delta; rs.servers[server] <= 0 {
		delete(rs.servers, server)
	}
}

// dropUser removes every key recorded for user.
func (rs *recentSet[K]) dropUser(user id.UserID) {
	for el := rs.order.Front(); el != nil; {
		next := el.Next()
		if el.Value.(*recentEntry[K]).user == user {
			rs.remove(el)
		}
		el = next
	}
}

// len returns the number of keys in the set.
func (rs *recentSet[K]) len() int { return rs.order.Len() }

// shareOr returns n, or def when n is not positive.
func shareOr(n, def int) int {
	if n <= 0 {
		return def
	}
	return n
}
