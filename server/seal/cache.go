package seal

import (
	"container/list"
	"crypto/cipher"
	"crypto/sha256"
	"sync"
)

// dekCache is a bounded LRU of unwrapped DEKs, so that reads do not call the
// KMS every time. It lives in memory only and is never written anywhere.
//
// It stores the AES-GCM instance built from the DEK rather than the DEK
// bytes: the raw DEK can then be zeroed right after unwrapping, and an
// evicted entry can never be zeroed under a goroutine that is still using it.
// A cipher.AEAD from crypto/cipher holds no mutable state and is safe for
// concurrent use.
//
// Entries are keyed by SHA-256(KEK id || 0x00 || wrapped DEK): a wrapped DEK
// that was tampered with misses the cache and goes to the KMS (which rejects
// it), and a row whose KEK id was changed cannot borrow another KEK's entry.
type dekCache struct {
	mu    sync.Mutex
	cap   int
	ll    *list.List // front = most recently used; values are *cacheEntry
	items map[[sha256.Size]byte]*list.Element
}

type cacheEntry struct {
	key  [sha256.Size]byte
	aead cipher.AEAD
}

func newDEKCache(capacity int) *dekCache {
	if capacity <= 0 {
		return nil
	}
	return &dekCache{
		cap:   capacity,
		ll:    list.New(),
		items: make(map[[sha256.Size]byte]*list.Element, min(capacity, 1024)),
	}
}

func cacheKey(kekID string, wrapped []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(kekID))
	h.Write([]byte{0})
	h.Write(wrapped)
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// get is nil-safe: a nil cache (disabled) always misses.
func (c *dekCache) get(k [sha256.Size]byte) (cipher.AEAD, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[k]
	if !ok {
		return nil, false
	}
	c.ll.MoveToFront(e)
	return e.Value.(*cacheEntry).aead, true
}

func (c *dekCache) put(k [sha256.Size]byte, aead cipher.AEAD) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		e.Value.(*cacheEntry).aead = aead
		c.ll.MoveToFront(e)
		return
	}
	c.items[k] = c.ll.PushFront(&cacheEntry{key: k, aead: aead})
	for c.ll.Len() > c.cap {
		oldest := c.ll.Back()
		c.ll.Remove(oldest)
		delete(c.items, oldest.Value.(*cacheEntry).key)
	}
}

func (c *dekCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

func (c *dekCache) purge() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ll.Init()
	clear(c.items)
}
