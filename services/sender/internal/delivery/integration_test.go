package delivery_test

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/pkg/testkit/tcpproxy"
	"github.com/announcer/announcer/pkg/testkit/xmpptest"
	"github.com/announcer/announcer/services/sender/internal/delivery"
	"github.com/announcer/announcer/services/sender/internal/testuser"
	"github.com/announcer/announcer/services/sender/internal/xmpplink"
)

type rig struct {
	env    stacktest.Env
	domain string // the component domain this test uses alone
	pool   *xmpplink.Pool
	sender *delivery.Sender
	reg    *prometheus.Registry
}

// newRig runs a pool of conns connections to addr (the real ejabberd or a
// proxy in front of it) and the use case on top, until the test ends.
func newRig(t *testing.T, addr string, conns, rate int) *rig {
	t.Helper()
	env := stacktest.Get(t)
	domain := testuser.ComponentDomain(env, 1)
	if addr == "" {
		addr = env.AddrFor(domain)
	}
	reg := prometheus.NewRegistry()
	metrics := prometheus.WrapRegistererWithPrefix("announcer_sender_", reg)
	log := testkit.Log(t, zerolog.WarnLevel)
	pool, err := xmpplink.NewPool(xmpplink.Options{
		Node: "n1", Addr: addr, JID: domain, Secret: env.SecretFor(domain),
		ServerDomain: env.XMPPDomain, Conns: conns, PingTimeout: 10 * time.Second,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
	}, log, xmpplink.NewMetrics(metrics))
	if err != nil {
		t.Fatal(err)
	}
	testkit.Background(t, "pool", pool.Run)
	s := delivery.New(delivery.Options{
		UserDomain: env.XMPPDomain, Templates: stanza.NewCache(stanza.Options{ComponentDomain: domain}, 64),
		Conns: conns, RatePerConn: rate, Rejections: 3,
		RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
	}, delivery.LinksOf(pool.Acquire), log, delivery.NewMetrics(metrics))
	return &rig{env: env, domain: domain, pool: pool, sender: s, reg: reg}
}

// template exercises escaping: the body must arrive exactly as the template
// meant it; a second body carries the recipient's inc_id.
func template(domain string) string {
	return "<message to='%s' from='" + domain + "' type='chat' id='m-[inc_id]'>" +
		"<body>h\u00e9llo &lt;b&gt; &amp; \u2713 \"q\" [inc_id]</body>" +
		"<body xml:lang='inc'>[inc_id]</body></message>"
}

const wantText = "h\u00e9llo <b> & \u2713 \"q\" "

func deliver(t *testing.T, r *rig, b *announcement.Batch, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := r.sender.Deliver(ctx, *b); err != nil {
		t.Fatalf("deliver: %v", err)
	}
}

