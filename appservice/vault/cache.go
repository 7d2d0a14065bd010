package vault

import (
	"container/list"
	"crypto/cipher"
	"sync"
	"time"

	"maunium.net/go/mautrix/id"
)

// dekCache keeps unwrapped data keys (as ready AES-GCM instances) of recently used users, least
// recently used first out, each for at most ttl. A load that started before a [dekCache.forget]
// or [dekCache.flush] is not stored (the generation check), so an erased user's key cannot come
// back into the cache from a read that raced with the erasure.
type dekCache struct {
	mu    sync.Mutex
	size  int
	ttl   time.Duration
	order *list.List // of *cacheEntry, most recently used at the front
	users map[id.UserID]*list.Element
	gen   uint64
}

type cacheEntry struct {
	user    id.UserID
	deks    map[uint32]cipher.AEAD
	expires time.Time
}

func newDEKCache(size int, ttl time.Duration) *dekCache {
	return &dekCache{size: size, ttl: ttl, order: list.New(), users: make(map[id.UserID]*list.Element)}
}

// generation returns the value to pass to put for a load starting now.
func (c *dekCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// get returns the user's data key dekID if it is cached and fresh.
func (c *dekCache) get(user id.UserID, dekID uint32, now time.Time) (cipher.AEAD, bool) {
	if c.size <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.users[user]
	if !ok {
		return nil, false
	}
	entry := el.Value.(*cacheEntry)
	if now.After(entry.expires) {
		c.order.Remove(el)
		delete(c.users, user)
		return nil, false
	}
	aead, ok := entry.deks[dekID]
	if ok {
		c.order.MoveToFront(el)
	}
	return aead, ok
}

// put stores the user's data key dekID, unless the cache changed generation since gen.
func (c *dekCache) put(user id.UserID, dekID uint32, aead cipher.AEAD, gen uint64, now time.Time) {
	if c.size <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if el, ok := c.users[user]; ok {
		entry := el.Value.(*cacheEntry)
		entry.deks[dekID] = aead
		c.order.MoveToFront(el)
		return
	}
	for c.order.Len() >= c.size {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.users, oldest.Value.(*cacheEntry).user)
	}
	entry := &cacheEntry{user: user, deks: map[uint32]cipher.AEAD{dekID: aead}, expires: now.Add(c.ttl)}
	c.users[user] = c.order.PushFront(entry)
}

// forget drops the user's keys and makes loads in flight not store theirs.
func (c *dekCache) forget(user id.UserID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if el, ok := c.users[user]; ok {
		c.order.Remove(el)
		delete(c.users, user)
	}
}

// flush drops every key, after the master keys changed.
func (c *dekCache) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.order.Init()
	clear(c.users)
}

// len returns the number of users cached.
func (c *dekCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
