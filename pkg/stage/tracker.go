package stage

import "github.com/segmentio/kafka-go"

type topicPartition struct {
	topic     string
	partition int
}

// partState is what one partition has fetched and not committed yet.
type partState struct {
	pending   map[int64]struct{} // offsets being handled
	done      map[int64]struct{} // offsets handled (durably) and not committed yet
	committed int64              // next offset committed by us, -1 before any
}

// tracker decides which offsets may be committed, and which fetched records
// need no handling because this process already has them. kafka-go commits
// "up to offset", so with several records of a partition in flight an offset
// is committable only when every earlier offset fetched from that partition
// is done. Offsets need not be contiguous (compaction, transaction markers).
//
// A record fetched again while its first copy is in flight or done but not
// committed (a rebalance after a broker restart re-reads from the last
// commit) is not handled again: that is what keeps a broker restart free of
// duplicates.
type tracker struct {
	parts map[topicPartition]*partState
}

func newTracker() *tracker { return &tracker{parts: map[topicPartition]*partState{}} }

func (t *tracker) part(m kafka.Message) *partState {
	k := topicPartition{m.Topic, m.Partition}
	p := t.parts[k]
	if p == nil {
		p = &partState{pending: map[int64]struct{}{}, done: map[int64]struct{}{}, committed: -1}
		t.parts[k] = p
	}
	return p
}

// admit records a fetched record and reports whether it needs handling: false
// when this process already committed it, is handling it or has handled it.
func (t *tracker) admit(m kafka.Message) bool {
	p := t.part(m)
	if m.Offset < p.committed {
		return false
	}
	if _, ok := p.pending[m.Offset]; ok {
		return false
	}
	if _, ok := p.done[m.Offset]; ok {
		return false
	}
	p.pending[m.Offset] = struct{}{}
	return true
}

// finished records a record whose handling is durable.
func (t *tracker) finished(m kafka.Message) {
	p := t.part(m)
	delete(p.pending, m.Offset)
	p.done[m.Offset] = struct{}{}
}

// committable returns, per partition whose commit point can advance, a
// message whose Offset+1 (what kafka-go commits) is the new commit point.
func (t *tracker) committable() []kafka.Message {
	var out []kafka.Message
	for k, p := range t.parts {
		if len(p.done) == 0 {
			continue
		}
		next, lowDone := int64(-1), int64(-1)
		for off := range p.done {
			next = max(next, off+1)
			if lowDone < 0 || off < lowDone {
				lowDone = off
			}
		}
		for off := range p.pending {
			next = min(next, off)
		}
		if lowDone < next && next > p.committed {
			out = append(out, kafka.Message{Topic: k.topic, Partition: k.partition, Offset: next - 1})
		}
	}
	return out
}

// committed records a successful commit of the messages committable returned
// and says how many done records it covered (their slots are free again).
func (t *tracker) committed(ms []kafka.Message) int {
	// A partition's state is kept after everything is committed: a new group
	// generation may still re-read from an older commit, and the state is a
	// few bytes per partition.
	freed := 0
	for _, m := range ms {
		p := t.parts[topicPartition{m.Topic, m.Partition}]
		if p == nil {
			continue
		}
		p.committed = max(p.committed, m.Offset+1)
		for off := range p.done {
			if off < p.committed {
				delete(p.done, off)
				freed++
			}
		}
	}
	return freed
}

// uncommitted counts the records fetched and not committed (in flight or done).
func (t *tracker) uncommitted() int {
	n := 0
	for _, p := range t.parts {
		n += len(p.pending) + len(p.done)
	}
	return n
}

// oldest is the lowest offset of a partition held and not committed.
func (t *tracker) oldest(k topicPartition) (int64, bool) {
	p := t.parts[k]
	if p == nil {
		return 0, false
	}
	low, ok := int64(0), false
	for _, set := range []map[int64]struct{}{p.pending, p.done} {
		for o := range set {
			if !ok || o < low {
				low, ok = o, true
			}
		}
	}
	return low, ok
}