func wait(t *testing.T, c *xmpptest.Client, n int, timeout time.Duration) []xmpptest.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	msgs, err := c.Wait(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// incs returns the distinct inc_ids received.
func incs(msgs []xmpptest.Message) map[string]int {
	out := map[string]int{}
	for _, m := range msgs {
		if len(m.Bodies) == 2 {
			out[m.Bodies[1]]++
		}
	}
	return out
}

// Stanzas reach real logged-in users intact: each gets its own JID in `to`,
// its own inc_id, the body unchanged, nothing injected; an invalid username
// is skipped.
func TestRealStanzasReachClientsIntact(t *testing.T) {
	r := newRig(t, "", 2, 1000)
	alice := testuser.Login(t, r.env, "snd_a")
	bob := testuser.Login(t, r.env, "snd_b")
	b := &announcement.Batch{
		AnnouncementID: "intact", Template: template(r.domain), FirstIncID: 100,
		Recipients: []string{alice.JID.String(), "not a user", bob.JID.String()},
	}
	deliver(t, r, b, 20*time.Second)
	for _, tc := range []struct {
		c   *xmpptest.Client
		inc int
	}{{alice, 100}, {bob, 102}} {
		got := wait(t, tc.c, 1, 10*time.Second)
		m := got[0]
		inc := strconv.Itoa(tc.inc)
		want := xmpptest.Message{
			From: r.domain, To: tc.c.JID.String(), Type: "chat", ID: "m-" + inc,
			Bodies: []string{wantText + inc, inc}, Children: 2,
		}
		if !reflect.DeepEqual(m, want) {
			t.Errorf("%s received\n %+v\nwant\n %+v", tc.c.JID, m, want)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := len(alice.Messages()) + len(bob.Messages()); n != 2 {
		t.Errorf("%d messages received, want 2", n)
	}
	if got := testkit.Gathered(t, r.reg, "announcer_sender_invalid_recipients_total"); got != 1 {
		t.Errorf("invalid recipients = %v, want 1", got)
	}
}

// A bare username is completed with the users' domain and reaches the user.
func TestRealBareUsernameCompleted(t *testing.T) {
	r := newRig(t, "", 1, 1000)
	carol := testuser.Login(t, r.env, "snd_c")
	deliver(t, r, &announcement.Batch{
		AnnouncementID: "bare", Template: template(r.domain), Recipients: []string{carol.JID.Localpart()},
	}, 20*time.Second)
	got := wait(t, carol, 1, 10*time.Second)
	if want := carol.JID.Bare().String(); got[0].To != want && got[0].To != carol.JID.String() {
		t.Fatalf("to = %q, want %q", got[0].To, want)
	}
}

// The per-connection rate limit holds within ±10 % over a few seconds, as
// seen by the receiving client.
func TestRealRateLimitObserved(t *testing.T) {
	const rate, n, skip = 200, 700, 20
	r := newRig(t, "", 1, rate)
	alice := testuser.Login(t, r.env, "snd_rate")
	recipients := make([]string, n)
	for i := range recipients {
		recipients[i] = alice.JID.String()
	}
	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		errc <- r.sender.Deliver(ctx, announcement.Batch{AnnouncementID: "rate", Template: template(r.domain), Recipients: recipients})
	}()
	// The first chunk is the bucket's burst; measure from the skip-th arrival on.
	wait(t, alice, skip, 10*time.Second)
	t0 := time.Now()
	wait(t, alice, n, 20*time.Second)
	t1 := time.Now()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	observed := float64(n-skip) / t1.Sub(t0).Seconds()
	t.Logf("%d stanzas at %d/s: delivered and fenced in %s, observed %.1f/s at the client", n, rate, time.Since(start), observed)
	if observed < rate*0.9 || observed > rate*1.1 {
		t.Fatalf("observed %.1f stanzas/s, want %d ± 10%%", observed, rate)
	}
	if testkit.Gathered(t, r.reg, "announcer_sender_rate_limit_wait_seconds_total") < 2 {
		t.Fatal("rate-limit wait not counted")
	}
}

// Connections killed mid-batch: the batch is resent on a new connection and
// every stanza still arrives (duplicates allowed, bounded by the batch).
func TestRealConnectionKilledMidBatch(t *testing.T) {
	const n = 600
	env := stacktest.Get(t)
	proxy := tcpproxy.New(t, env.AddrFor(testuser.ComponentDomain(env, 1)), tcpproxy.Forward)
	r := newRig(t, proxy.Addr(), 2, 400)
	alice := testuser.Login(t, r.env, "snd_kill")
	recipients := make([]string, n)
	for i := range recipients {
		recipients[i] = alice.JID.String()
	}
	waitUp(t, r.pool, 2)
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		errc <- r.sender.Deliver(ctx, announcement.Batch{AnnouncementID: "kill", Template: template(r.domain), Recipients: recipients})
	}()
	// Kill once stanzas are flowing, well before the batch (1.5 s at 400/s) is done.
	wait(t, alice, 100, 10*time.Second)
	proxy.KillAll()
	if err := <-errc; err != nil {
		t.Fatalf("deliver: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		have := alice.Messages()
		if len(incs(have)) == n {
			break
		}
		if _, err := alice.Wait(ctx, len(have)+1); err != nil && len(incs(alice.Messages())) < n {
			t.Fatalf("%d of %d recipients' stanzas arrived: %v", len(incs(alice.Messages())), n, err)
		}
	}
	got := len(alice.Messages())
	if got > 2*n {
		t.Fatalf("%d messages for %d recipients: more than one batch duplicated", got, n)
	}
	if m := testkit.Gathered(t, r.reg, "announcer_sender_resends_total"); m < 1 {
		t.Fatalf("resends_total = %v", m)
	}
	t.Logf("%d recipients, %d messages received across the kill and the resend", n, got)
}

// While no connection can be made (the address is a silent server), the
// batch waits; once the real ejabberd is behind the address it is delivered.
func TestRealDeliversOnceServerIsBack(t *testing.T) {
	env := stacktest.Get(t)
	proxy := tcpproxy.New(t, env.AddrFor(testuser.ComponentDomain(env, 1)), tcpproxy.Blackhole)
	r := newRig(t, proxy.Addr(), 1, 1000)
	alice := testuser.Login(t, r.env, "snd_back")
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		errc <- r.sender.Deliver(ctx, announcement.Batch{
			AnnouncementID: "back", Template: template(r.domain), Recipients: []string{alice.JID.String()},
		})
	}()
	select {
	case err := <-errc:
		t.Fatalf("delivered without a server: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	proxy.Set(tcpproxy.Forward)
	proxy.KillAll() // the hung handshake; the pool would time it out and retry anyway
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	wait(t, alice, 1, 10*time.Second)
}

func waitUp(t *testing.T, p *xmpplink.Pool, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.Up() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections up, want %d", p.Up(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// One poison batch among valid ones on a single connection: the sender
// believes ejabberd does not check from (it does, check_from: true on the
// stack's main listener), so one batch's from closes the stream every time.
// The valid batches in flight with it are sent again alone and delivered;
// only the poison one is dead-lettered.
func TestPoisonBatchIsIsolated(t *testing.T) {
	env := stacktest.Get(t)
	domain := env.ComponentDomain
	reg := prometheus.NewRegistry()
	metrics := prometheus.WrapRegistererWithPrefix("announcer_sender_", reg)
	log := testkit.Log(t, zerolog.ErrorLevel)
	pool, err := xmpplink.NewPool(xmpplink.Options{
		Node: "n1", Addr: env.ComponentAddr, JID: domain, Secret: env.ComponentSecret,
		ServerDomain: env.XMPPDomain, Conns: 1, PingTimeout: 10 * time.Second,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond,
	}, log, xmpplink.NewMetrics(metrics))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	testkit.Background(t, "pool", pool.Run)
	s := delivery.New(delivery.Options{
		UserDomain: env.XMPPDomain, Templates: stanza.NewCache(stanza.Options{ComponentDomain: domain, AnyFrom: true}, 16),
		Conns: 1, Rejections: 2, RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond,
	}, delivery.LinksOf(pool.Acquire), log, delivery.NewMetrics(metrics))
	user := testuser.Login(t, env, "poison")

	batch := func(seq int, from, body string) announcement.Batch {
		return announcement.Batch{AnnouncementID: "poison-test", Seq: seq, Recipients: []string{user.JID.String()},
			Template: "<message to='%s' from='" + from + "' type='chat'><body>" + body + "</body></message>"}
	}
	batches := []announcement.Batch{
		batch(0, domain, "valid 0"), batch(1, domain, "valid 1"),
		batch(2, "intruder@"+env.XMPPDomain, "poison"), batch(3, domain, "valid 3"),
	}
	errs := make([]error, len(batches))
	var wg sync.WaitGroup
	for i, b := range batches {
		wg.Go(func() { errs[i] = s.Deliver(ctx, b) }) // all in flight at once, as max_in_flight allows
	}
	wg.Wait()
	for i, err := range errs {
		var bad *announcement.BadRecordError
		switch {
		case i == 2 && (!errors.As(err, &bad) || bad.Label != "poison"):
			t.Errorf("the poison batch: %v, want it dead-lettered as poison", err)
		case i != 2 && err != nil:
			t.Errorf("valid batch %d: %v (dead-lettered because of its neighbour)", i, err)
		}
	}
	got := map[string]bool{}
	testkit.Eventually(t, 20*time.Second, "the three valid batches", func() bool {
		for _, m := range user.Messages() {
			got[strings.Join(m.Bodies, "")] = true
		}
		return got["valid 0"] && got["valid 1"] && got["valid 3"]
	})
	if got["poison"] {
		t.Error("the poison stanza was delivered")
	}
}
