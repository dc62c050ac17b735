package archive

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
)

// refusedForSize reports whether the storage refused some of a write for
// its size, which no retry changes: kafka-go's MessageTooLargeError (a
// record over the writer's BatchBytes, the whole write refused unwritten),
// or a broker's MESSAGE_TOO_LARGE (over the topic's max.message.bytes) or
// RECORD_LIST_TOO_LARGE (over its segment.bytes) for a partition's records.
// kafka-go's WriteErrors do not unwrap: each is looked at.
func refusedForSize(err error) bool {
	var we kafka.WriteErrors
	if errors.As(err, &we) {
		return slices.ContainsFunc(we, sizeError)
	}
	return sizeError(err)
}

func sizeError(err error) bool {
	return errors.Is(err, kafka.MessageSizeTooLarge) || errors.Is(err, kafka.RecordListTooLarge)
}

// recordSize is what a record's size is checked by: its key and value, to which
// the storage adds a header and framing.
func recordSize(r Record) int { return len(r.Key) + len(r.Value) }

// writeAlone writes pending's copies one at a time while no other write of
// this archiver is under way, so that the storage's answer is about that
// copy alone: kafka-go sends the records of the writes to a partition in one
// produce request, which the broker refuses whole when it is too large, so a
// shared write may be refused for another batch's stanza, or for records
// too large only together. A copy refused alone is too large, and so is
// any as large on its topic (big refuses it unwritten). The smallest goes
// first, so a batch whose template alone is too large costs one write; then
// from the largest down, until one is stored: those left are smaller, they
// fit alone, and return to be written together. It returns what is left to
// write, and the error of a write that failed for another reason.
func (a *Archiver) writeAlone(ctx context.Context, announcementID string, pending []copyOf, big *oversize, refused map[int]bool) ([]copyOf, error) {
	a.writes.Lock()
	defer a.writes.Unlock()
	slices.SortStableFunc(pending, func(x, y copyOf) int { return cmp.Compare(recordSize(y.Record), recordSize(x.Record)) })
	for smallest := true; ; smallest = false {
		if pending = big.sift(pending, refused); len(pending) == 0 {
			return nil, nil
		}
		i := 0
		if smallest {
			i = len(pending) - 1
		}
		err := a.sink.Store(ctx, announcementID, []Record{pending[i].Record})
		switch {
		case err == nil:
			if pending = slices.Delete(pending, i, i+1); i == 0 {
				return pending, nil
			}
		case refusedForSize(err):
			big.refusedAlone(pending[i], err) // the next sift refuses it
		default:
			return pending, err
		}
	}
}

// oversize is what of one batch is too large for the storage, and the
// limits known: the writer's, and those learnt from copies refused alone.
type oversize struct {
	limit   int            // the writer's limit on key and value (Options.MaxRecordBytes); 0: none
	writer  int            // the smallest copy kafka-go refused alone (it counts headers and framing too)
	storage map[string]int // topic → the smallest copy its broker refused alone
	records int            // records not stored, a copy of each being too large
	largest int            // the largest of those copies
	warned  bool           // the batch's first refusal by the storage is logged
}

// over reports whether c is known too large.
func (o *oversize) over(c copyOf) bool {
	n := recordSize(c.Record)
	at := func(limit int) bool { return limit > 0 && n >= limit }
	return (o.limit > 0 && n > o.limit) || at(o.writer) || at(o.storage[c.Topic])
}

// sift takes the copies known too large out of pending, unwritten, and
// adds their records to refused.
func (o *oversize) sift(pending []copyOf, refused map[int]bool) []copyOf {
	return slices.DeleteFunc(pending, func(c copyOf) bool {
		if !o.over(c) {
			return false
		}
		o.largest = max(o.largest, recordSize(c.Record))
		if !refused[c.rec] {
			refused[c.rec] = true
			o.records++
		}
		return true
	})
}

// refusedAlone learns a limit from c, refused alone with err (sift then
// refuses c and its like).
func (o *oversize) refusedAlone(c copyOf, err error) {
	lower := func(at, n int) int {
		if at == 0 {
			return n
		}
		return min(at, n)
	}
	if errors.As(err, new(kafka.MessageTooLargeError)) {
		o.writer = lower(o.writer, recordSize(c.Record))
		return
	}
	if o.storage == nil {
		o.storage = map[string]int{}
	}
	o.storage[c.Topic] = lower(o.storage[c.Topic], recordSize(c.Record))
}

// reason is the dead letter's reason for b: what is stored, what is too
// large, and the limits that said so.
func (o *oversize) reason(b *announcement.Batch, stored int) string {
	var limits []string
	if o.limit > 0 && o.largest > o.limit {
		limits = append(limits, fmt.Sprintf("the writer's limit of %d bytes ([bus] max_message_bytes)", o.limit))
	}
	if o.writer > 0 {
		limits = append(limits, fmt.Sprintf("the writer refused %d bytes, headers counted ([bus] max_message_bytes)", o.writer))
	}
	for _, topic := range slices.Sorted(maps.Keys(o.storage)) {
		limits = append(limits, fmt.Sprintf("topic %s refused %d bytes (its max.message.bytes)", topic, o.storage[topic]))
	}
	return fmt.Sprintf("announcement %s, batch %d of %d recipients: %d stored, %d too large to store, the largest %d bytes with its key: %s; the dead letter holds the whole batch",
		b.AnnouncementID, b.Seq, len(b.Recipients), stored, o.records, o.largest, strings.Join(limits, "; "))
}
