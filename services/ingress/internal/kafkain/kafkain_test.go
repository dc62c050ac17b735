package kafkain

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/services/ingress/internal/announce"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var goodMsg = base64.StdEncoding.EncodeToString([]byte(`<message to='%s' from='announcer.localhost'><body>hi</body></message>`))

func usersBody(user string) []byte {
	return []byte(`{"usernames": ["` + user + `"], "message": "` + goodMsg + `"}`)
}

// journal records what happened, in order, across goroutines.
type journal struct {
	mu      sync.Mutex
	entries []string
}

func (j *journal) add(format string, a ...any) {
	j.mu.Lock()
	j.entries = append(j.entries, fmt.Sprintf(format, a...))
	j.mu.Unlock()
}

func (j *journal) snapshot() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.entries)
}

func (j *journal) index(entry string) int { return slices.Index(j.snapshot(), entry) }

// fakeReader is an in-memory consumer-group reader of one partition.
type fakeReader struct {
	j       *journal
	msgs    chan kafka.Message
	fetched atomic.Int64
	mu      sync.Mutex
	commits []int64
}

func newFakeReader(j *journal, payloads ...[]byte) *fakeReader {
	r := &fakeReader{j: j, msgs: make(chan kafka.Message, len(payloads)+1)}
	for i, p := range payloads {
		r.msgs <- kafka.Message{Topic: "in", Partition: 0, Offset: int64(i), Value: p}
	}
	return r
}

func (r *fakeReader) FetchMessage(ctx context.Context) (kafka.Message, error) {
	select {
	case m := <-r.msgs:
		r.fetched.Add(1)
		return m, nil
	case <-ctx.Done():
		return kafka.Message{}, ctx.Err()
	}
}

func (r *fakeReader) CommitMessages(_ context.Context, msgs ...kafka.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range msgs {
		r.commits = append(r.commits, m.Offset)
		r.j.add("commit:%d", m.Offset)
	}
	return nil
}

func (r *fakeReader) committed() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.commits)
}

// fakePublisher stands in for Kafka behind the real use case: publish decides per event.
type fakePublisher struct {
	j       *journal
	publish func(e announcement.Event) error
}

func (p *fakePublisher) Publish(ctx context.Context, e announcement.Event) error {
	if err := p.publish(e); err != nil {
		return err
	}
	p.j.add("publish:%s", e.Usernames[0])
	return nil
}

type fakeDeadLetters struct {
	j    *journal
	fail atomic.Int64 // fail this many times first
	mu   sync.Mutex
	got  map[int64]string
}

