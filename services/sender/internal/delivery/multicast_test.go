package delivery

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/pkg/testkit"
)

const plainTmpl = "<message to='%s' from='announcer.localhost' type='chat'><body>hi</body></message>"

func multicastBatch(recipients ...string) announcement.Batch {
	return announcement.Batch{AnnouncementID: "m1", Template: plainTmpl, Recipients: recipients}
}

func multicastOn(max int) *Multicast {
	m := &Multicast{Service: "multicast.localhost", Max: max, Home: "announcer.localhost"}
	m.Enable(true)
	return m
}

const mcHead = "<message to='multicast.localhost' from='announcer.localhost' type='chat'><addresses xmlns='http://jabber.org/protocol/address'>"
const mcTail = "</addresses><body>hi</body></message>"

func bcc(jids ...string) string {
	var b strings.Builder
	for _, j := range jids {
		b.WriteString("<address type='bcc' jid='" + j + "'/>")
	}
	return b.String()
}

// With multicast on, a batch whose template allows it goes out as
// multicasts of up to Max valid recipients, fenced by an echo.
func TestMulticastBatch(t *testing.T) {
	l := &fakeLink{}
	s, m := newSender(t, &fakeLinks{links: []*fakeLink{l}}, Options{Multicast: multicastOn(2)})
	if err := s.Deliver(context.Background(), multicastBatch("a", "bad user", "b@example.org", "c")); err != nil {
		t.Fatal(err)
	}
	want := mcHead + bcc("a@localhost", "b@example.org") + mcTail + mcHead + bcc("c@localhost") + mcTail
	if got := l.written.String(); got != want {
		t.Fatalf("written:\n%s\nwant:\n%s", got, want)
	}
	if got := l.ops[len(l.ops)-2]; got != "echo" {
		t.Fatalf("fenced with %q, want the multicast echo (ops %v)", got, l.ops)
	}
	if testutil.ToFloat64(m.multicasts) != 2 || testutil.ToFloat64(m.sent) != 3 || testutil.ToFloat64(m.invalid) != 1 {
		t.Fatalf("multicasts %v, sent %v, invalid %v", testutil.ToFloat64(m.multicasts), testutil.ToFloat64(m.sent), testutil.ToFloat64(m.invalid))
	}
}

// Per-recipient templates, and multicast switched off, go one stanza per recipient.
func TestMulticastOnlyWhereItApplies(t *testing.T) {
	for name, c := range map[string]struct {
		b  announcement.Batch
		on bool
	}{
		"inc_id": {b: batch("a", "b"), on: true},
		"off":    {b: multicastBatch("a", "b"), on: false},
	} {
		mc := multicastOn(10)
		mc.Enable(c.on)
		l := &fakeLink{}
		s, m := newSender(t, &fakeLinks{links: []*fakeLink{l}}, Options{Multicast: mc})
		if err := s.Deliver(context.Background(), c.b); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(l.written.String(), "addresses") || testutil.ToFloat64(m.multicasts) != 0 || strings.Contains(strings.Join(l.ops, ","), "echo") {
			t.Fatalf("%s: a multicast went out: %s", name, l.written.String())
		}
		if n := strings.Count(l.written.String(), "<message "); n != 2 {
			t.Fatalf("%s: %d stanzas, want 2", name, n)
		}
	}
}

// refusingLink is a link whose multicasts the service refuses: the refusal
// is counted before the echo comes back.
type refusingLink struct{ *fakeLink }

func (l refusingLink) FenceMulticast(ctx context.Context) error {
	l.mu.Lock()
	l.refusals++
	l.mu.Unlock()
	return l.fakeLink.FenceMulticast(ctx)
}

type linkList []Link

