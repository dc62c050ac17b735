package stanza

// WellFormed exposes the strict document check so the external tests can
// hold rendered output to the same rules as templates.
func WellFormed(doc []byte) error { return wellFormed(doc) }

// CacheLen is the number of entries c holds, so tests can see the bound.
func CacheLen(c *Cache) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recency.Len()
}
