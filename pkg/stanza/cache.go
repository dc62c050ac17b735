package stanza

import (
	"container/list"
	"sync"
	"sync/atomic"
)

// DefaultCacheSize is the number of announcements a Cache remembers when
// NewCache is given no size: far more than a process has in flight at once.
// An entry costs about twice its template's size (the raw string and the
// parsed copy): a few MiB in all for templates of a few KiB, 128 MiB if
// every entry were a maximal DefaultMaxBytes template.
const DefaultCacheSize = 1024

// Cache parses each announcement's template once per process instead of
// once per batch. It is keyed by announcement id but also remembers the
// raw text: a different text under the same id is parsed again and
// replaces the entry, so a template is never used for bytes it was not
// parsed from. Rejections are remembered too, so a bad template costs one
// parse, not one per batch. It holds at most size entries and evicts the
// least recently used; each entry keeps its raw string (usually the one
// the caller decoded anyway) and the parsed template.
//
// A Cache is safe for concurrent use. Concurrent lookups of the same id
// and text share one parse; other ids do not wait for it.
type Cache struct {
	opt    Options
	size   int
	parses atomic.Uint64

	mu      sync.Mutex
	recency *list.List               // of *cacheEntry, most recently used first
	byID    map[string]*list.Element // announcement id → its element in recency
}

type cacheEntry struct {
	id, raw string
	once    sync.Once
	tpl     *Template
	err     error
}

// NewCache returns a cache that parses with opt and keeps at most size
// announcements; size < 1 means DefaultCacheSize.
func NewCache(opt Options, size int) *Cache {
	if size < 1 {
		size = DefaultCacheSize
	}
	return &Cache{opt: opt, size: size, recency: list.New(), byID: make(map[string]*list.Element)}
}

// Get returns the template of announcementID parsed from raw, or Parse's
// error for it, parsing only when the id is new, was evicted, or comes with
// a different raw text than last time.
func (c *Cache) Get(announcementID, raw string) (*Template, error) {
	e := c.entry(announcementID, raw)
	// Parsing outside the lock keeps a large template from stalling hits on
	// other announcements; once makes concurrent misses share the work.
	e.once.Do(func() {
		c.parses.Add(1)
		e.tpl, e.err = Parse([]byte(raw), c.opt)
	})
	return e.tpl, e.err
}

// entry finds or installs the entry for (id, raw) and marks it most
// recently used. An evicted or replaced entry stays valid for callers
// already holding it.
func (c *Cache) entry(id, raw string) *cacheEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byID[id]; ok {
		c.recency.MoveToFront(el)
		if e := el.Value.(*cacheEntry); e.raw == raw {
			return e
		}
		e := &cacheEntry{id: id, raw: raw}
		el.Value = e
		return e
	}
	e := &cacheEntry{id: id, raw: raw}
	c.byID[id] = c.recency.PushFront(e)
	for c.recency.Len() > c.size {
		oldest := c.recency.Back()
		c.recency.Remove(oldest)
		delete(c.byID, oldest.Value.(*cacheEntry).id)
	}
	return e
}

// Parses returns how many times the cache has called Parse, i.e. its
// misses: for tests and a metric.
func (c *Cache) Parses() uint64 { return c.parses.Load() }
