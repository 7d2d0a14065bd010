package appservice

import (
	"container/list"

	"maunium.net/go/mautrix/id"
)

// recentRefs bounds each in-memory set of encrypted-event references: any federated user can
// send events with random session IDs, so the sets must not grow with them.
const recentRefs = 4096

// recentSet is a set of at most recentRefs keys, each recorded with the user it concerns; adding
// to a full set drops the least recently used key. The zero value is ready; it is not safe for
// concurrent use.
type recentSet[K comparable] struct {
	max   int // 0 means recentRefs
	items map[K]*list.Element
	order list.List // of *recentEntry[K], most recently used first
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

// add records key for user, dropping the least recently used key if the set is full.
func (rs *recentSet[K]) add(key K, user id.UserID) {
	if rs.items == nil {
		rs.items = make(map[K]*list.Element)
	}
	if el, ok := rs.items[key]; ok {
		el.Value.(*recentEntry[K]).user = user
		rs.order.MoveToFront(el)
		return
	}
	limit := rs.max
	if limit <= 0 {
		limit = recentRefs
	}
	for rs.order.Len() >= limit {
		last := rs.order.Back()
		delete(rs.items, last.Value.(*recentEntry[K]).key)
		rs.order.Remove(last)
	}
	rs.items[key] = rs.order.PushFront(&recentEntry[K]{key: key, user: user})
}

// dropUser removes every key recorded for user.
func (rs *recentSet[K]) dropUser(user id.UserID) {
	for el := rs.order.Front(); el != nil; {
		next := el.Next()
		if entry := el.Value.(*recentEntry[K]); entry.user == user {
			delete(rs.items, entry.key)
			rs.order.Remove(el)
		}
		el = next
	}
}

// len returns the number of keys in the set.
func (rs *recentSet[K]) len() int { return rs.order.Len() }
