package kafkainput

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/stage"
	"github.com/announcer/announcer/services/ingress/internal/announce"
)

// fakeAnnouncer refuses bodies that contain "bad" and fails Publish as told.
type fakeAnnouncer struct {
	mu         sync.Mutex
	failFirst  int   // Publish fails this many times first
	publishErr error // error of those failures
	published  []announcement.Event
	keys       []announce.Key
	repeat     bool // Submit answers that the key's announcement was published before
}

func (f *fakeAnnouncer) PrepareJSON(body []byte, source string) (announcement.Event, error) {
	if strings.Contains(string(body), "bad") {
		return announcement.Event{}, &announce.ValidationError{Field: "message", Reason: "not base64"}
	}
	return announcement.Event{ID: string(body), Source: source}, nil
}

func (f *fakeAnnouncer) Submit(_ context.Context, ev *announcement.Event, key announce.Key) (announce.Outcome, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failFirst > 0 {
		f.failFirst--
		return announce.Outcome{}, f.publishErr
	}
	f.keys = append(f.keys, key)
	if f.repeat {
		return announce.Outcome{ID: "first", Replayed: true, NotPublished: true}, nil
	}
	f.published = append(f.published, *ev)
	return announce.Outcome{ID: ev.ID}, nil
}

func newHandler(t *testing.T, a Announcer) *Handler {
	t.Helper()
	h, err := New(a, backoff.Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond}, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestValidRecordBecomesAnEvent(t *testing.T) {
	a := &fakeAnnouncer{}
	h := newHandler(t, a)
	if err := h.Handle(context.Background(), kafka.Message{Topic: "in", Value: []byte("e1")}); err != nil {
		t.Fatal(err)
	}
	if len(a.published) != 1 || a.published[0].ID != "e1" || a.published[0].Source != "kafka:in" {
		t.Fatalf("published %+v", a.published)
	}
}

// The record key is the idempotency key, by digest (keys are any bytes),
// scoped by topic; a key reused for another body is a dead letter.
func TestRecordKeyIsTheIdempotencyKey(t *testing.T) {
	a := &fakeAnnouncer{}
	h := newHandler(t, a)
	for _, m := range []kafka.Message{
		{Topic: "in", Key: []byte("k\x00\xff"), Value: []byte("e1")},
		{Topic: "in", Value: []byte("e2")},
	} {
		if err := h.Handle(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	if k := a.keys[0]; k.Scope != "kafka:in" || len(k.Value) != 64 || k.Digest == "" {
		t.Fatalf("keyed record: %+v", k)
	}
	if k := a.keys[1]; k.Scope != "kafka:in@offset" || len(k.Value) != 64 || k.Value == a.keys[0].Value {
		t.Fatalf("unkeyed record: %+v, want a key of its position", k)
	}
	a.failFirst, a.publishErr = 1, announce.ErrKeyReused
	err := h.Handle(context.Background(), kafka.Message{Topic: "in", Key: []byte("k"), Value: []byte("e3")})
	var rej *stage.Reject
	if !errors.As(err, &rej) || rej.Label != "key_reused" {
		t.Fatalf("reused key: %v, want a dead letter", err)
	}
}

// A keyed record that repeats an announcement (same key, same body) is not
// announced again, and is counted: a producer that keys by channel and sends
// the same text twice must see it. An unkeyed record read again after a
// restart is the consumer's own replay and is not counted.
func TestAKeyedRepeatIsCounted(t *testing.T) {
	a := &fakeAnnouncer{repeat: true}
	reg := prometheus.NewRegistry()
	h, err := New(a, backoff.Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond}, zerolog.Nop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []kafka.Message{
		{Topic: "in", Key: []byte("news"), Value: []byte("e1")},
		{Topic: "in", Value: []byte("e2")},
	} {
		if err := h.Handle(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	if n := testutil.ToFloat64(h.m.repeats); n != 1 || len(a.published) != 0 {
		t.Fatalf("%v repeats counted, %d published; want 1 and none", n, len(a.published))
	}
}

// A record without a key, read again before its offset was committed, is
// submitted under the same key, so it takes the id it was published under;
// another record (or the same offset of a topic made again) gets its own.
func TestAnUnkeyedRecordReadAgainHasItsKey(t *testing.T) {
	a := &fakeAnnouncer{}
	h := newHandler(t, a)
	at := time.UnixMilli(1_700_000_000_000)
	for _, m := range []kafka.Message{
		{Topic: "in", Partition: 2, Offset: 7, Time: at, Value: []byte("e1")},
		{Topic: "in", Partition: 2, Offset: 7, Time: at, Value: []byte("e1")}, // read again
		{Topic: "in", Partition: 2, Offset: 8, Time: at, Value: []byte("e1")}, // the same body written twice
		{Topic: "in", Partition: 3, Offset: 7, Time: at, Value: []byte("e1")},
		{Topic: "in", Partition: 2, Offset: 7, Time: at.Add(time.Hour), Value: []byte("e1")}, // a topic made again
	} {
		if err := h.Handle(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	k := a.keys
	if k[0] != k[1] {
		t.Fatalf("read again: %+v, then %+v", k[0], k[1])
	}
	for i := 2; i < len(k); i++ {
		if k[i].Value == k[0].Value {
			t.Errorf("record %d has the key of record 0", i)
		}
	}
}

func TestBadRecordIsRejectedWithItsFieldCounted(t *testing.T) {
	a := &fakeAnnouncer{}
	h := newHandler(t, a)
	err := h.Handle(context.Background(), kafka.Message{Topic: "in", Value: []byte("bad")})
	var rej *stage.Reject
	if !errors.As(err, &rej) || !strings.Contains(rej.Reason, "message") {
		t.Fatalf("err = %v, want a Reject naming the field", err)
	}
	if len(a.published) != 0 {
		t.Fatal("a bad record was published")
	}
	if rej.Label != announce.FieldLabel("message") {
		t.Errorf("dead letter label %q, want the field", rej.Label)
	}
}

func TestTooLargeEventIsRejected(t *testing.T) {
	a := &fakeAnnouncer{failFirst: 1, publishErr: announce.ErrTooLarge}
	h := newHandler(t, a)
	var rej *stage.Reject
	if err := h.Handle(context.Background(), kafka.Message{Value: []byte("big")}); !errors.As(err, &rej) {
		t.Fatalf("err = %v, want a Reject", err)
	}
	if rej.Label != "too_large" {
		t.Errorf("dead letter label %q, want too_large", rej.Label)
	}
}

func TestKafkaRefusalsAreRetriedUntilTaken(t *testing.T) {
	a := &fakeAnnouncer{failFirst: 3, publishErr: errors.New("kafka: leader not available")}
	h := newHandler(t, a)
	if err := h.Handle(context.Background(), kafka.Message{Value: []byte("e1")}); err != nil {
		t.Fatal(err)
	}
	if len(a.published) != 1 {
		t.Fatalf("published %d events, want 1", len(a.published))
	}
	if v := testutil.ToFloat64(h.m.retries.WithLabelValues("publish")); v != 3 {
		t.Errorf("publish retries = %v, want 3", v)
	}
}

func TestShutdownEndsTheWaitWithoutARejection(t *testing.T) {
	a := &fakeAnnouncer{failFirst: 1 << 30, publishErr: errors.New("kafka down")}
	h := newHandler(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err := h.Handle(ctx, kafka.Message{Value: []byte("e1")})
	var rej *stage.Reject
	if err == nil || errors.As(err, &rej) {
		t.Fatalf("err = %v, want the context's error (the record stays uncommitted)", err)
	}
}
