package audience

import (
	"sync"
	"time"
)

// maxCounts bounds the channels whose member count is remembered.
const maxCounts = 1024

// countCache remembers channels' member counts for maxAge (0: never).
type countCache struct {
	maxAge time.Duration
	mu     sync.Mutex
	counts map[int64]countEntry
}

type countEntry struct {
	n  int64
	at time.Time
}

func newCountCache(maxAge time.Duration) *countCache {
	return &countCache{maxAge: maxAge, counts: map[int64]countEntry{}}
}

func (c *countCache) get(channelID int64, now time.Time) (int64, bool) {
	if c.maxAge <= 0 {
		return 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.counts[channelID]
	if !ok || now.Sub(e.at) >= c.maxAge {
		return 0, false
	}
	return e.n, true
}

func (c *countCache) put(channelID, n int64, now time.Time) {
	if c.maxAge <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.counts) >= maxCounts {
		for id, e := range c.counts {
			if now.Sub(e.at) >= c.maxAge {
				delete(c.counts, id)
			}
		}
		if len(c.counts) >= maxCounts {
			clear(c.counts)
		}
	}
	c.counts[channelID] = countEntry{n: n, at: now}
}
