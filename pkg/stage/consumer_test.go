package stage

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
)

type kafkaRig struct {
	brokers []string
	topic   string
	dlq     string
	group   string
	parts   int
}

func newKafkaRig(t *testing.T, parts int) *kafkaRig {
	t.Helper()
	env := stacktest.Get(t)
	r := &kafkaRig{
		brokers: env.KafkaBrokers, topic: stacktest.Name("kin"), dlq: stacktest.Name("kin_dlq"),
		group: stacktest.Name("kin_group"), parts: parts,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kafkabus.EnsureTopics(ctx, kafkabus.Plaintext(r.brokers),
		kafkabus.Topic{Name: r.topic, Partitions: parts, ReplicationFactor: 1},
		kafkabus.Topic{Name: r.dlq, Partitions: 1, ReplicationFactor: 1}); err != nil {
		t.Fatal(err)
	}
	kafkatest.DeleteAtEnd(t, r.brokers, r.topic, r.dlq)
	return r
}

// produce writes values to the topic; message i goes to partition i % parts.
func (r *kafkaRig) produce(t *testing.T, values ...string) {
	t.Helper()
	w := kafkabus.NewWriter(kafkabus.Plaintext(r.brokers), kafkabus.WriterOptions{BatchTimeout: time.Millisecond, RoundRobin: true})
	defer w.Close()
	msgs := make([]kafka.Message, len(values))
	for i, v := range values {
		msgs[i] = kafka.Message{Topic: r.topic, Value: []byte(v)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

// committed returns the group's committed offset per partition (-1 = none).
func (r *kafkaRig) committed(t *testing.T) map[int]int64 {
	t.Helper()
	return kafkatest.Committed(t, r.brokers, r.group, r.topic, r.parts)
}

func (r *kafkaRig) waitCommitted(t *testing.T, want map[int]int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := r.committed(t)
		ok := true
		for p, o := range want {
			if got[p] != o {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("committed %v, want %v", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type running struct {
	stop func() error  // cancels Run's context and returns its error
	done chan struct{} // closed when Run returned on its own or after stop
	reg  *prometheus.Registry
}

// run starts a consumer with h until the test ends.
func (r *kafkaRig) run(t *testing.T, h Handler, opt ConsumerOptions) running {
	t.Helper()
	reader := kafkabus.NewReader(kafkabus.Plaintext(r.brokers), r.group, []string{r.topic}, kafkabus.ReaderOptions{MaxWait: 50 * time.Millisecond})
	dlq := kafkabus.NewWriter(kafkabus.Plaintext(r.brokers), kafkabus.WriterOptions{WriteTimeout: 10 * time.Second})
	if opt.Retry.Initial == 0 {
		opt.Retry = backoff.Policy{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	}
	reg := prometheus.NewRegistry()
	c := NewConsumer(&kafkabus.DeadLetters{W: dlq, Topic: r.dlq}, h, opt, testkit.Log(t, zerolog.WarnLevel), reg)
	ctx, cancel := context.WithCancel(context.Background())
	var err error
	done := make(chan struct{})
	go func() { err = c.Run(ctx, reader); close(done) }()
	var once sync.Once
	stop := func() error {
		once.Do(func() {
			cancel()
			<-done
			_ = reader.Close()
			_ = dlq.Close()
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return running{stop: stop, done: done, reg: reg}
}

func values(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "v" + strconv.Itoa(i)
	}
	return out
}

// Every message is handled, with several in flight finishing out of order,
// and the group ends committed at the end of every partition.
func TestConsumerHandlesAllAndCommitsToTheEnd(t *testing.T) {
	r := newKafkaRig(t, 3)
	const n = 60
	r.produce(t, values(n)...)
	var mu sync.Mutex
	seen := map[string]int{}
	var inFlight, maxInFlight int
	stop := r.run(t, func(ctx context.Context, m kafka.Message) error {
		mu.Lock()
		inFlight++
		maxInFlight = max(maxInFlight, inFlight)
		mu.Unlock()
		time.Sleep(time.Duration(rand.N(10)) * time.Millisecond)
		mu.Lock()
		inFlight--
		seen[string(m.Value)]++
		mu.Unlock()
		return nil
	}, ConsumerOptions{MaxInFlight: 4})
	r.waitCommitted(t, map[int]int64{0: n / 3, 1: n / 3, 2: n / 3})
	if err := stop.stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != n {
		t.Fatalf("%d distinct messages handled, want %d", len(seen), n)
	}
	if maxInFlight > 4 {
		t.Fatalf("%d messages in flight at once, max 4", maxInFlight)
	}
	if maxInFlight < 2 {
		t.Fatalf("never more than %d in flight: the test does not exercise out-of-order completion", maxInFlight)
	}
}

// An offset is not committed past an earlier one still in flight.
func TestConsumerCommitWaitsForEarlierOffsets(t *testing.T) {
	r := newKafkaRig(t, 1)
	r.produce(t, values(5)...)
	release := make(chan struct{})
	var mu sync.Mutex
	done := 0
	c := r.run(t, func(ctx context.Context, m kafka.Message) error {
		if m.Offset == 0 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		mu.Lock()
		done++
		mu.Unlock()
		return nil
	}, ConsumerOptions{MaxInFlight: 5})
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		d := done
		mu.Unlock()
		if d == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of offsets 1..4 handled", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a wrong commit would have happened by now
	if got := r.committed(t)[0]; got != -1 {
		t.Fatalf("committed %d while offset 0 is in flight", got)
	}
	// The in-flight gauge counts the four handled and the one being handled.
	if got := testkit.Gathered(t, c.reg, "in_flight"); got != 5 {
		t.Fatalf("in_flight %v while offset 0 holds the commit of 5 records, want 5", got)
	}
	close(release)
	r.waitCommitted(t, map[int]int64{0: 5})
	testkit.Eventually(t, 5*time.Second, "in_flight back to 0", func() bool { return testkit.Gathered(t, c.reg, "in_flight") == 0 })
}

// Rejected messages go to the dead-letter topic with the reason and their
// source, and are committed.
func TestConsumerDeadLetters(t *testing.T) {
	r := newKafkaRig(t, 1)
	r.produce(t, "ok1", "bad", "ok2")
	r.run(t, func(ctx context.Context, m kafka.Message) error {
		if string(m.Value) == "bad" {
			return &Reject{Reason: "not a batch"}
		}
		return nil
	}, ConsumerOptions{MaxInFlight: 2})
	r.waitCommitted(t, map[int]int64{0: 3})
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: r.brokers, Topic: r.dlq, Partition: 0, MaxWait: 50 * time.Millisecond})
	defer rd.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := rd.ReadMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := map[string]string{}
	for _, x := range m.Headers {
		h[x.Key] = string(x.Value)
	}
	if string(m.Value) != "bad" || h[kafkabus.HeaderReason] != "not a batch" || h[kafkabus.HeaderSource] != r.topic+"/0/1" {
		t.Fatalf("dead letter %q with headers %v", m.Value, h)
	}
}

// On shutdown, a message in flight finishes (within the drain timeout) and
// is committed.
func TestConsumerDrainsOnShutdown(t *testing.T) {
	r := newKafkaRig(t, 1)
	r.produce(t, "slow")
	started := make(chan struct{})
	stop := r.run(t, func(ctx context.Context, m kafka.Message) error {
		close(started)
		time.Sleep(300 * time.Millisecond)
		return ctx.Err()
	}, ConsumerOptions{MaxInFlight: 1, DrainTimeout: 10 * time.Second})
	<-started
	if err := stop.stop(); err != nil {
		t.Fatal(err)
	}
	if got := r.committed(t)[0]; got != 1 {
		t.Fatalf("committed %d after draining, want 1", got)
	}
}

// A handler failure is not a reason to stop: the record is handled again,
// with backoff, until it works, and only then committed.
func TestConsumerRetriesHandlerFailures(t *testing.T) {
	r := newKafkaRig(t, 1)
	r.produce(t, "a", "b")
	var calls atomic.Int32
	c := r.run(t, func(ctx context.Context, m kafka.Message) error {
		if string(m.Value) == "a" && calls.Add(1) < 4 {
			return errors.New("mysql: connection refused")
		}
		return nil
	}, ConsumerOptions{MaxInFlight: 2})
	r.waitCommitted(t, map[int]int64{0: 2})
	select {
	case <-c.done:
		t.Fatal("the consumer stopped")
	default:
	}
	if n := calls.Load(); n != 4 {
		t.Fatalf("record a handled %d times, want 3 failures and 1 success", n)
	}
	if err := c.stop(); err != nil {
		t.Fatal(err)
	}
}

// A record waiting out its retry backoff when the drain starts is not tried
// again: the drain does not wait for the backoff, and a new attempt (a whole
// batch sent again, perhaps cut off halfway) does not start while draining.
// The record stays uncommitted for the next reader.
func TestDrainEndsARetryBackoff(t *testing.T) {
	b := newFakeBroker("a")
	var calls atomic.Int32
	h := func(context.Context, kafka.Message) error {
		if calls.Add(1) == 1 {
			return errors.New("mysql: connection refused")
		}
		return nil
	}
	c := NewConsumer(nopDLQ{}, h, ConsumerOptions{MaxInFlight: 1, DrainTimeout: 10 * time.Second,
		Retry: backoff.Policy{Initial: 5 * time.Second, Max: 5 * time.Second}}, testkit.Log(t, zerolog.ErrorLevel), prometheus.NewRegistry())
	stop := runUntilStopped(t, c, b)
	testkit.Eventually(t, 5*time.Second, "the first attempt", func() bool { return calls.Load() == 1 })
	time.Sleep(50 * time.Millisecond) // into the backoff
	if took := stop(); took > 2*time.Second {
		t.Errorf("the drain took %v: it waited out the backoff", took)
	}
	if _, committed := b.state(); calls.Load() != 1 || committed > 0 {
		t.Fatalf("%d attempts, committed %d: want no attempt while draining, nothing committed", calls.Load(), committed)
	}
}

// stalledCommits is a broker whose commits hang until their context ends
// while stall is set (a coordinator away), as kafka-go's do.
type stalledCommits struct {
	*fakeBroker
	stall atomic.Bool
}

func (b *stalledCommits) CommitMessages(ctx context.Context, ms ...kafka.Message) error {
	if b.stall.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	return b.fakeBroker.CommitMessages(ctx, ms...)
}

// A commit hanging when the drain ends is cut short, and the final commit
// (the coordinator back) covers what it carried: the stop takes the final
// commit's time, not also the hung one's, which could overrun the shutdown's
// budget and exit with nothing committed.
func TestDrainCutsACommitUnderWayShort(t *testing.T) {
	b := &stalledCommits{fakeBroker: newFakeBroker("a")}
	b.stall.Store(true)
	var calls atomic.Int32
	h := func(context.Context, kafka.Message) error { calls.Add(1); return nil }
	c := NewConsumer(nopDLQ{}, h, ConsumerOptions{MaxInFlight: 1, DrainTimeout: time.Second}, testkit.Log(t, zerolog.ErrorLevel), prometheus.NewRegistry())
	stop := runUntilStopped(t, c, b)
	testkit.Eventually(t, 5*time.Second, "the record handled", func() bool { return calls.Load() == 1 })
	time.Sleep(100 * time.Millisecond) // its commit under way, hanging
	b.stall.Store(false)
	if took := stop(); took > 3*time.Second {
		t.Errorf("the stop took %v: it waited for the hung commit", took)
	}
	if _, committed := b.state(); committed != 1 {
		t.Fatalf("committed %d, want 1 by the final commit", committed)
	}
}
