package publisher

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/kafkatest"
	"github.com/announcer/announcer/pkg/stacktest"
	"github.com/announcer/announcer/services/ingress/internal/announce"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newKafka returns the adapter on a writer of its own, closed when the test ends.
func newKafka(t *testing.T, brokers []string, opt Options) *Kafka {
	t.Helper()
	tr := &kafka.Transport{}
	w := kafkabus.NewWriter(brokers, kafkabus.WriterOptions{WriteTimeout: 5 * time.Second, MaxAttempts: 2})
	w.Transport = tr
	t.Cleanup(func() {
		_ = w.Close()
		tr.CloseIdleConnections()
	})
	k, err := New(w, opt, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func event(id string) announcement.Event {
	return announcement.Event{
		ID: id, Kind: announcement.KindUsers, Usernames: []string{"alice@localhost"},
		Template: `<message to='%s' from='announcer.localhost'/>`, Persist: true,
		CreatedAt: time.Now().UTC().Truncate(time.Millisecond), Source: announce.SourceREST,
	}
}

func TestPublishIsInTheTopicWhenItReturns(t *testing.T) {
	env := stacktest.Get(t)
	topics := kafkatest.Topics(t, env.KafkaBrokers, 3, "ingress_pub_ann", "ingress_pub_dlq")
	k := newKafka(t, env.KafkaBrokers, Options{AnnouncementsTopic: topics[0], DeadLetterTopic: topics[1], MaxMessageBytes: 1 << 20})

	want := event("01a2-test-id")
	if err := k.Publish(context.Background(), want); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	// Publish returned: the record must already be readable.
	recs := kafkatest.ReadAll(t, env.KafkaBrokers, topics[0], 1, 5*time.Second)
	if len(recs) != 1 {
		t.Fatalf("found %d records, want 1", len(recs))
	}
	if string(recs[0].Key) != want.ID {
		t.Errorf("key %q, want the announcement id %q", recs[0].Key, want.ID)
	}
	got, err := announcement.DecodeEvent(recs[0].Value)
	if err != nil {
		t.Fatalf("the record is not an event fanout accepts: %v", err)
	}
	if got.ID != want.ID || got.Template != want.Template || !got.CreatedAt.Equal(want.CreatedAt) || got.Usernames[0] != "alice@localhost" || !got.Persist {
		t.Errorf("read back %+v, want %+v", got, want)
	}
}

func TestDeadLetterKeepsTheRecordAndSaysWhy(t *testing.T) {
	env := stacktest.Get(t)
	topics := kafkatest.Topics(t, env.KafkaBrokers, 1, "ingress_pub_ann", "ingress_pub_dlq")
	k := newKafka(t, env.KafkaBrokers, Options{AnnouncementsTopic: topics[0], DeadLetterTopic: topics[1], MaxMessageBytes: 8192})

	src := kafka.Message{Topic: "input", Partition: 2, Offset: 41, Key: []byte("k1"), Value: []byte(`{"channel_id": "x"`),
		Headers: []kafka.Header{{Key: "trace", Value: []byte("abc")}}}
	if err := k.DeadLetter(context.Background(), src, "invalid body: truncated JSON"); err != nil {
		t.Fatal(err)
	}
	big := kafka.Message{Topic: "input", Partition: 0, Offset: 7, Key: []byte("k2"), Value: []byte(strings.Repeat("x", 20000))}
	if err := k.DeadLetter(context.Background(), big, "invalid body: 20000 bytes"); err != nil {
		t.Fatalf("an oversized dead letter must be cut to fit, not fail: %v", err)
	}

	recs := kafkatest.ReadAll(t, env.KafkaBrokers, topics[1], 2, 5*time.Second)
	if len(recs) != 2 {
		t.Fatalf("found %d dead letters, want 2", len(recs))
	}
	r := recs[0]
	if string(r.Value) != string(src.Value) || string(r.Key) != "k1" {
		t.Errorf("dead letter %q/%q, want the raw input", r.Key, r.Value)
	}
	if r.Headers[kafkabus.HeaderReason] != "invalid body: truncated JSON" || r.Headers[kafkabus.HeaderSource] != "input/2/41" || r.Headers["trace"] != "abc" {
		t.Errorf("headers %v", r.Headers)
	}
	r = recs[1]
	if r.Headers[HeaderTruncated] != "20000" || len(r.Value) >= 20000 || len(r.Value) == 0 {
		t.Errorf("oversized dead letter: %d bytes, headers %v", len(r.Value), r.Headers)
	}
}

func TestPublishTooLargeIsNotRetryable(t *testing.T) {
	k, err := New(kafkabus.NewWriter([]string{"127.0.0.1:1"}, kafkabus.WriterOptions{}), Options{AnnouncementsTopic: "a", DeadLetterTopic: "d", MaxMessageBytes: 8192}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	e := event("id")
	e.Template = strings.Repeat("x", 8192)
	if err := k.Publish(context.Background(), e); !errors.Is(err, announce.ErrTooLarge) {
		t.Errorf("err = %v, want ErrTooLarge (without asking Kafka)", err)
	}
}

func TestPublishToUnreachableKafkaIsUnavailable(t *testing.T) {
	for name, addr := range map[string]string{
		"closed port":      kafkatest.ClosedPort(t),
		"accept and close": kafkatest.AcceptAndClose(t),
	} {
		t.Run(name, func(t *testing.T) {
			k := newKafka(t, []string{addr}, Options{AnnouncementsTopic: "a", DeadLetterTopic: "d", MaxMessageBytes: 1 << 20})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := k.Publish(ctx, event("id")); !errors.Is(err, announce.ErrUnavailable) {
				t.Errorf("err = %v, want ErrUnavailable", err)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	w := kafkabus.NewWriter([]string{"127.0.0.1:1"}, kafkabus.WriterOptions{})
	for _, o := range []Options{
		{DeadLetterTopic: "d", MaxMessageBytes: 1 << 20},
		{AnnouncementsTopic: "a", MaxMessageBytes: 1 << 20},
		{AnnouncementsTopic: "a", DeadLetterTopic: "d", MaxMessageBytes: 100},
	} {
		if _, err := New(w, o, prometheus.NewRegistry()); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}
