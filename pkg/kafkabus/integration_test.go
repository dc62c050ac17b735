package kafkabus_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
)

// The one dead-letter writer on a real topic: the raw record with why and
// where from, and a record too large for the topic cut to fit, not refused,
// by a writer that refuses records over the limit as the services' does.
func TestDeadLettersKeepTheRecordAndSayWhy(t *testing.T) {
	env := stacktest.Get(t)
	topic := kafkatest.Topics(t, env.KafkaBrokers, 1, "dlq")[0]
	w := kafkabus.NewWriter(kafkabus.Plaintext(env.KafkaBrokers), kafkabus.WriterOptions{WriteTimeout: 5 * time.Second, BatchBytes: 8192})
	defer w.Close()
	dl := &kafkabus.DeadLetters{W: w, Topic: topic, MaxBytes: 8192}

	src := kafka.Message{Topic: "input", Partition: 2, Offset: 41, Key: []byte("k1"), Value: []byte(`{"channel_id": "x"`),
		Headers: []kafka.Header{{Key: "trace", Value: []byte("abc")}}}
	if err := dl.DeadLetter(context.Background(), src, "invalid body: truncated JSON"); err != nil {
		t.Fatal(err)
	}
	big := kafka.Message{Topic: "input", Partition: 0, Offset: 7, Key: []byte("k2"), Value: []byte(strings.Repeat("x", 20000))}
	if err := dl.DeadLetter(context.Background(), big, "invalid body: 20000 bytes"); err != nil {
		t.Fatalf("an oversized dead letter must be cut to fit, not fail: %v", err)
	}
	big.Headers = []kafka.Header{{Key: "baggage", Value: []byte(strings.Repeat("b", 4500))}}
	if err := dl.DeadLetter(context.Background(), big, "invalid body: 20000 bytes and 4500 of headers"); err != nil {
		t.Fatalf("an oversized dead letter with large headers must be cut to fit, not fail: %v", err)
	}

	recs := kafkatest.ReadAll(t, env.KafkaBrokers, topic, 3, 5*time.Second)
	if len(recs) != 3 {
		t.Fatalf("found %d dead letters, want 3", len(recs))
	}
	if h := recs[2].Headers; h[kafkabus.HeaderHeadersDropped] != "1" || h[kafkabus.HeaderTruncated] != "20000" {
		t.Errorf("dead letter with large headers: headers %v", h)
	}
	r := recs[0]
	if string(r.Value) != string(src.Value) || string(r.Key) != "k1" {
		t.Errorf("dead letter %q/%q, want the raw input", r.Key, r.Value)
	}
	if r.Headers[kafkabus.HeaderReason] != "invalid body: truncated JSON" || r.Headers[kafkabus.HeaderSource] != "input/2/41" || r.Headers["trace"] != "abc" {
		t.Errorf("headers %v", r.Headers)
	}
	r = recs[1]
	if r.Headers[kafkabus.HeaderTruncated] != "20000" || len(r.Value) >= 20000 || len(r.Value) == 0 {
		t.Errorf("oversized dead letter: %d bytes, headers %v", len(r.Value), r.Headers)
	}
}

// A writer given its topics keeps the metadata of those alone: it writes
// them, and a topic outside them is unknown to it, though it exists.
func TestWriterMetadataCoversItsTopics(t *testing.T) {
	env := stacktest.Get(t)
	topics := kafkatest.Topics(t, env.KafkaBrokers, 1, "meta_own", "meta_other")
	own, other := topics[0], topics[1]
	write := func(w *kafkabus.Writer, topic string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		return w.WriteMessages(ctx, kafka.Message{Topic: topic, Value: []byte("x")})
	}

	scoped := kafkabus.NewWriter(kafkabus.Plaintext(env.KafkaBrokers), kafkabus.WriterOptions{WriteTimeout: 3 * time.Second, MaxAttempts: 1, Topics: []string{own}})
	defer scoped.Close()
	if err := write(scoped, own); err != nil {
		t.Fatalf("write to its own topic: %v", err)
	}
	if err := write(scoped, other); err == nil {
		t.Fatalf("a writer scoped to %s wrote to %s: its metadata covers every topic", own, other)
	}

	whole := kafkabus.NewWriter(kafkabus.Plaintext(env.KafkaBrokers), kafkabus.WriterOptions{WriteTimeout: 3 * time.Second, MaxAttempts: 1})
	defer whole.Close()
	if err := write(whole, other); err != nil {
		t.Fatalf("a writer without topics knows every topic: %v", err)
	}
}

// A broker that stalls for a moment (a GC pause, a busy machine) answers an
// idle fetch late. The reader keeps its connection through such pauses: a
// reader whose deadline passed first dropped it and dialed again, asking
// for metadata and offsets, every time the broker was 63 ms late.
func TestReaderKeepsItsConnectionThroughBrokerPauses(t *testing.T) {
	env := stacktest.Get(t)
	broker := stacktest.PrivateKafka(t, env)
	topic := kafkatest.Topics(t, broker.Brokers(), 1, "pauses")[0]
	r := kafkabus.NewReader(kafkabus.Plaintext(broker.Brokers()), stacktest.Name("pauses"), []string{topic}, kafkabus.ReaderOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	fetched := make(chan error, 1)
	go func() { _, err := r.FetchMessage(ctx); fetched <- err }()
	defer func() {
		cancel()
		<-fetched
		_ = r.Close()
	}()
	testkit.Eventually(t, 30*time.Second, "the reader joined and fetches", func() bool {
		s := r.Stats()
		return s.Fetches > 0 && s.Rebalances == 0 // Stats restarts its counters: joined before this call
	})
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
		broker.Pause()
		time.Sleep(200 * time.Millisecond)
		broker.Resume()
		time.Sleep(150 * time.Millisecond)
	}
	if s := r.Stats(); s.Dials != 0 || s.Errors != 0 || s.Fetches == 0 {
		t.Fatalf("through 200 ms broker pauses: %d dials, %d errors, %d fetches; want no dial and no error", s.Dials, s.Errors, s.Fetches)
	}
}

