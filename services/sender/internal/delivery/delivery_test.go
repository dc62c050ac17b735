package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/pkg/testkit"
)

// fakeLink records what the use case does with a connection.
type fakeLink struct {
	slot     int
	mu       sync.Mutex
	written  bytes.Buffer
	ops      []string
	fenceErr error
	writeErr error
	released bool
	// failFence fails the fence of this number (1 = the first) with fenceErr,
	// and only it; 0 fails every fence with fenceErr.
	failFence int
	fences    int
	refusals  int64 // what MulticastRefusals says
	// rejectMulticast: ejabberd closes the stream when this link's multicasts
	// are fenced (one over the listener's max_stanza_size, say).
	rejectMulticast bool
}

func (l *fakeLink) Slot() int { return l.slot }

func (l *fakeLink) Write(p []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ops = append(l.ops, "write")
	if l.writeErr != nil {
		return l.writeErr
	}
	l.written.Write(p)
	return nil
}

func (l *fakeLink) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ops = append(l.ops, "flush")
	return nil
}

func (l *fakeLink) Fence(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ops = append(l.ops, "fence")
	l.fences++
	if l.failFence > 0 && l.fences != l.failFence {
		return nil
	}
	return l.fenceErr
}

func (l *fakeLink) FenceMulticast(ctx context.Context) error {
	l.mu.Lock()
	l.ops = append(l.ops, "echo")
	reject := l.rejectMulticast
	l.mu.Unlock()
	if reject {
		return lostErr{rejected: true}
	}
	return l.Fence(ctx)
}

func (l *fakeLink) MulticastRefusals() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refusals
}

func (l *fakeLink) Release() { l.released = true }

// text is what was written so far.
func (l *fakeLink) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.written.String()
}

// fakeLinks hands out the given links in order, then blocks until ctx ends.
type fakeLinks struct {
	mu    sync.Mutex
	links []*fakeLink
	next  int
	alone []bool // what each Acquire asked for
}

func (f *fakeLinks) Acquire(ctx context.Context, alone bool) (Link, error) {
	f.mu.Lock()
	f.alone = append(f.alone, alone)
	if f.next < len(f.links) {
		l := f.links[f.next]
		f.next++
		f.mu.Unlock()
		return l, nil
	}
	f.mu.Unlock()
	<-ctx.Done()
	return nil, ctx.Err()
}

type lostErr struct{ rejected bool }

func (e lostErr) Error() string  { return fmt.Sprintf("lost (rejected=%v)", e.rejected) }
func (e lostErr) Rejected() bool { return e.rejected }

const tmpl = "<message to='%s' from='announcer.localhost' type='chat'><body>n=[inc_id]</body></message>"

func newSender(t testing.TB, links Links, opt Options) (*Sender, *Metrics) {
	t.Helper()
	if opt.UserDomain == "" {
		opt.UserDomain = "localhost"
	}
	if opt.Templates == nil {
		opt.Templates = stanza.NewCache(stanza.Options{ComponentDomain: "announcer.localhost"}, 16)
	}
	opt.RetryMin, opt.RetryMax = time.Millisecond, 2*time.Millisecond
	m := NewMetrics(prometheus.NewRegistry())
	return New(opt, links, zerolog.Nop(), m), m
}

func batch(recipients ...string) announcement.Batch {
	return announcement.Batch{AnnouncementID: "a1", Template: tmpl, FirstIncID: 10, Recipients: recipients}
}

// usernames returns n distinct bare usernames.
func usernames(n int) []string {
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprintf("u%d", i)
	}
	return users
}

func stanzaFor(jid string, inc int) string {
	return fmt.Sprintf("<message to='%s' from='announcer.localhost' type='chat'><body>n=%d</body></message>", jid, inc)
}

func TestDeliverRendersEachValidRecipient(t *testing.T) {
	l := &fakeLink{}
	s, m := newSender(t, &fakeLinks{links: []*fakeLink{l}}, Options{})
	err := s.Deliver(context.Background(), batch("alice", "bob@example.org/phone", "bad user", "carol"))
	if err != nil {
		t.Fatal(err)
	}
	want := stanzaFor("alice@localhost", 10) + stanzaFor("bob@example.org/phone", 11) + stanzaFor("carol@localhost", 13)
	if got := l.written.String(); got != want {
		t.Fatalf("rendered:\n%s\nwant:\n%s", got, want)
	}
	if strings.Contains(l.written.String(), "bad user") {
		t.Fatal("an invalid username was sent")
	}
	if got := l.ops[len(l.ops)-1]; got != "fence" {
		t.Fatalf("last operation %q, want fence", got)
	}
	if !l.released {
		t.Fatal("link not released")
	}
	if got := testutil.ToFloat64(m.invalid); got != 1 {
		t.Fatalf("invalid_recipients_total = %v", got)
	}
	if got := testutil.ToFloat64(m.batches.WithLabelValues("delivered")); got != 1 {
		t.Fatalf("delivered = %v", got)
	}
}

