package stage

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
)

// newerBatch is a delivery batch written by a later version than this reader's.
func newerBatch(t *testing.T) []byte {
	t.Helper()
	b := announcement.Batch{AnnouncementID: "a1", Node: "node1", Template: "<message to='%s'/>",
		Recipients: []string{"alice"}, Version: announcement.BatchVersion + 1}
	v, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Decoded's verdicts: a record for a newer reader is an error to retry (not a
// Reject), never handed to handle; an undecodable one is a Reject.
func TestDecodedNewerVersionIsRetriedNotRejected(t *testing.T) {
	handled := 0
	h := Decoded(announcement.DecodeBatch, func(context.Context, announcement.Batch) error { handled++; return nil })

	err := h(context.Background(), kafka.Message{Value: newerBatch(t)})
	var newer *announcement.NewerVersionError
	var rej Rejection
	if !errors.As(err, &newer) || errors.As(err, &rej) || handled != 0 {
		t.Fatalf("newer version: err %v (a Rejection: %v), handled %d; want a NewerVersionError to retry", err, errors.As(err, &rej), handled)
	}
	if err := h(context.Background(), kafka.Message{Value: []byte("{not json")}); !errors.As(err, &rej) {
		t.Fatalf("undecodable: %v, want a Rejection", err)
	}
}

// Through the consumer, as during a rolling upgrade: a batch of a newer
// version is handled again (uncommitted, not dead-lettered) until a reader
// that understands it takes it, then committed; the dead-letter topic stays empty.
func TestConsumerRetriesANewerVersionRecord(t *testing.T) {
	r := newKafkaRig(t, 1)
	r.produce(t, string(newerBatch(t)))

	var attempts, handled atomic.Int32
	// The first attempts decode as this version does; then the "upgraded"
	// reader understands the newer version.
	decode := func(p []byte) (announcement.Batch, error) {
		if attempts.Add(1) <= 3 {
			return announcement.DecodeBatch(p)
		}
		return announcement.Batch{AnnouncementID: "a1"}, nil
	}
	c := r.run(t, Decoded(decode, func(context.Context, announcement.Batch) error {
		handled.Add(1)
		return nil
	}), ConsumerOptions{MaxInFlight: 1})
	r.waitCommitted(t, map[int]int64{0: 1})
	if attempts.Load() < 4 || handled.Load() != 1 {
		t.Fatalf("decoded %d times, handled %d; want retried past the newer version, then handled once", attempts.Load(), handled.Load())
	}
	if n := testkit.Gathered(t, c.reg, "dead_letters_total"); n != 0 {
		t.Fatalf("%v dead letters, want none", n)
	}
	if got := kafkatest.ReadAll(t, r.brokers, r.dlq, 0, time.Second); len(got) != 0 {
		t.Fatalf("the dead-letter topic holds %d records", len(got))
	}
}
