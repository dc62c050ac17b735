package delivery

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/announcer/announcer/pkg/testkit"
)

// When the server ends a connection's stream cleanly (a shutdown), the
// batches fenced on that connection just before are sent again; those of
// another connection, or older than the window, are not.
func TestShutdownResendsRecentBatches(t *testing.T) {
	first, other, next := &fakeLink{slot: 0}, &fakeLink{slot: 1}, &fakeLink{slot: 0}
	links := linkList{first, other, next}
	s, m := newSender(t, &links, Options{Conns: 2, ShutdownResend: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Deliver(ctx, batch("a", "b")); err != nil {
		t.Fatal(err)
	}
	if err := s.Deliver(ctx, batch("c")); err != nil { // on slot 1
		t.Fatal(err)
	}
	testkit.Background(t, "resends", s.Run)
	s.ServerClosed(0)
	deadline := time.Now().Add(5 * time.Second)
	for {
		next.mu.Lock()
		got := next.written.String()
		next.mu.Unlock()
		if got != "" {
			if want := stanzaFor("a@localhost", 10) + stanzaFor("b@localhost", 11); got != want {
				t.Fatalf("sent again:\n%s\nwant:\n%s", got, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the batch fenced on the closed connection was not sent again")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if testutil.ToFloat64(m.shutdownResends) != 1 {
		t.Fatalf("shutdown_resends_total = %v", testutil.ToFloat64(m.shutdownResends))
	}
	// The other connection's close sends its own batch again.
	s.ServerClosed(1)
	if testutil.ToFloat64(m.shutdownResends) != 2 {
		t.Fatalf("shutdown_resends_total = %v after the second close, want 2", testutil.ToFloat64(m.shutdownResends))
	}
}

// A slow batch (fenced in steps) goes again from its first recipient after
// a shutdown, although the progress store has it fenced to the end: that
// position would make a resume send nothing.
func TestShutdownResendsASlowBatchWhole(t *testing.T) {
	p := &fakeProgress{}
	next := &fakeLink{slot: 0}
	var s *Sender
	m := deliverSlow60(t, p, &linkList{&fakeLink{slot: 0}, next}, &s)
	if len(p.steps) < 2 || p.steps[len(p.steps)-1].Pos != 60 {
		t.Fatalf("steps %+v: want a slow batch fenced in steps to its end", p.steps)
	}
	p.position = 60 // what the store answers now
	testkit.Background(t, "resends", s.Run)
	s.ServerClosed(0)
	sentAgainWhole(t, next)
	if r := testutil.ToFloat64(m.resumed); r != 0 {
		t.Fatalf("resumed_recipients_total = %v: a shutdown resend must not resume", r)
	}
}

// Batches older than the window are not kept.
func TestShutdownResendWindow(t *testing.T) {
	links := linkList{&fakeLink{}}
	s, m := newSender(t, &links, Options{ShutdownResend: time.Millisecond})
	if err := s.Deliver(context.Background(), batch("a")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	s.ServerClosed(0)
	if testutil.ToFloat64(m.shutdownResends) != 0 {
		t.Fatal("a batch older than the window was sent again")
	}
}

// A kept batch comes back as it was fenced, empty and non-ASCII names included.
func TestPackedBatchRoundTrip(t *testing.T) {
	b := batch("a", "", "jürgen@example.org/phone", "b")
	b.Seq, b.FirstIncID = 7, 42
	f := pack(b, []slotFence{{slot: 1, at: time.Now()}}, time.Now(), false)
	if f.b.Recipients != nil {
		t.Fatal("the packed batch still holds its decoded recipients")
	}
	got := f.batch()
	if !reflect.DeepEqual(got, b) {
		t.Fatalf("unpacked %+v, want %+v", got, b)
	}
}

// deliverSlow60 delivers a slow batch of 60 (slowOptions, a minute's
// shutdown window) over links; *s is the sender from before it starts.
func deliverSlow60(t *testing.T, p *fakeProgress, links *linkList, s **Sender) *Metrics {
	t.Helper()
	opt := slowOptions(p)
	opt.ShutdownResend = time.Minute
	var m *Metrics
	*s, m = newSender(t, links, opt)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := (*s).Deliver(ctx, batch(users(60)...)); err != nil {
		t.Fatal(err)
	}
	return m
}

// sentAgainWhole waits until l has the slow batch of 60 again, from its first recipient.
func sentAgainWhole(t *testing.T, l *fakeLink) {
	t.Helper()
	testkit.Eventually(t, 5*time.Second, "the slow batch sent again whole", func() bool {
		return strings.Count(l.text(), "<message") == 60
	})
	if got := l.text(); !strings.HasPrefix(got, stanzaFor("u0@localhost", 10)) {
		t.Fatalf("sent again from the wrong place: %.200s…", got)
	}
}

// deliverAB delivers batch("a", "b") over links with two connections and a
// minute's shutdown window; *s is the sender from before it starts.
func deliverAB(t *testing.T, links *linkList, s **Sender) *Metrics {
	t.Helper()
	var m *Metrics
	*s, m = newSender(t, links, Options{Conns: 2, ShutdownResend: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := (*s).Deliver(ctx, batch("a", "b")); err != nil {
		t.Fatal(err)
	}
	return m
}

// queuedAgain is how many batches wait for Run to write them back.
func queuedAgain(s *Sender) int {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return len(s.pending)
}

// onFence runs fn after its link's fence n (1 = the first) passed.
type onFence struct {
	*fakeLink
	n  int
	fn func()
}

func (l onFence) Fence(ctx context.Context) error {
	if err := l.fakeLink.Fence(ctx); err != nil {
		return err
	}
	l.mu.Lock()
	now := l.fences == l.n
	l.mu.Unlock()
	if now {
		l.fn()
	}
	return nil
}

// A clean close of a connection a slow batch fenced steps on, while the
// batch goes on elsewhere, writes the whole batch back to go again, at
// once: its next attempt starts at the last fence, so the steps fenced on
// the closed connection (which ejabberd may have dropped) would go nowhere,
// and it may never end here (a handover, a crash).
func TestShutdownDuringASlowBatchSendsItAgainWhole(t *testing.T) {
	p := &fakeProgress{}
	var s *Sender
	// Slot 0 fences a step, then dies (not yet known as a clean close).
	dies := &fakeLink{slot: 0}
	first := onFence{dies, 1, func() { dies.writeErr = errors.New("broken pipe") }}
	// Slot 1 takes over from the last fence; slot 0's clean close is read meanwhile.
	queuedAtClose := 0
	second := onFence{&fakeLink{slot: 1}, 1, func() {
		s.ServerClosed(0)
		queuedAtClose = queuedAgain(s)
	}}
	again := &fakeLink{slot: 1}
	m := deliverSlow60(t, p, &linkList{first, second, again}, &s)
	if queuedAtClose != 1 {
		t.Fatalf("%d batches queued when the close was read, want the batch in flight", queuedAtClose)
	}
	if n := strings.Count(second.text(), "<message"); n == 0 || n == 60 {
		t.Fatalf("slot 1 sent %d stanzas: want it to take over from slot 0's fenced step", n)
	}
	testkit.Background(t, "resends", s.Run)
	sentAgainWhole(t, again)
	if r := testutil.ToFloat64(m.shutdownResends); r != 1 {
		t.Fatalf("shutdown_resends_total = %v, want 1", r)
	}
}

// onWrite runs fn before its link's first write.
type onWrite struct {
	*fakeLink
	once *sync.Once
	fn   func()
}

func (l onWrite) Write(p []byte) error {
	l.once.Do(l.fn)
	return l.fakeLink.Write(p)
}

// A batch being written on a connection whose clean close comes before it
// fenced anything there is not written back: its next attempt sends it
// from its last fence anyway.
func TestShutdownBeforeAnyFenceResendsOnlyTheAttempt(t *testing.T) {
	var s *Sender
	closing := onWrite{&fakeLink{slot: 0, fenceErr: errors.New("connection lost")}, new(sync.Once), func() { s.ServerClosed(0) }}
	next := &fakeLink{slot: 1}
	m := deliverAB(t, &linkList{closing, next}, &s)
	if want := stanzaFor("a@localhost", 10) + stanzaFor("b@localhost", 11); next.text() != want {
		t.Fatalf("the next attempt sent:\n%s\nwant:\n%s", next.text(), want)
	}
	if queued := queuedAgain(s); queued != 0 || testutil.ToFloat64(m.shutdownResends) != 0 {
		t.Fatalf("%d batches written back, shutdown_resends_total %v: want none", queued, testutil.ToFloat64(m.shutdownResends))
	}
}

// A batch whose last fence passed just as its connection's clean close was
// read (before the batch was kept for a resend) goes again.
func TestShutdownReadDuringTheLastFenceSendsTheBatchAgain(t *testing.T) {
	var s *Sender
	closing := onFence{&fakeLink{slot: 0}, 1, func() { s.ServerClosed(0) }}
	again := &fakeLink{slot: 1}
	m := deliverAB(t, &linkList{closing, again}, &s)
	testkit.Background(t, "resends", s.Run)
	want := stanzaFor("a@localhost", 10) + stanzaFor("b@localhost", 11)
	testkit.Eventually(t, 5*time.Second, "the batch sent again", func() bool { return again.text() == want })
	if r := testutil.ToFloat64(m.shutdownResends); r != 1 {
		t.Fatalf("shutdown_resends_total = %v, want 1", r)
	}
}