func TestDeliverResendsWholeBatchOnLostLink(t *testing.T) {
	first := &fakeLink{fenceErr: lostErr{}}
	second := &fakeLink{slot: 1}
	s, m := newSender(t, &fakeLinks{links: []*fakeLink{first, second}}, Options{Conns: 2})
	b := batch("u1", "u2", "u3")
	if err := s.Deliver(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	want := stanzaFor("u1@localhost", 10) + stanzaFor("u2@localhost", 11) + stanzaFor("u3@localhost", 12)
	if got := second.written.String(); got != want {
		t.Fatalf("resent:\n%s\nwant:\n%s", got, want)
	}
	if got := testutil.ToFloat64(m.resends); got != 1 {
		t.Fatalf("resends_total = %v, want 1", got)
	}
	if !first.released || !second.released {
		t.Fatal("links not released")
	}
}

func TestDeliverWriteFailureResends(t *testing.T) {
	first := &fakeLink{writeErr: lostErr{}}
	second := &fakeLink{}
	s, _ := newSender(t, &fakeLinks{links: []*fakeLink{first, second}}, Options{})
	if err := s.Deliver(context.Background(), batch("u1")); err != nil {
		t.Fatal(err)
	}
	if second.written.Len() == 0 {
		t.Fatal("not resent after a write failure")
	}
}

// A batch that makes ejabberd close the stream every time is dead-lettered
// after the configured number of rejections instead of killing connections forever.
func TestDeliverPoisonBatch(t *testing.T) {
	var links []*fakeLink
	for range 10 {
		links = append(links, &fakeLink{fenceErr: lostErr{rejected: true}})
	}
	fl := &fakeLinks{links: links}
	s, m := newSender(t, fl, Options{Rejections: 2})
	err := s.Deliver(context.Background(), batch("u1"))
	var bad *announcement.BadRecordError
	if !errors.As(err, &bad) || bad.Label != "poison" {
		t.Fatalf("got %v, want a poison BadRecordError", err)
	}
	// The first loss was shared (the batch is not blamed yet); then alone: 1 + 2 tolerated + 1.
	if fl.next != 4 {
		t.Fatalf("%d attempts, want 4 (one shared, then alone: 2 rejections tolerated, the third is poison)", fl.next)
	}
	if want := []bool{false, true, true, true}; fmt.Sprint(fl.alone) != fmt.Sprint(want) {
		t.Fatalf("acquired alone %v, want %v", fl.alone, want)
	}
	if got := testutil.ToFloat64(m.batches.WithLabelValues("poison")); got != 1 {
		t.Fatalf("poison = %v", got)
	}
}

// Plain connection losses (ejabberd restarting) never give up.
func TestDeliverNetworkLossesNeverGiveUp(t *testing.T) {
	var links []*fakeLink
	for range 8 {
		links = append(links, &fakeLink{fenceErr: lostErr{}})
	}
	links = append(links, &fakeLink{})
	s, m := newSender(t, &fakeLinks{links: links}, Options{Rejections: 1})
	if err := s.Deliver(context.Background(), batch("u1")); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.resends); got != 8 {
		t.Fatalf("resends = %v, want 8", got)
	}
}

func TestDeliverBadTemplate(t *testing.T) {
	for _, tpl := range []string{
		"<message to='%s'><body>x</body></message>",                     // no from: ejabberd would close the stream
		"<message to='%s' from='evil.example'><body>x</body></message>", // from outside the component domain
		"<message to='%s' from='announcer.localhost'><body>x</body>",    // not well-formed
	} {
		fl := &fakeLinks{links: []*fakeLink{{}}}
		s, _ := newSender(t, fl, Options{})
		b := batch("u1")
		b.Template = tpl
		var bad *announcement.BadRecordError
		if err := s.Deliver(context.Background(), b); !errors.As(err, &bad) || bad.Label != "template" {
			t.Fatalf("%s: got %v, want a template BadRecordError", tpl, err)
		}
		if fl.next != 0 {
			t.Fatalf("%s: a connection was used for a bad template", tpl)
		}
	}
}

func TestDeliverAllInvalidSendsNothing(t *testing.T) {
	fl := &fakeLinks{links: []*fakeLink{{}}}
	s, m := newSender(t, fl, Options{})
	if err := s.Deliver(context.Background(), batch("bad user", "")); err != nil {
		t.Fatal(err)
	}
	if fl.next != 0 {
		t.Fatal("a connection was used for an empty batch")
	}
	if got := testutil.ToFloat64(m.invalid); got != 2 {
		t.Fatalf("invalid = %v", got)
	}
}

