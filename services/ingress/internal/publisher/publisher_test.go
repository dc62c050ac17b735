package publisher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/pkg/testkit/tcpproxy"
	"github.com/announcer/announcer/services/ingress/internal/announce"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newKafka returns the adapter on a writer of its own, closed when the test ends.
func newKafka(t *testing.T, brokers []string, opt Options) *Kafka {
	t.Helper()
	w := kafkabus.NewWriter(kafkabus.Plaintext(brokers), kafkabus.WriterOptions{WriteTimeout: 5 * time.Second, MaxAttempts: 2})
	t.Cleanup(func() { _ = w.Close() })
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
	topics := kafkatest.Topics(t, env.KafkaBrokers, 3, "ingress_pub_ann")
	k := newKafka(t, env.KafkaBrokers, Options{AnnouncementsTopic: topics[0], MaxMessageBytes: 1 << 20})

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

func TestPublishTooLargeIsNotRetryable(t *testing.T) {
	w := kafkabus.NewWriter(kafkabus.Plaintext([]string{"127.0.0.1:1"}), kafkabus.WriterOptions{})
	defer w.Close()
	k, err := New(w, Options{AnnouncementsTopic: "a", MaxMessageBytes: 8192}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	e := event("id")
	e.Template = strings.Repeat("x", 8192)
	if err := k.Publish(context.Background(), e); !errors.Is(err, announce.ErrTooLarge) {
		t.Errorf("err = %v, want ErrTooLarge (without asking Kafka)", err)
	}
	// The use case asks before it claims an idempotency key: the same answer.
	if err := k.CheckSize(e); !errors.Is(err, announce.ErrTooLarge) {
		t.Errorf("CheckSize = %v, want ErrTooLarge", err)
	}
	if err := k.CheckSize(event("id")); err != nil {
		t.Errorf("CheckSize of an event that fits = %v", err)
	}
}

func TestPublishToUnreachableKafkaIsUnavailable(t *testing.T) {
	for name, addr := range map[string]string{
		"closed port":      testkit.FreeAddr(t),
		"accept and close": tcpproxy.New(t, "127.0.0.1:1", tcpproxy.Refuse).Addr(),
	} {
		t.Run(name, func(t *testing.T) {
			k := newKafka(t, []string{addr}, Options{AnnouncementsTopic: "a", MaxMessageBytes: 1 << 20})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := k.Publish(ctx, event("id")); !errors.Is(err, announce.ErrUnavailable) {
				t.Errorf("err = %v, want ErrUnavailable", err)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	w := kafkabus.NewWriter(kafkabus.Plaintext([]string{"127.0.0.1:1"}), kafkabus.WriterOptions{})
	defer w.Close()
	for _, o := range []Options{
		{MaxMessageBytes: 1 << 20},
		{AnnouncementsTopic: "a", MaxMessageBytes: 100},
	} {
		if _, err := New(w, o, prometheus.NewRegistry()); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

// failingWriter fails its first calls with err, then writes.
type failingWriter struct {
	err   error
	fails int
	calls int
}

func (w *failingWriter) WriteMessages(ctx context.Context, msgs ...kafka.Message) error {
	w.calls++
	if w.calls <= w.fails {
		return kafka.WriteErrors{w.err}
	}
	return nil
}

// The writer makes one attempt per call: a leader that moved (or metadata of
// a topic created a moment ago) is retried while the request has time; a
// broker that refuses connections is a 503 at once.
func TestPublishRetriesWhatKafkaSaysWillPass(t *testing.T) {
	opt := Options{AnnouncementsTopic: "t", MaxMessageBytes: 1 << 20}
	moved := &failingWriter{err: kafka.NotLeaderForPartition, fails: 2}
	k, err := New(moved, opt, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Publish(context.Background(), event("01a2-moved")); err != nil || moved.calls != 3 {
		t.Fatalf("after 2 NotLeaderForPartition: %v in %d calls, want success in 3", err, moved.calls)
	}

	stuck := &failingWriter{err: kafka.LeaderNotAvailable, fails: 1 << 30}
	k, _ = New(stuck, opt, prometheus.NewRegistry())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := k.Publish(ctx, event("01a2-stuck")); !errors.Is(err, announce.ErrUnavailable) {
		t.Fatalf("no leader for the whole request: %v, want ErrUnavailable", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("gave up after %s, want about the request's 300ms", took)
	}

	// A broker restart leaves the writer a pooled connection the broker
	// closed: one more try, at once, on a new one.
	restarted := &failingWriter{err: fmt.Errorf("kafka.(*Client).Produce: %w", io.ErrUnexpectedEOF), fails: 1}
	reg := prometheus.NewRegistry()
	k, _ = New(restarted, opt, reg)
	if err := k.Publish(context.Background(), event("01a2-restarted")); err != nil || restarted.calls != 2 {
		t.Fatalf("after a closed connection: %v in %d calls, want success in 2", err, restarted.calls)
	}
	if n := testutil.ToFloat64(k.redials); n != 1 {
		t.Errorf("publish_redials_total = %v, want 1", n)
	}
	// Closed again on the new connection: the broker takes no connections, 503.
	closing := &failingWriter{err: syscall.ECONNRESET, fails: 1 << 30}
	k, _ = New(closing, opt, prometheus.NewRegistry())
	if err := k.Publish(context.Background(), event("01a2-closing")); !errors.Is(err, announce.ErrUnavailable) || closing.calls != 2 {
		t.Fatalf("connections closed each time: %v in %d calls, want ErrUnavailable after 2", err, closing.calls)
	}

	down := &failingWriter{err: errors.New("dial tcp 127.0.0.1:9092: connect: connection refused"), fails: 1 << 30}
	k, _ = New(down, opt, prometheus.NewRegistry())
	if err := k.Publish(context.Background(), event("01a2-down")); !errors.Is(err, announce.ErrUnavailable) || down.calls != 1 {
		t.Fatalf("refused connection: %v in %d calls, want ErrUnavailable at once", err, down.calls)
	}
}

// Before the topics exist a publish is a 503 that leaves the writer alone
// (its metadata cache would go on without them for seconds); then it writes.
func TestPublishWaitsForTheTopics(t *testing.T) {
	var ready atomic.Bool
	w := &failingWriter{}
	k, err := New(w, Options{AnnouncementsTopic: "t", MaxMessageBytes: 1 << 20, TopicsReady: ready.Load}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Publish(context.Background(), event("01a2-early")); !errors.Is(err, announce.ErrUnavailable) || w.calls != 0 {
		t.Fatalf("before the topics exist: %v after %d writes, want ErrUnavailable and no write", err, w.calls)
	}
	ready.Store(true)
	if err := k.Publish(context.Background(), event("01a2-later")); err != nil || w.calls != 1 {
		t.Fatalf("once the topics exist: %v after %d writes, want one write", err, w.calls)
	}
}

// After a broker restart, the first publish must not be a 503: the writer's
// pooled connection to the old broker process is dead, and the publisher
// tries once more on a new one.
func TestPublishAfterABrokerRestart(t *testing.T) {
	env := stacktest.Get(t)
	broker := stacktest.PrivateKafka(t, env)
	topics := kafkatest.Topics(t, broker.Brokers(), 1, "ingress_pub_restart")
	w := kafkabus.NewWriter(kafkabus.Plaintext(broker.Brokers()), kafkabus.WriterOptions{WriteTimeout: 5 * time.Second, MaxAttempts: 1})
	t.Cleanup(func() { _ = w.Close() })
	k, err := New(w, Options{AnnouncementsTopic: topics[0], MaxMessageBytes: 1 << 20}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Publish(context.Background(), event("01a2-before")); err != nil {
		t.Fatalf("before the restart: %v", err)
	}
	broker.Kill()
	broker.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := k.Publish(ctx, event("01a2-after")); err != nil {
		t.Fatalf("first publish after the restart: %v", err)
	}
	t.Logf("redials: %v", testutil.ToFloat64(k.redials))
}
