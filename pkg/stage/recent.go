package stage

import (
	"crypto/sha256"

	"github.com/segmentio/kafka-go"
)

// recent remembers the last n records admitted, by a hash of their topic, key
// and value, in insertion order: a bounded set for spotting identical copies.
type recent struct {
	ring []digest
	next int
	set  map[digest]int // digest -> copies in ring
}

type digest [16]byte

func newRecent(n int) *recent {
	if n <= 0 {
		return nil
	}
	return &recent{ring: make([]digest, 0, n), set: make(map[digest]int, n)}
}

func sum(m kafka.Message) digest {
	h := sha256.New()
	// Lengths first, so that moving bytes between fields changes the hash.
	var n [24]byte
	put := func(i, v int) {
		for b := range 8 {
			n[i*8+b] = byte(v >> (8 * b))
		}
	}
	put(0, len(m.Topic))
	put(1, len(m.Key))
	put(2, len(m.Value))
	h.Write(n[:])
	h.Write([]byte(m.Topic))
	h.Write(m.Key)
	h.Write(m.Value)
	var d digest
	copy(d[:], h.Sum(nil))
	return d
}

// check reports whether an identical record was seen, and remembers m.
func (r *recent) check(m kafka.Message) bool {
	if r == nil {
		return false
	}
	d := sum(m)
	if r.set[d] > 0 {
		return true
	}
	if len(r.ring) < cap(r.ring) {
		r.ring = append(r.ring, d)
	} else {
		old := r.ring[r.next]
		if r.set[old]--; r.set[old] <= 0 {
			delete(r.set, old)
		}
		r.ring[r.next] = d
		r.next = (r.next + 1) % len(r.ring)
	}
	r.set[d]++
	return false
}
