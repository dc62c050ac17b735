package stage

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/testkit"
)

// fakeBroker is a scripted consumer-group reader: what a real broker does
// during an outage (fetches and commits fail) and after a restart (records
// re-read from the last commit), without one.
type fakeBroker struct {
	mu         sync.Mutex
	log        []kafka.Message // partition 0, offset = index
	next       int             // next offset to hand out
	committed  int64           // next offset committed, -1 before any
	fetchDown  bool
	commitDown bool
	commits    int
	changed    chan struct{}
}

func newFakeBroker(values ...string) *fakeBroker {
	b := &fakeBroker{committed: -1, changed: make(chan struct{})}
	for i, v := range values {
		b.log = append(b.log, kafka.Message{Topic: "t", Offset: int64(i), Value: []byte(v)})
	}
	return b
}

func (b *fakeBroker) notify() {
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *fakeBroker) setDown(fetch, commit bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fetchDown, b.commitDown = fetch, commit
	b.notify()
}

// restart makes the next fetches start again at the last commit, as a new
// group generation does.
func (b *fakeBroker) restart() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.next = int(max(b.committed, 0))
	b.notify()
}

func (b *fakeBroker) FetchMessage(ctx context.Context) (kafka.Message, error) {
	for {
		b.mu.Lock()
		if b.fetchDown {
			b.mu.Unlock()
			return kafka.Message{}, errors.New("dial tcp 127.0.0.1:9092: connect: connection refused")
		}
		if b.next < len(b.log) {
			m := b.log[b.next]
			b.next++
			b.mu.Unlock()
			return m, nil
		}
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return kafka.Message{}, ctx.Err()
		}
	}
}

func (b *fakeBroker) CommitMessages(_ context.Context, ms ...kafka.Message) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.commitDown {
		return errors.New("coordinator not available")
	}
	for _, m := range ms {
		b.committed = max(b.committed, m.Offset+1)
	}
	b.commits++
	b.notify()
	return nil
}

func (b *fakeBroker) state() (next int, committed int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.next, b.committed
}

type nopDLQ struct{}

func (nopDLQ) DeadLetter(context.Context, kafka.Message, string) error { return nil }

// counting is a handler that records how often each value was handled.
type counting struct {
	mu   sync.Mutex
	seen map[string]int
}

func (c *counting) handle(_ context.Context, m kafka.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]int{}
	}
	c.seen[string(m.Value)]++
	return nil
}

func (c *counting) total() (distinct, all int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.seen {
		all += n
	}
	return len(c.seen), all
}

func startConsumer(t *testing.T, b *fakeBroker, h Handler, opt ConsumerOptions) (*Consumer, *prometheus.Registry, func()) {
	t.Helper()
	opt.Retry = backoff.Policy{Initial: time.Millisecond, Max: 5 * time.Millisecond}
	reg := prometheus.NewRegistry()
	c := NewConsumer(nopDLQ{}, h, opt, testkit.Log(t, zerolog.ErrorLevel), reg)
	stop := runUntilStopped(t, c, b)
	return c, reg, func() { stop() }
}

// runUntilStopped runs c on r until the returned stop (or the test's end)
// ends the run; stop fails the test when Run fails, and says how long it took.
func runUntilStopped(t *testing.T, c *Consumer, r Fetcher) (stop func() time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, r) }()
	var (
		once sync.Once
		took time.Duration
	)
	stop = func() time.Duration {
		once.Do(func() {
			start := time.Now()
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			took = time.Since(start)
		})
		return took
	}
	t.Cleanup(func() { stop() })
	return stop
}

// During an outage the consumer neither exits nor gets ahead of its commits:
// it takes at most MaxInFlight records, reports Kafka as failing, and once
// the broker is back it commits what it finished at once and goes on.
func TestConsumerRidesOutAnOutageWithinItsBound(t *testing.T) {
	b := newFakeBroker(values(1000)...)
	var h counting
	const bound = 4
	paced := func(ctx context.Context, m kafka.Message) error {
		time.Sleep(time.Millisecond)
		return h.handle(ctx, m)
	}
	c, reg, _ := startConsumer(t, b, paced, ConsumerOptions{MaxInFlight: bound})
	testkit.Eventually(t, 10*time.Second, "the first records committed", func() bool { _, cm := b.state(); return cm >= 5 })

	// Commits fail first (the coordinator is gone) while fetches still work:
	// the consumer must stop taking records at its bound.
	b.setDown(false, true)
	time.Sleep(100 * time.Millisecond) // many commit attempts fail meanwhile
	next, committed := b.state()
	if taken := int64(next) - committed; taken > bound {
		t.Fatalf("%d records taken beyond the last commit while commits fail, bound %d", taken, bound)
	}
	b.setDown(true, true)
	time.Sleep(50 * time.Millisecond)
	if again, _ := b.state(); again != next {
		t.Fatalf("fetched %d records while fetches fail", again-next)
	}
	if err := c.Ready(context.Background()); err == nil {
		t.Fatal("ready while every commit fails")
	}
	if n := testutil.ToFloat64(c.m.kafkaErrors.WithLabelValues(opCommit)); n == 0 {
		t.Fatal("failed commits not counted")
	}

	b.setDown(false, false)
	testkit.Eventually(t, 10*time.Second, "everything committed after the outage", func() bool { _, cm := b.state(); return cm == 1000 })
	if distinct, all := h.total(); distinct != 1000 || all != 1000 {
		t.Fatalf("handled %d records (%d distinct), want each of 1000 once", all, distinct)
	}
	testkit.Eventually(t, 10*time.Second, "ready again", func() bool { return c.Ready(context.Background()) == nil })
	if n := testutil.ToFloat64(c.m.outages); n < 1 {
		t.Fatalf("outages %v", n)
	}
	_ = reg
}

