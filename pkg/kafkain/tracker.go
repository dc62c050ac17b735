package kafkain

import "github.com/segmentio/kafka-go"

type topicPartition struct {
	topic     string
	partition int
}

// partState is what one partition has in flight.
type partState struct {
	pending   map[int64]int // offset -> fetches not finished (a rebalance can fetch an offset twice)
	maxDone   int64         // highest finished offset, -1 before any
	floor     int64         // lowest offset fetched: a commit point at or below it says nothing new
	committed int64         // next offset already committed by us, -1 before any
}

// tracker decides which offsets may be committed. kafka-go commits "up to
// offset", so with several messages of a partition in flight an offset is
// committable only when every earlier offset fetched from that partition is
// finished. Offsets need not be contiguous (compaction, transaction markers).
type tracker struct {
	parts map[topicPartition]*partState
}

func newTracker() *tracker { return &tracker{parts: map[topicPartition]*partState{}} }

func (t *tracker) part(m kafka.Message) *partState {
	k := topicPartition{m.Topic, m.Partition}
	p := t.parts[k]
	if p == nil {
		p = &partState{pending: map[int64]int{}, maxDone: -1, committed: -1}
		t.parts[k] = p
	}
	return p
}

// fetched records a message handed to a handler.
func (t *tracker) fetched(m kafka.Message) {
	p := t.part(m)
	if len(p.pending) == 0 && p.maxDone < 0 || m.Offset < p.floor {
		p.floor = m.Offset
	}
	p.pending[m.Offset]++
}

// finished records a message whose handling is durable.
func (t *tracker) finished(m kafka.Message) {
	p := t.part(m)
	if p.pending[m.Offset] <= 1 {
		delete(p.pending, m.Offset)
	} else {
		p.pending[m.Offset]--
	}
	p.maxDone = max(p.maxDone, m.Offset)
}

// committable returns, per partition whose commit point advanced, a message
// whose Offset+1 (what kafka-go commits) is the new commit point.
func (t *tracker) committable() []kafka.Message {
	var out []kafka.Message
	for k, p := range t.parts {
		if p.maxDone < 0 {
			continue
		}
		next := p.maxDone + 1
		for off := range p.pending {
			next = min(next, off)
		}
		if next > p.committed && next > p.floor {
			out = append(out, kafka.Message{Topic: k.topic, Partition: k.partition, Offset: next - 1})
		}
	}
	return out
}

// committed records a successful commit of the messages committable returned.
func (t *tracker) committed(ms []kafka.Message) {
	for _, m := range ms {
		p := t.part(m)
		p.committed = max(p.committed, m.Offset+1)
		if len(p.pending) == 0 && p.maxDone < p.committed {
			// Idle and fully committed: forget it, so revoked partitions do not pile up.
			delete(t.parts, topicPartition{m.Topic, m.Partition})
		}
	}
}