// fivePerThree is a new topic of 3 partitions holding 5 records, with a
// client of it and a context for the test.
func fivePerThree(t *testing.T, prefix string) (stacktest.Env, string, context.Context, *kafkabus.Client) {
	t.Helper()
	env := stacktest.Get(t)
	topic := kafkatest.Topics(t, env.KafkaBrokers, 3, prefix)[0]
	// No keys: the records go round the partitions.
	x := kafka.Message{Value: []byte("x")}
	kafkatest.Produce(t, env.KafkaBrokers, topic, x, x, x, x, x)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	c := kafkabus.NewClient(kafkabus.Plaintext(env.KafkaBrokers), 10*time.Second, topic)
	t.Cleanup(c.Close)
	return env, topic, ctx, c
}

// Log starts and ends of a topic's partitions, in one request per leader.
func TestOffsetsOfEveryPartition(t *testing.T) {
	_, topic, ctx, c := fivePerThree(t, "offsets")
	ends, err := c.Offsets(ctx, kafka.LastOffset, map[string][]int{topic: {0, 1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	if e := ends[topic]; len(e) != 3 || e[0]+e[1]+e[2] != 5 || min(e[0], e[1], e[2]) < 1 {
		t.Fatalf("log ends %v, want 5 records over the 3 partitions", e)
	}
	starts, err := c.Offsets(ctx, kafka.FirstOffset, map[string][]int{topic: {0, 2}})
	if err != nil {
		t.Fatal(err)
	}
	if s := starts[topic]; len(s) != 2 || s[0] != 0 || s[2] != 0 {
		t.Fatalf("log starts %v, want 0 for partitions 0 and 2", s)
	}
	if _, err := c.Offsets(ctx, kafka.LastOffset, map[string][]int{topic: {7}}); err == nil {
		t.Fatal("the offset of a partition the topic does not have: no error")
	}
}

// PinUncommitted commits the log end of each partition a group never
// committed, leaves committed ones alone, and refuses a group with members.
func TestPinUncommitted(t *testing.T) {
	env, topic, ctx, c := fivePerThree(t, "pin")
	x := kafka.Message{Value: []byte("x")}
	group := stacktest.Name("pin_group")
	kafkatest.DeleteGroupsAtEnd(t, env.KafkaBrokers, group)

	n, err := pin(ctx, c, group, topic)
	if err != nil || n != 3 {
		t.Fatalf("first pin: %d partitions, %v; want 3", n, err)
	}
	ends, err := c.Offsets(ctx, kafka.LastOffset, map[string][]int{topic: {0, 1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	committed := kafkatest.Committed(t, env.KafkaBrokers, group, topic, 3)
	for p, end := range ends[topic] {
		if committed[p] != end {
			t.Fatalf("committed %v, want the log ends %v", committed, ends[topic])
		}
	}
	kafkatest.Produce(t, env.KafkaBrokers, topic, x, x, x)
	if n, err := pin(ctx, c, group, topic); err != nil || n != 0 {
		t.Fatalf("second pin: %d partitions, %v; want none", n, err)
	}
	if again := kafkatest.Committed(t, env.KafkaBrokers, group, topic, 3); fmt.Sprint(again) != fmt.Sprint(committed) {
		t.Fatalf("committed offsets moved from %v to %v", committed, again)
	}

	// A topic that does not exist yet has nothing to pin.
	missing := stacktest.Name("pin_missing")
	if n, err := pin(ctx, c, group, missing); err != nil || n != 0 {
		t.Fatalf("pin of a topic that does not exist: %d partitions, %v; want none, no error", n, err)
	}

	// A group with a member: its offsets are the member's to commit.
	busy := stacktest.Name("pin_busy")
	kafkatest.DeleteGroupsAtEnd(t, env.KafkaBrokers, busy)
	r := kafkabus.NewReader(kafkabus.Plaintext(env.KafkaBrokers), busy, []string{topic}, kafkabus.ReaderOptions{StartAtEnd: true})
	defer r.Close()
	go func() { _, _ = r.FetchMessage(ctx) }()
	testkit.Eventually(t, 20*time.Second, "the reader in its group", func() bool {
		return kafkatest.AssignedMembers(env.KafkaBrokers, busy) == 1
	})
	if _, err := pin(ctx, c, busy, topic); !errors.Is(err, kafkabus.ErrGroupBusy) {
		t.Fatalf("pin of a group with a member: %v, want ErrGroupBusy", err)
	}
}

// pin is PinUncommitted, tried again while the group's coordinator is not
// ready (a broker just started is still loading its offsets topic), as the
// stage runtime tries again.
func pin(ctx context.Context, c *kafkabus.Client, group, topic string) (int, error) {
	for {
		n, err := c.PinUncommitted(ctx, group, []string{topic})
		if !errors.Is(err, kafka.NotCoordinatorForGroup) && !errors.Is(err, kafka.GroupCoordinatorNotAvailable) &&
			!errors.Is(err, kafka.GroupLoadInProgress) || ctx.Err() != nil {
			return n, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
