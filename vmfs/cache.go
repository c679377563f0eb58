package vmfs

import (
	"container/list"
	"sync"
)

// cache kinds
const (
	ckFD = iota + 1
	ckPB
	ckDirHeader
	ckDirBlock
	ckDirChunk
)

type cacheKey struct {
	kind uint8
	a, b uint64
}

type cacheEntry struct {
	key  cacheKey
	val  any
	size int64
}

// lru is a metadata cache bounded in bytes, safe for concurrent use. Values
// are immutable once stored.
type lru struct {
	mu     sync.Mutex
	max    int64
	used   int64
	ll     *list.List
	m      map[cacheKey]*list.Element
	hits   int64
	misses int64
}

func newLRU(max int64) *lru {
	return &lru{max: max, ll: list.New(), m: make(map[cacheKey]*list.Element)}
}

func (c *lru) get(k cacheKey) (any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		c.ll.MoveToFront(e)
		c.hits++
		return e.Value.(*cacheEntry).val, true
	}
	c.misses++
	return nil, false
}

func (c *lru) put(k cacheKey, v any, size int64) {
	size += 64 // bookkeeping
	if size > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok {
		c.ll.MoveToFront(e)
		return
	}
	c.m[k] = c.ll.PushFront(&cacheEntry{key: k, val: v, size: size})
	c.used += size
	for c.used > c.max {
		e := c.ll.Back()
		ce := e.Value.(*cacheEntry)
		c.ll.Remove(e)
		delete(c.m, ce.key)
		c.used -= ce.size
	}
}