func (d *fakeDeadLetters) DeadLetter(_ context.Context, m kafka.Message, reason string) error {
	if d.fail.Add(-1) >= 0 {
		return errors.New("dead-letter topic unavailable")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.got == nil {
		d.got = map[int64]string{}
	}
	d.got[m.Offset] = reason
	d.j.add("dlq:%d", m.Offset)
	return nil
}

type rig struct {
	j    *journal
	r    *fakeReader
	dl   *fakeDeadLetters
	c    *Consumer
	reg  *prometheus.Registry
	stop context.CancelFunc
	done chan error
}

func start(t *testing.T, window int, publish func(announcement.Event) error, payloads ...[]byte) *rig {
	t.Helper()
	j := &journal{}
	reg := prometheus.NewRegistry()
	svc, err := announce.New(&fakePublisher{j: j, publish: publish}, announce.Limits{
		MaxBodyBytes: 4096, MaxUsernames: 10, MaxTemplateBytes: 1024,
		UserDomain: "localhost", ComponentDomain: "announcer.localhost", PublishTimeout: time.Second,
	}, reg)
	if err != nil {
		t.Fatal(err)
	}
	g := &rig{j: j, r: newFakeReader(j, payloads...), dl: &fakeDeadLetters{j: j}, reg: reg, done: make(chan error, 1)}
	g.c, err = New(g.r, svc, g.dl, Options{Window: window, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond}, zerolog.Nop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.stop = cancel
	go func() { g.done <- g.c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-g.done
	})
	return g
}

func (g *rig) shutdown(t *testing.T) {
	t.Helper()
	g.stop()
	select {
	case err := <-g.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		g.done <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func ok(announcement.Event) error { return nil }

func TestEveryRecordIsAnnouncedOrDeadLetteredThenCommittedInOrder(t *testing.T) {
	payloads := [][]byte{
		usersBody("u0"),
		[]byte(`not json at all`),
		usersBody("u2"),
		[]byte(`{"channel_id": 5, "message": "` + base64.StdEncoding.EncodeToString([]byte(`<message from='announcer.localhost'>no placeholder</message>`)) + `"}`),
		usersBody("u4"),
		nil, // a tombstone
		[]byte(`{"usernames": ["u6"], "channel_id": 1, "message": "` + goodMsg + `"}`),
		usersBody("u7"),
	}
	g := start(t, 4, ok, payloads...)
	waitFor(t, "all commits", func() bool { return len(g.r.committed()) == len(payloads) })
	g.shutdown(t)

	if got := g.r.committed(); !slices.IsSorted(got) || got[len(got)-1] != int64(len(payloads)-1) {
		t.Errorf("commits %v: want every offset, in order", got)
	}
	wantDLQ := map[int64]string{1: "body", 3: "message", 5: "body", 6: "body"}
	for off, field := range wantDLQ {
		reason, ok := g.dl.got[off]
		if !ok || !strings.Contains(reason, "invalid "+field) {
			t.Errorf("offset %d: dead letter reason %q, want one about %s", off, reason, field)
		}
		if g.j.index(fmt.Sprintf("dlq:%d", off)) > g.j.index(fmt.Sprintf("commit:%d", off)) {
			t.Errorf("offset %d committed before its dead letter was written", off)
		}
	}
	for _, off := range []int64{0, 2, 4, 7} {
		p := g.j.index(fmt.Sprintf("publish:u%d@localhost", off))
		if p < 0 || p > g.j.index(fmt.Sprintf("commit:%d", off)) {
			t.Errorf("offset %d: published at %d, committed at %d: want publish first", off, p, g.j.index(fmt.Sprintf("commit:%d", off)))
		}
	}
	if got := testutil.ToFloat64(g.c.m.records.WithLabelValues("dead_lettered")); got != 4 {
		t.Errorf("dead_lettered = %v, want 4", got)
	}
	if got := testutil.ToFloat64(g.c.m.records.WithLabelValues("announced")); got != 4 {
		t.Errorf("announced = %v, want 4", got)
	}
}

func TestPublishFailuresAreRetriedBeforeCommit(t *testing.T) {
	var failures atomic.Int64
	failures.Store(3)
	g := start(t, 4, func(announcement.Event) error {
		if failures.Add(-1) >= 0 {
			return fmt.Errorf("%w: broker down", announce.ErrUnavailable)
		}
		return nil
	}, usersBody("u0"), usersBody("u1"))
	waitFor(t, "commits", func() bool { return len(g.r.committed()) == 2 })
	g.shutdown(t)
	if got := testutil.ToFloat64(g.c.m.retries.WithLabelValues("publish")); got != 3 {
		t.Errorf("publish retries = %v, want 3", got)
	}
	for _, off := range []int64{0, 1} {
		if g.j.index(fmt.Sprintf("publish:u%d@localhost", off)) > g.j.index(fmt.Sprintf("commit:%d", off)) {
			t.Errorf("offset %d committed before it was published: %v", off, g.j.snapshot())
		}
	}
}

func TestSlowRecordHoldsBackLaterCommitsOnly(t *testing.T) {
	release := make(chan struct{})
	g := start(t, 8, func(e announcement.Event) error {
		if e.Usernames[0] == "u0@localhost" {
			<-release
		}
		return nil
	}, usersBody("u0"), usersBody("u1"), usersBody("u2"))
	// The later records are not blocked by the slow one...
	waitFor(t, "u1 and u2 published", func() bool {
		return g.j.index("publish:u1@localhost") >= 0 && g.j.index("publish:u2@localhost") >= 0
	})
	// ...but their offsets wait, or a crash now would skip u0.
	time.Sleep(20 * time.Millisecond)
	if got := g.r.committed(); len(got) != 0 {
		t.Fatalf("committed %v while offset 0 is still being published", got)
	}
	close(release)
	waitFor(t, "commits", func() bool { return len(g.r.committed()) == 3 })
	g.shutdown(t)
}

func TestShutdownCommitsNothingUnfinished(t *testing.T) {
	g := start(t, 4, func(announcement.Event) error {
		return fmt.Errorf("%w: broker down", announce.ErrUnavailable)
	}, usersBody("u0"), usersBody("u1"))
	waitFor(t, "retries", func() bool { return testutil.ToFloat64(g.c.m.retries.WithLabelValues("publish")) >= 4 })
	g.shutdown(t)
	if got := g.r.committed(); len(got) != 0 {
		t.Errorf("committed %v although nothing was published", got)
	}
}

func TestShutdownCommitsWhatFinished(t *testing.T) {
	g := start(t, 4, func(e announcement.Event) error {
		if e.Usernames[0] == "u1@localhost" {
			return fmt.Errorf("%w: partition leader gone", announce.ErrUnavailable)
		}
		return nil
	}, usersBody("u0"), usersBody("u1"), usersBody("u2"))
	waitFor(t, "offset 0 committed", func() bool { return len(g.r.committed()) == 1 })
	waitFor(t, "u2 published", func() bool { return g.j.index("publish:u2@localhost") >= 0 })
	g.shutdown(t)
	// u2 was published, but committing offset 2 would also skip u1.
	if got := g.r.committed(); !slices.Equal(got, []int64{0}) {
		t.Errorf("committed %v, want only [0]", got)
	}
}

func TestTooLargeEventIsDeadLettered(t *testing.T) {
	g := start(t, 4, func(announcement.Event) error {
		return fmt.Errorf("%w: 3 MB", announce.ErrTooLarge)
	}, usersBody("u0"))
	waitFor(t, "commit", func() bool { return len(g.r.committed()) == 1 })
	g.shutdown(t)
	if reason := g.dl.got[0]; !strings.Contains(reason, "too large") {
		t.Errorf("dead letter reason %q", reason)
	}
	if got := testutil.ToFloat64(g.c.m.deadLetters.WithLabelValues("too_large")); got != 1 {
		t.Errorf("dead letters{too_large} = %v", got)
	}
}

func TestDeadLetterFailuresAreRetried(t *testing.T) {
	g := start(t, 4, ok)
	g.dl.fail.Store(2)
	g.r.msgs <- kafka.Message{Topic: "in", Offset: 0, Value: []byte(`{}`)}
	waitFor(t, "commit", func() bool { return len(g.r.committed()) == 1 })
	g.shutdown(t)
	if got := testutil.ToFloat64(g.c.m.retries.WithLabelValues("dead_letter")); got != 2 {
		t.Errorf("dead-letter retries = %v, want 2", got)
	}
	if _, ok := g.dl.got[0]; !ok {
		t.Error("no dead letter")
	}
}

func TestWindowBoundsFetchedRecords(t *testing.T) {
	release := make(chan struct{})
	var payloads [][]byte
	for i := range 50 {
		payloads = append(payloads, usersBody(fmt.Sprintf("u%d", i)))
	}
	const window = 3
	g := start(t, window, func(announcement.Event) error {
		<-release
		return nil
	}, payloads...)
	// One record held by the committer, window queued, one fetched and waiting for room.
	waitFor(t, "the window to fill", func() bool { return g.r.fetched.Load() >= window+2 })
	time.Sleep(20 * time.Millisecond)
	if n := g.r.fetched.Load(); n > window+2 {
		t.Errorf("fetched %d records with all of them stuck; the window is %d", n, window)
	}
	close(release)
	waitFor(t, "all commits", func() bool { return len(g.r.committed()) == len(payloads) })
	g.shutdown(t)
}

// closedReader fails like a kafka-go reader after Close.
type closedReader struct{ fakeReader }

func (*closedReader) FetchMessage(context.Context) (kafka.Message, error) {
	return kafka.Message{}, io.EOF
}

func TestClosedReaderEndsRun(t *testing.T) {
	c, err := New(&closedReader{}, nil, nil, Options{Window: 1}, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(context.Background()); !errors.Is(err, io.EOF) {
		t.Errorf("Run = %v, want the reader's EOF", err)
	}
}

func TestNewRejectsZeroWindow(t *testing.T) {
	if _, err := New(&fakeReader{}, nil, nil, Options{}, zerolog.Nop(), prometheus.NewRegistry()); err == nil {
		t.Error("window 0 accepted")
	}
}

func TestBackoffIsBoundedAndJittered(t *testing.T) {
	c := &Consumer{opt: Options{RetryMin: 10 * time.Millisecond, RetryMax: 80 * time.Millisecond}}
	seen := map[time.Duration]bool{}
	for attempt := range 100 {
		d := c.backoff(attempt)
		if d <= 0 || d > 80*time.Millisecond {
			t.Fatalf("attempt %d: backoff %s outside (0, 80ms]", attempt, d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Errorf("only %d distinct delays in 100 attempts: no jitter?", len(seen))
	}
}