// After a broker restart kafka-go re-reads from the last commit: records this
// process already handled are committed, not handled again.
func TestConsumerRestartedBrokerCausesNoDuplicates(t *testing.T) {
	b := newFakeBroker(values(20)...)
	var h counting
	release := make(chan struct{})
	slow := func(ctx context.Context, m kafka.Message) error {
		if m.Offset >= 10 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return h.handle(ctx, m)
	}
	c, _, _ := startConsumer(t, b, slow, ConsumerOptions{MaxInFlight: 4})
	testkit.Eventually(t, 10*time.Second, "offsets 0..9 committed", func() bool { _, cm := b.state(); return cm == 10 })

	b.setDown(true, true) // 10..13 are being handled
	b.restart()           // the new generation starts again at offset 10
	close(release)
	time.Sleep(20 * time.Millisecond) // 10..13 finish while nothing can be committed
	b.setDown(false, false)
	testkit.Eventually(t, 10*time.Second, "everything committed", func() bool { _, cm := b.state(); return cm == 20 })
	if distinct, all := h.total(); distinct != 20 || all != 20 {
		t.Fatalf("handled %d records (%d distinct), want each of 20 once", all, distinct)
	}
	if n := testutil.ToFloat64(c.m.refetched); n == 0 {
		t.Fatal("no record was re-read: the test did not restart anything")
	}
}

// Identical copies of a record (a producer retried a write whose ack was
// lost) are handled once when Dedupe is on.
func TestConsumerSkipsIdenticalCopies(t *testing.T) {
	b := newFakeBroker("a", "b", "a", "c", "b")
	var h counting
	c, _, _ := startConsumer(t, b, h.handle, ConsumerOptions{MaxInFlight: 2, Dedupe: 100})
	testkit.Eventually(t, 10*time.Second, "all committed", func() bool { _, cm := b.state(); return cm == 5 })
	if distinct, all := h.total(); distinct != 3 || all != 3 {
		t.Fatalf("handled %d (%d distinct), want a, b and c once", all, distinct)
	}
	if n := testutil.ToFloat64(c.m.duplicates); n != 2 {
		t.Fatalf("duplicates %v, want 2", n)
	}
}

func TestRecentIsBounded(t *testing.T) {
	r := newRecent(3)
	msg := func(v string) kafka.Message { return kafka.Message{Topic: "t", Value: []byte(v)} }
	for _, v := range []string{"a", "b", "c"} {
		if r.check(msg(v)) {
			t.Fatalf("%s seen before it was added", v)
		}
	}
	if !r.check(msg("a")) {
		t.Fatal("a forgotten too early")
	}
	r.check(msg("d")) // evicts a
	if r.check(msg("a")) {
		t.Fatal("a still remembered beyond the bound")
	}
	if len(r.set) > 3 {
		t.Fatalf("%d digests kept, bound 3", len(r.set))
	}
	// The same bytes in another field are another record.
	if r.check(kafka.Message{Topic: "t", Key: []byte("d")}) {
		t.Fatal("key d taken for value d")
	}
}

