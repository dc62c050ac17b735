package audience

import (
	"sync"
	"time"
)

// maxCuts bounds the channels whose cut is remembered.
const maxCuts = 1024

// cutCache remembers where channels' shards start for maxAge (0: never).
type cutCache struct {
	maxAge time.Duration
	mu     sync.Mutex
	cuts   map[int64]cutEntry
}

type cutEntry struct {
	starts []int64 // not changed once stored
	at     time.Time
}

func newCutCache(maxAge time.Duration) *cutCache {
	return &cutCache{maxAge: maxAge, cuts: map[int64]cutEntry{}}
}

func (c *cutCache) get(channelID int64, now time.Time) ([]int64, bool) {
	if c.maxAge <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cuts[channelID]
	if !ok || now.Sub(e.at) >= c.maxAge {
		return nil, false
	}
	return e.starts, true
}

func (c *cutCache) put(channelID int64, starts []int64, now time.Time) {
	if c.maxAge <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.cuts) >= maxCuts {
		for id, e := range c.cuts {
			if now.Sub(e.at) >= c.maxAge {
				delete(c.cuts, id)
			}
		}
		if len(c.cuts) >= maxCuts {
			clear(c.cuts)
		}
	}
	c.cuts[channelID] = cutEntry{starts: starts, at: now}
}
