package delivery

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/testkit"
)

// fakeBus is a Requeuer that keeps what it was given, failing while fail
// says so.
type fakeBus struct {
	mu      sync.Mutex
	fail    func() bool
	batches []announcement.Batch
	whys    []string
}

func (f *fakeBus) Requeue(_ context.Context, b announcement.Batch, why string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil && f.fail() {
		return errors.New("bus down")
	}
	f.batches = append(f.batches, b)
	f.whys = append(f.whys, why)
	return nil
}

func (f *fakeBus) written() ([]announcement.Batch, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]announcement.Batch(nil), f.batches...), append([]string(nil), f.whys...)
}

// awaitOne waits for the one batch written back and returns it with its mark.
func (f *fakeBus) awaitOne(t *testing.T) (announcement.Batch, string) {
	t.Helper()
	testkit.Eventually(t, 5*time.Second, "the batch written back", func() bool {
		got, _ := f.written()
		return len(got) == 1
	})
	got, whys := f.written()
	return got[0], whys[0]
}

// A batch to send again after a server shutdown is written back to the bus
// (not kept in memory), marked as a shutdown, and counted.
func TestShutdownWritesTheBatchBack(t *testing.T) {
	bus := &fakeBus{}
	links := linkList{&fakeLink{}}
	s, m := newSender(t, &links, Options{ShutdownResend: time.Minute, Requeue: bus})
	b := batch("a", "b")
	if err := s.Deliver(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	testkit.Background(t, "resends", s.Run)
	s.ServerClosed(0)
	got, why := bus.awaitOne(t)
	if got.AnnouncementID != b.AnnouncementID || strings.Join(got.Recipients, ",") != "a,b" || why != AgainShutdown {
		t.Fatalf("written back %+v (%v), want the batch marked %q", got, why, AgainShutdown)
	}
	if testutil.ToFloat64(m.requeued) != 1 || testutil.ToFloat64(m.requeueLost) != 0 {
		t.Fatalf("requeued_total %v, requeue_lost_total %v", testutil.ToFloat64(m.requeued), testutil.ToFloat64(m.requeueLost))
	}
}

// A sender stopped while the bus refuses the write-back still writes the
// batch back once it can, before Run returns: it is never dropped from
// memory before a write is acknowledged.
func TestStoppedSenderWritesBackWhatItHolds(t *testing.T) {
	var mu sync.Mutex
	down := true
	bus := &fakeBus{fail: func() bool { mu.Lock(); defer mu.Unlock(); return down }}
	links := linkList{&fakeLink{}}
	s, m := newSender(t, &links, Options{ShutdownResend: time.Minute, Requeue: bus, FlushTimeout: 5 * time.Second})
	if err := s.Deliver(context.Background(), batch("a")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	s.ServerClosed(0)
	time.Sleep(20 * time.Millisecond) // a few failed writes
	cancel()
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	down = false
	mu.Unlock()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if got, _ := bus.written(); len(got) != 1 || testutil.ToFloat64(m.requeueLost) != 0 {
		t.Fatalf("written back %d, lost %v: want the batch written back on the way out", len(got), testutil.ToFloat64(m.requeueLost))
	}
}

// What cannot be written back before the flush timeout, or comes after Run
// stopped, is counted as lost (and logged), never silently dropped.
func TestUnwrittenBatchesAreCountedLost(t *testing.T) {
	bus := &fakeBus{fail: func() bool { return true }}
	links := linkList{&fakeLink{}, &fakeLink{}}
	s, m := newSender(t, &links, Options{ShutdownResend: time.Minute, Requeue: bus, FlushTimeout: 20 * time.Millisecond})
	if err := s.Deliver(context.Background(), batch("a")); err != nil {
		t.Fatal(err)
	}
	s.ServerClosed(0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.requeueLost); got != 1 {
		t.Fatalf("requeue_lost_total = %v, want 1", got)
	}
	if err := s.Deliver(context.Background(), batch("b")); err != nil {
		t.Fatal(err)
	}
	s.ServerClosed(0)
	if got := testutil.ToFloat64(m.requeueLost); got != 2 {
		t.Fatalf("requeue_lost_total = %v after a close once stopped, want 2", got)
	}
}

// More batches than the old bounded queue held (maxRecent) are all written
// back: a burst of closes drops none.
func TestManyBatchesToSendAgainAreAllWrittenBack(t *testing.T) {
	bus := &fakeBus{}
	n := maxRecent + 10
	links := make(linkList, n)
	for i := range links {
		links[i] = &fakeLink{}
	}
	s, m := newSender(t, &links, Options{ShutdownResend: time.Minute, Requeue: bus})
	for i := range n {
		b := batch("a")
		b.Seq = i
		if err := s.Deliver(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		if i == maxRecent-1 || i == n-1 {
			s.ServerClosed(0) // before Run takes any
		}
	}
	testkit.Background(t, "resends", s.Run)
	testkit.Eventually(t, 5*time.Second, "every batch written back", func() bool {
		got, _ := bus.written()
		return len(got) == n
	})
	if testutil.ToFloat64(m.requeueLost) != 0 {
		t.Fatal("a batch was lost")
	}
}

// A written-back batch comes in again through Again: a slow one from its
// first recipient although the progress store has it fenced to its end; a
// refused multicast one stanza per recipient with multicast still on.
func TestAgainSendsTheBatchWhole(t *testing.T) {
	p := &fakeProgress{}
	first, next := &fakeLink{}, &fakeLink{}
	links := linkList{first, next}
	bus := &fakeBus{}
	opt := slowOptions(p)
	opt.ShutdownResend, opt.Requeue = time.Minute, bus
	s, m := newSender(t, &links, opt)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Deliver(ctx, batch(users(60)...)); err != nil {
		t.Fatal(err)
	}
	p.position = 60
	testkit.Background(t, "resends", s.Run)
	s.ServerClosed(0)
	got, why := bus.awaitOne(t)
	if err := s.Again(ctx, got, why); err != nil {
		t.Fatal(err)
	}
	if text := next.text(); strings.Count(text, "<message") != 60 || !strings.HasPrefix(text, stanzaFor("u0@localhost", 10)) {
		t.Fatalf("sent again: %.200s…", text)
	}
	if r := testutil.ToFloat64(m.resumed); r != 0 {
		t.Fatalf("resumed_recipients_total = %v: a batch written back must not resume", r)
	}

	l := &fakeLink{}
	mc := multicastOn(10)
	s, _ = newSender(t, &fakeLinks{links: []*fakeLink{l}}, Options{Multicast: mc})
	if err := s.Again(ctx, multicastBatch("a", "b"), AgainRefused); err != nil {
		t.Fatal(err)
	}
	if want := strings.ReplaceAll(plainTmpl, "%s", "a@localhost") + strings.ReplaceAll(plainTmpl, "%s", "b@localhost"); l.text() != want {
		t.Fatalf("a refused batch sent again:\n%s\nwant one stanza per recipient:\n%s", l.text(), want)
	}
}