func (ls *linkList) Acquire(ctx context.Context, _ bool) (Link, error) {
	if len(*ls) == 0 {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	l := (*ls)[0]
	*ls = (*ls)[1:]
	return l, nil
}

// A refused multicast sends the batch again one stanza per recipient, and
// turns multicast off for the batches after it: nobody is left out.
func TestRefusedMulticastFallsBackToUnicast(t *testing.T) {
	refused, next := refusingLink{&fakeLink{}}, &fakeLink{slot: 1}
	mc := multicastOn(10)
	links := linkList{refused, next}
	s, m := newSender(t, &links, Options{Multicast: mc, Conns: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Deliver(ctx, multicastBatch("a", "b")); err != nil {
		t.Fatal(err)
	}
	want := strings.ReplaceAll(plainTmpl, "%s", "a@localhost") + strings.ReplaceAll(plainTmpl, "%s", "b@localhost")
	if got := next.written.String(); got != want {
		t.Fatalf("after the refusal:\n%s\nwant:\n%s", got, want)
	}
	if mc.Enabled() || testutil.ToFloat64(m.multicastOff) != 1 {
		t.Fatal("multicast still on after a refusal")
	}
}

// A refusal read after the batch's fence (ejabberd sent it to another
// connection) sends the multicast batches fenced just before again, one
// stanza per recipient, and turns multicast off; a unicast batch is not sent again.
func TestRefusalAfterTheFenceSendsTheBatchAgain(t *testing.T) {
	first, unicast, next := &fakeLink{}, &fakeLink{}, &fakeLink{}
	mc := multicastOn(10)
	links := linkList{first, unicast, next}
	s, m := newSender(t, &links, Options{Multicast: mc, ShutdownResend: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Deliver(ctx, multicastBatch("a", "b")); err != nil {
		t.Fatal(err)
	}
	if err := s.Deliver(ctx, batch("c")); err != nil { // per recipient ([inc_id]): never a multicast
		t.Fatal(err)
	}
	if !strings.Contains(first.written.String(), "addresses") {
		t.Fatalf("the first batch did not go as a multicast: %s", first.written.String())
	}
	testkit.Background(t, "resends", s.Run)
	s.MulticastRefused()
	want := strings.ReplaceAll(plainTmpl, "%s", "a@localhost") + strings.ReplaceAll(plainTmpl, "%s", "b@localhost")
	testkit.Eventually(t, 5*time.Second, "the multicast batch sent again", func() bool { return next.text() == want })
	if mc.Enabled() || testutil.ToFloat64(m.multicastOff) != 1 {
		t.Fatalf("multicast on %v, fallbacks %v: want off and 1", mc.Enabled(), testutil.ToFloat64(m.multicastOff))
	}
}

// duringFence is a link that runs fn while a multicast fence is out: a
// refusal the pool reads on another connection as the echo comes back here.
type duringFence struct {
	*fakeLink
	fn func()
}

func (l duringFence) FenceMulticast(ctx context.Context) error {
	l.fn()
	return l.fakeLink.FenceMulticast(ctx)
}

// A refusal that comes while a multicast batch is in flight, whose fence
// then passes, sends the batch again whole, one stanza per recipient.
func TestRefusalDuringTheBatchSendsItAgain(t *testing.T) {
	next := &fakeLink{}
	mc := multicastOn(10)
	var s *Sender
	links := linkList{duringFence{&fakeLink{}, func() { s.MulticastRefused() }}, next}
	s, m := newSender(t, &links, Options{Multicast: mc, ShutdownResend: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Deliver(ctx, multicastBatch("a", "b")); err != nil {
		t.Fatal(err)
	}
	testkit.Background(t, "resends", s.Run)
	want := strings.ReplaceAll(plainTmpl, "%s", "a@localhost") + strings.ReplaceAll(plainTmpl, "%s", "b@localhost")
	testkit.Eventually(t, 5*time.Second, "the batch sent again", func() bool { return next.text() == want })
	if testutil.ToFloat64(m.multicastOff) != 1 {
		t.Fatalf("fallbacks %v, want 1", testutil.ToFloat64(m.multicastOff))
	}
}

// A multicast larger than the limiter's burst is paid for in several reservations.
func TestLargeMulticastIsPaced(t *testing.T) {
	l := &fakeLink{}
	s, _ := newSender(t, &fakeLinks{links: []*fakeLink{l}}, Options{Multicast: multicastOn(100), RatePerConn: 200})
	recipients := make([]string, 100)
	for i := range recipients {
		recipients[i] = "u" + strings.Repeat("x", i%3) + string(rune('a'+i%26))
	}
	start := time.Now()
	if err := s.Deliver(context.Background(), multicastBatch(recipients...)); err != nil {
		t.Fatal(err)
	}
	// 100 recipients at 200/s with a burst of 10: about 0.45 s.
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("100 recipients at 200/s took %s", took)
	}
	if n := strings.Count(l.written.String(), "<message "); n != 1 {
		t.Fatalf("%d stanzas, want one multicast", n)
	}
}

// A template whose from is not in the component's domain (check_from =
// false, or a replica's from_domain) goes one stanza per recipient even with
// multicast on: the service would send a refusal to that from, never to us,
// and the batch would be fenced and committed with nobody served. A from in
// the component's domain, bare, with a user or a resource, still multicasts.
func TestMulticastOnlyFromTheComponentDomain(t *testing.T) {
	for _, c := range []struct {
		from      string
		multicast bool
	}{
		{"admin@localhost", false},
		{"admin&#64;localhost", false}, // as ejabberd reads it
		{"announcer-r1.localhost", false},
		{"announcer.localhost", true},
		{"ANNOUNCER.localhost", true},
		{"news@announcer.localhost/x", true},
	} {
		l := &fakeLink{}
		s, m := newSender(t, &fakeLinks{links: []*fakeLink{l}}, Options{
			Multicast: multicastOn(10),
			Templates: stanza.NewCache(stanza.Options{ComponentDomain: "announcer.localhost", AnyFrom: true}, 16),
		})
		b := announcement.Batch{AnnouncementID: "f", Template: "<message to='%s' from='" + c.from + "'><body>x</body></message>", Recipients: []string{"a", "b"}}
		if err := s.Deliver(context.Background(), b); err != nil {
			t.Fatalf("from %s: %v", c.from, err)
		}
		written, ops := l.text(), strings.Join(l.ops, ",")
		multicast := strings.Contains(written, "<addresses") || strings.Contains(ops, "echo")
		if multicast != c.multicast {
			t.Fatalf("from %s: multicast %v, want %v (ops %s):\n%s", c.from, multicast, c.multicast, ops, written)
		}
		if !c.multicast {
			if n := strings.Count(written, "<message "); n != 2 || testutil.ToFloat64(m.multicastForeign) != 1 {
				t.Fatalf("from %s: %d stanzas, multicast_foreign_from_total %v; want 2 and 1", c.from, n, testutil.ToFloat64(m.multicastForeign))
			}
		}
	}
}

// Without Home the sender cannot tell where a refusal goes: no multicast.
func TestMulticastNeedsHome(t *testing.T) {
	mc := &Multicast{Service: "multicast.localhost", Max: 10}
	mc.Enable(true)
	l := &fakeLink{}
	s, _ := newSender(t, &fakeLinks{links: []*fakeLink{l}}, Options{Multicast: mc})
	if err := s.Deliver(context.Background(), multicastBatch("a", "b")); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(l.text(), "<addresses") {
		t.Fatalf("a multicast went out without Home: %s", l.text())
	}
}

// poolRefusal is a link that, as the pool does, counts a refusal read on it
// and tells the sender while a multicast fence is out.
type poolRefusal struct {
	*fakeLink
	s **Sender
}

func (l poolRefusal) FenceMulticast(ctx context.Context) error {
	l.mu.Lock()
	l.refusals++
	l.mu.Unlock()
	(*l.s).MulticastRefused()
	return l.fakeLink.FenceMulticast(ctx)
}

// A batch that its own refused fence sent again from its first recipient,
// one stanza per recipient, is not queued to go again a second time.
func TestARefusedBatchResentWholeGoesOnce(t *testing.T) {
	var s *Sender
	next := &fakeLink{slot: 1}
	links := linkList{poolRefusal{&fakeLink{}, &s}, next}
	s, m := newSender(t, &links, Options{Multicast: multicastOn(10), Conns: 2, ShutdownResend: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Deliver(ctx, multicastBatch("a", "b")); err != nil {
		t.Fatal(err)
	}
	want := strings.ReplaceAll(plainTmpl, "%s", "a@localhost") + strings.ReplaceAll(plainTmpl, "%s", "b@localhost")
	if got := next.text(); got != want {
		t.Fatalf("after the refusal:\n%s\nwant:\n%s", got, want)
	}
	if queued := queuedAgain(s); queued != 0 || testutil.ToFloat64(m.multicastOff) != 1 {
		t.Fatalf("%d batches queued to go again, fallbacks %v: want 0 and 1 (the batch was sent again whole already)",
			queued, testutil.ToFloat64(m.multicastOff))
	}
}

// A batch whose multicasts alone make ejabberd close the stream (a multicast
// over the listener's max_stanza_size) goes one stanza per recipient, and is
// delivered: it is not poison for what its unicast stanzas never did.
func TestARejectedMulticastGoesOneStanzaPerRecipient(t *testing.T) {
	var links []*fakeLink
	for range 6 {
		links = append(links, &fakeLink{rejectMulticast: true})
	}
	fl := &fakeLinks{links: links}
	s, m := newSender(t, fl, Options{Multicast: multicastOn(2), Rejections: 2})
	if err := s.Deliver(context.Background(), multicastBatch("a", "b", "c")); err != nil {
		t.Fatalf("got %v, want the batch delivered one stanza per recipient", err)
	}
	// Shared, then alone as multicasts, then alone one by one.
	if fl.next != 3 {
		t.Fatalf("%d attempts, want 3", fl.next)
	}
	if got := links[2].text(); strings.Contains(got, "multicast.localhost") || strings.Count(got, "<message ") != 3 {
		t.Fatalf("the last attempt wrote:\n%s\nwant 3 stanzas, no multicast", got)
	}
	if testutil.ToFloat64(m.multicastRejected) != 1 || testutil.ToFloat64(m.batches.WithLabelValues("poison")) != 0 {
		t.Fatalf("multicast rejected %v, poison %v", testutil.ToFloat64(m.multicastRejected), testutil.ToFloat64(m.batches.WithLabelValues("poison")))
	}
	// Multicast stays on for the other batches.
	if !s.opt.Multicast.Enabled() {
		t.Fatal("multicast switched off for every batch")
	}
}