func TestDeliverHonoursContext(t *testing.T) {
	s, _ := newSender(t, &fakeLinks{}, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.Deliver(ctx, batch("u1")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
}

// While paced, buffered stanzas are flushed before each wait, so the rate
// shows on the wire rather than in bursts of a full buffer.
func TestRateLimitFlushesBeforeWaiting(t *testing.T) {
	l := &fakeLink{}
	s, m := newSender(t, &fakeLinks{links: []*fakeLink{l}}, Options{RatePerConn: 400})
	users := usernames(60) // chunk 20: 1 chunk from the burst, 2 paced
	start := time.Now()
	if err := s.Deliver(context.Background(), batch(users...)); err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed < 80*time.Millisecond {
		t.Fatalf("60 stanzas at 400/s with a burst of 20 took %s, want >= 100ms", elapsed)
	}
	if got := strings.Join(l.ops, ","); got != "write,flush,write,flush,write,fence" {
		t.Fatalf("operations %s", got)
	}
	if testutil.ToFloat64(m.rateWait) <= 0 {
		t.Fatal("rate-limit wait not counted")
	}
}

// At a rate whose chunks are due closer together than MinWait, the limiter
// is paid in waits of at least MinWait: the rate holds (beyond the burst the
// link runs at most 10 ms ahead), with fewer wake-ups and flushes. A
// multicast, paid in reservations of a chunk each, then costs one wait.
func TestFastRateWaitsInMinWaitSteps(t *testing.T) {
	users := usernames(2000)
	for _, tt := range []struct {
		name     string
		opt      Options
		b        announcement.Batch
		stanzas  int
		flushes  int // at most; a wait per chunk of 64 was 30 or more
		minDelay time.Duration
	}{
		// Chunks due every 3.2 ms: about 97 ms of waits in steps of 10 ms or more.
		{"unicast", Options{RatePerConn: 20000}, batch(users...), 2000, 10, time.Duration(float64(2000-64-200) / 20000 * float64(time.Second))},
		// 4 multicasts of 500, each owing 10 ms.
		{"multicast", Options{RatePerConn: 50000, Multicast: multicastOn(500)}, multicastBatch(users...), 4, 4, time.Duration(float64(2000-64-500) / 50000 * float64(time.Second))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := &fakeLink{}
			s, _ := newSender(t, &fakeLinks{links: []*fakeLink{l}}, tt.opt)
			start := time.Now()
			if err := s.Deliver(context.Background(), tt.b); err != nil {
				t.Fatal(err)
			}
			if elapsed := time.Since(start); elapsed < tt.minDelay {
				t.Fatalf("took %s, want >= %s", elapsed, tt.minDelay)
			}
			if n := strings.Count(l.written.String(), "<message "); n != tt.stanzas {
				t.Fatalf("%d stanzas, want %d", n, tt.stanzas)
			}
			if n := strings.Count(strings.Join(l.ops, ","), "flush"); n < 1 || n > tt.flushes {
				t.Fatalf("%d flushes, want 1 to %d (one per wait of >= 10 ms)", n, tt.flushes)
			}
		})
	}
}

func TestChunkFor(t *testing.T) {
	for _, tt := range []struct{ rate, want int }{{0, 64}, {1, 1}, {10, 1}, {200, 10}, {1000, 50}, {100000, 64}} {
		if got := chunkFor(tt.rate); got != tt.want {
			t.Errorf("chunkFor(%d) = %d, want %d", tt.rate, got, tt.want)
		}
	}
}

// Client mode's rules come with the template cache: a foreign from is a bad
// record before any connection is used (ejabberd's c2s would close the stream).
func TestDeliverClientModeFrom(t *testing.T) {
	rules := stanza.NewCache(stanza.Options{ClientJID: "bot@example.org"}, 16)
	for _, tt := range []struct {
		tpl string
		ok  bool
	}{
		{"<message to='%s'><body/></message>", true},
		{"<message to='%s' from='Bot@Example.org/x'><body/></message>", true},
		{"<message to='%s' from='other@example.org'/>", false},
	} {
		fl := &fakeLinks{links: []*fakeLink{{}}}
		s, _ := newSender(t, fl, Options{Templates: rules})
		b := batch("u1")
		b.AnnouncementID, b.Template = tt.tpl, tt.tpl
		err := s.Deliver(context.Background(), b)
		if (err == nil) != tt.ok {
			t.Errorf("%s: %v", tt.tpl, err)
		}
		if !tt.ok && fl.next != 0 {
			t.Errorf("%s: a connection was used", tt.tpl)
		}
	}
}

// On a stop (Waiting's context ends), a batch that lost its connections and
// waits for another gives up instead of holding the stop: it has nothing
// under way to finish, and its record stays for the next start.
func TestAStopEndsTheWaitForAConnection(t *testing.T) {
	stopping, stop := context.WithCancel(context.Background())
	defer stop()
	waiting := func(ctx context.Context) (context.Context, context.CancelFunc) {
		ctx, cancel := context.WithCancel(ctx)
		unhook := context.AfterFunc(stopping, cancel)
		return ctx, func() { unhook(); cancel() }
	}
	links := &fakeLinks{links: []*fakeLink{{writeErr: lostErr{}}, {writeErr: lostErr{}}}}
	s, _ := newSender(t, links, Options{Waiting: waiting})
	done := make(chan error, 1)
	go func() { done <- s.Deliver(context.Background(), batch("a", "b")) }()
	testkit.Eventually(t, 5*time.Second, "waiting for a third connection", func() bool {
		links.mu.Lock()
		defer links.mu.Unlock()
		return len(links.alone) == 3
	})
	stop()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a batch that never got a connection reported delivered")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the batch still waits for a connection after the stop")
	}
}