// A slow record holds its partition's commit back, not the handlers: up to
// MaxUncommitted records are taken meanwhile, no more.
func TestConsumerSlowRecordHoldsOnlyItsCommit(t *testing.T) {
	b := newFakeBroker(values(20)...)
	var h counting
	release := make(chan struct{})
	slowFirst := func(ctx context.Context, m kafka.Message) error {
		if m.Offset == 0 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return h.handle(ctx, m)
	}
	startConsumer(t, b, slowFirst, ConsumerOptions{MaxInFlight: 2, MaxUncommitted: 6})
	testkit.Eventually(t, 10*time.Second, "the records behind the slow one handled", func() bool { _, all := h.total(); return all == 5 })
	time.Sleep(50 * time.Millisecond)
	if next, committed := b.state(); next != 6 || committed != -1 {
		t.Fatalf("fetched up to %d, committed %d while offset 0 is in flight; want 6 fetched, nothing committed", next, committed)
	}
	close(release)
	testkit.Eventually(t, 10*time.Second, "everything committed", func() bool { _, cm := b.state(); return cm == 20 })
}

// errorsFirst is a fakeBroker whose first fetches fail: the errors kafka-go
// queued with the records while a partition leader was away.
type errorsFirst struct {
	*fakeBroker
	queued atomic.Int32
}

func (e *errorsFirst) FetchMessage(ctx context.Context) (kafka.Message, error) {
	if e.queued.Add(-1) >= 0 {
		return kafka.Message{}, kafka.NotLeaderForPartition
	}
	return e.fakeBroker.FetchMessage(ctx)
}

// Errors kafka-go queued during an outage are read off at once when the
// broker is back: the handler's retry policy (up to 30 s in the sender)
// must not pace them, or the records behind them wait for minutes.
func TestConsumerReadsQueuedFetchErrorsOffQuickly(t *testing.T) {
	b := &errorsFirst{fakeBroker: newFakeBroker("after the outage")}
	b.queued.Store(16) // a sender's QueueCapacity
	var h counting
	c := NewConsumer(nopDLQ{}, h.handle, ConsumerOptions{Retry: backoff.Policy{Initial: 100 * time.Millisecond, Max: 30 * time.Second}},
		testkit.Log(t, zerolog.ErrorLevel), prometheus.NewRegistry())
	testkit.Background(t, "consumer", func(ctx context.Context) error { return c.Run(ctx, b) })
	// Paced by the policy, the sixteen waits add up to minutes.
	testkit.Eventually(t, 10*time.Second, "the record behind 16 queued errors handled", func() bool { d, _ := h.total(); return d == 1 })
}

// A run that ended while commits failed (a gate closing during a Kafka
// hiccup) leaves nothing behind: the next run on an idle topic is ready,
// and what the first held is no longer shown as in flight.
func TestARunEndsWithItsFailuresAndItsRecords(t *testing.T) {
	b := newFakeBroker("held when the gate closed")
	var h counting
	c := NewConsumer(nopDLQ{}, h.handle, ConsumerOptions{}, testkit.Log(t, zerolog.Disabled), prometheus.NewRegistry())
	b.setDown(false, true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, b) }()
	testkit.Eventually(t, 10*time.Second, "a commit failing", func() bool { return c.Ready(context.Background()) != nil })
	if n := testutil.ToFloat64(c.m.inFlight.WithLabelValues("t", "0")); n != 1 {
		t.Fatalf("in flight %v while its commit fails; want 1", n)
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("the final commit failed, yet Run says nothing")
	}
	if n := testutil.CollectAndCount(c.m.inFlight); n != 0 {
		t.Fatalf("%d in-flight series left after the run ended", n)
	}
	b.setDown(false, false)
	b.mu.Lock()
	b.next = len(b.log) // nothing left to read: an idle topic
	b.mu.Unlock()
	testkit.Background(t, "the next run", func(ctx context.Context) error { return c.Run(ctx, b) })
	testkit.Eventually(t, 5*time.Second, "ready in the next run", func() bool { return c.Ready(context.Background()) == nil })
}

// A handler still waiting for what it needs to start (ejabberd down) when
// the consumer stops gives up at once instead of holding the drain, and is
// not tried again: its record stays uncommitted for the next reader.
func TestDrainDoesNotWaitForWorkNotStarted(t *testing.T) {
	b := newFakeBroker("waits for a connection")
	attempts := atomic.Int32{}
	waiting := func(ctx context.Context, _ kafka.Message) error {
		attempts.Add(1)
		ctx, cancel := UntilDraining(ctx)
		defer cancel()
		<-ctx.Done() // no connection ever comes
		return ctx.Err()
	}
	c := NewConsumer(nopDLQ{}, waiting, ConsumerOptions{DrainTimeout: time.Minute}, testkit.Log(t, zerolog.Disabled), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, b) }()
	testkit.Eventually(t, 5*time.Second, "the handler waiting", func() bool { return attempts.Load() == 1 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the drain waited for a handler that never started its work")
	}
	if _, committed := b.state(); committed > 0 || attempts.Load() != 1 {
		t.Fatalf("committed up to %d after %d attempts: want the record left for the next reader, tried once", committed, attempts.Load())
	}
}
