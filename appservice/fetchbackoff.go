package appservice

import (
	"container/list"
	"sync"
	"time"
)

const (
	// failedServerEntries bounds the servers a serverBackoff remembers: sender IDs, and so their
	// server names, are chosen by whoever sends.
	failedServerEntries = 1024
	// failedServerPause is how long after a failed sender fetch from a server the lane skips
	// the fetch for that server's senders.
	failedServerPause = time.Minute
)

// serverBackoff remembers, for at most failedServerEntries server names, until when fetches
// from each are skipped; recording a server beyond that forgets the least recently recorded
// one. The zero value is ready and safe for concurrent use.
type serverBackoff struct {
	lock  sync.Mutex
	items map[string]*list.Element
	order list.List // of *backoffEntry, most recently recorded first
}

type backoffEntry struct {
	server string
	until  time.Time
}

// failed records that a fetch from server failed at now: skip reports true for it until
// failedServerPause later.
func (b *serverBackoff) failed(server string, now time.Time) {
	b.lock.Lock()
	defer b.lock.Unlock()
	if b.items == nil {
		b.items = make(map[string]*list.Element)
	}
	until := now.Add(failedServerPause)
	if elem, ok := b.items[server]; ok {
		elem.Value.(*backoffEntry).until = until
		b.order.MoveToFront(elem)
		return
	}
	b.items[server] = b.order.PushFront(&backoffEntry{server: server, until: until})
	for b.order.Len() > failedServerEntries {
		oldest := b.order.Back()
		b.order.Remove(oldest)
		delete(b.items, oldest.Value.(*backoffEntry).server)
	}
}

// skip reports whether a fetch from server failed less than failedServerPause before now. An
// entry found expired is forgotten.
func (b *serverBackoff) skip(server string, now time.Time) bool {
	b.lock.Lock()
	defer b.lock.Unlock()
	elem, ok := b.items[server]
	if !ok {
		return false
	}
	if now.Before(elem.Value.(*backoffEntry).until) {
		return true
	}
	b.order.Remove(elem)
	delete(b.items, server)
	return false
}
