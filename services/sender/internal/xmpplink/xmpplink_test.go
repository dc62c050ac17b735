package xmpplink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/pkg/testkit/tcpproxy"
	"github.com/announcer/announcer/pkg/testkit/xmppsink"
	"github.com/announcer/announcer/pkg/testkit/xmpptest"
	"github.com/announcer/announcer/services/sender/internal/testuser"
)

type harness struct {
	pool *Pool
	m    *Metrics
	reg  *prometheus.Registry
}

// startPool runs a pool against addr until the test ends.
func startPool(t *testing.T, opt Options) *harness {
	t.Helper()
	if opt.Node == "" {
		opt.Node = "test"
	}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	p, err := NewPool(opt, testkit.Log(t, zerolog.WarnLevel), m)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Background(t, "pool", p.Run)
	return &harness{pool: p, m: m, reg: reg}
}

func (h *harness) waitUp(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for h.pool.Up() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections up after %s, want %d (connect failures %v)",
				h.pool.Up(), timeout, n, testutil.ToFloat64(h.m.dialFailures))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := testutil.ToFloat64(h.m.up); int(got) != h.pool.Up() {
		t.Fatalf("connections_up gauge %v, pool says %d", got, h.pool.Up())
	}
}

func realOptions(env stacktest.Env, conns int) Options {
	return Options{
		Addr:         env.AddrFor(testuser.ComponentDomain(env, 0)),
		JID:          testuser.ComponentDomain(env, 0),
		Secret:       env.SecretFor(testuser.ComponentDomain(env, 0)),
		ServerDomain: env.XMPPDomain,
		Conns:        conns,
		PingTimeout:  10 * time.Second,
		ReconnectMin: 50 * time.Millisecond,
		ReconnectMax: 500 * time.Millisecond,
	}
}

// acquire takes a shared connection for the rest of the test; the context
// bounds what the test does with it.
func (h *harness) acquire(t *testing.T, timeout time.Duration) (context.Context, *Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	c, err := h.pool.Acquire(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Release)
	return ctx, c
}

// proxied runs a one-connection pool to the stack's ejabberd through a TCP
// proxy the test can freeze, blackhole or cut.
func proxied(t *testing.T, mode tcpproxy.Mode, tweak func(*Options)) (*harness, *tcpproxy.Proxy) {
	t.Helper()
	env := stacktest.Get(t)
	proxy := tcpproxy.New(t, env.AddrFor(testuser.ComponentDomain(env, 0)), mode)
	opt := realOptions(env, 1)
	opt.Addr = proxy.Addr()
	if tweak != nil {
		tweak(&opt)
	}
	return startPool(t, opt), proxy
}

func fence(t *testing.T, h *harness) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := h.pool.Acquire(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	return c.Fence(ctx)
}

// The handshake with the real ejabberd succeeds on every connection, and a
// fence returns once ejabberd answers the ping.
func TestRealHandshakeAndFence(t *testing.T) {
	env := stacktest.Get(t)
	h := startPool(t, realOptions(env, 2))
	h.waitUp(t, 2, 10*time.Second)
	if err := fence(t, h); err != nil {
		t.Fatalf("fence: %v", err)
	}
	if got := testutil.ToFloat64(h.m.fences); got != 1 {
		t.Fatalf("fences_total = %v, want 1", got)
	}
}

// With several connections of one component, ejabberd routes ping results to
// any of them: every fence must still complete, and some results must have
// come back on another connection than their ping (else the test proves nothing).
func TestRealFenceResultsCrossConnections(t *testing.T) {
	env := stacktest.Get(t)
	h := startPool(t, realOptions(env, 3))
	h.waitUp(t, 3, 10*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 60)
	for range 60 {
		wg.Go(func() { errs <- fence(t, h) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("fence: %v", err)
		}
	}
	if got := h.pool.crossResults.Load(); got == 0 {
		t.Fatal("no ping result arrived on another connection than its ping; cross-connection correlation untested")
	}
	if got := testutil.ToFloat64(h.m.pingTimeouts); got != 0 {
		t.Fatalf("ping timeouts: %v", got)
	}
}

// A wrong secret never counts as up; the pool keeps retrying.
func TestRealWrongSecretKeepsRetrying(t *testing.T) {
	env := stacktest.Get(t)
	opt := realOptions(env, 1)
	opt.Secret = "wrong-" + env.ComponentSecret
	h := startPool(t, opt)
	testkit.Eventually(t, 10*time.Second, "three failed attempts", func() bool {
		return testutil.ToFloat64(h.m.dialFailures) >= 3
	})
	if h.pool.Up() != 0 {
		t.Fatal("a connection with a wrong secret counts as up")
	}
}

// A server that accepts TCP and never answers the handshake cannot wedge the
// pool: handshakes time out, and once the real ejabberd is behind the address,
// the connection comes up.
func TestRealHandshakeNeverAnsweredThenRecovers(t *testing.T) {
	h, proxy := proxied(t, tcpproxy.Blackhole, func(o *Options) { o.HandshakeTimeout = 300 * time.Millisecond })
	testkit.Eventually(t, 10*time.Second, "handshakes against a silent server to time out", func() bool {
		return testutil.ToFloat64(h.m.dialFailures) >= 2
	})
	if h.pool.Up() != 0 {
		t.Fatal("up without a handshake")
	}
	proxy.Set(tcpproxy.Forward)
	h.waitUp(t, 1, 10*time.Second)
	if err := fence(t, h); err != nil {
		t.Fatalf("fence after recovery: %v", err)
	}
}

// A connection whose peer stops answering is detected by the keepalive ping
// timeout and replaced.
func TestRealDeadConnectionReplaced(t *testing.T) {
	h, proxy := proxied(t, tcpproxy.Forward, func(o *Options) {
		o.PingInterval = 200 * time.Millisecond
		o.PingTimeout = 600 * time.Millisecond
	})
	h.waitUp(t, 1, 10*time.Second)
	proxy.Freeze()
	proxy.Set(tcpproxy.Refuse)
	testkit.Eventually(t, 10*time.Second, "the frozen connection to be detected by a ping timeout", func() bool {
		return testutil.ToFloat64(h.m.pingTimeouts) >= 1 && h.pool.Up() == 0
	})
	proxy.KillAll()
	proxy.Thaw()
	proxy.Set(tcpproxy.Forward)
	h.waitUp(t, 1, 10*time.Second)
	if got := testutil.ToFloat64(h.m.reconnects); got < 1 {
		t.Fatalf("reconnects_total = %v", got)
	}
}

// A fence on a connection killed before the ping is answered reports the
// loss (so the caller resends) rather than success or a hang.
func TestRealFenceOnKilledConnection(t *testing.T) {
	h, proxy := proxied(t, tcpproxy.Forward, nil)
	h.waitUp(t, 1, 10*time.Second)
	ctx, c := h.acquire(t, 10*time.Second)
	proxy.Freeze() // the ping is written but never reaches ejabberd
	errc := make(chan error, 1)
	go func() { errc <- c.Fence(ctx) }()
	time.Sleep(100 * time.Millisecond)
	proxy.KillAll()
	proxy.Thaw()
	if err := <-errc; !isLost(err) {
		t.Fatalf("fence on a killed connection: %v, want ErrLost", err)
	}
	if err := c.Write([]byte("<message/>")); !isLost(err) {
		t.Fatalf("write on a dead connection: %v, want ErrLost", err)
	}
}

// Error stanzas coming back are counted by kind and condition and do not
// hurt the connection; stream-level rejections are reported as such.
func TestRealErrorsCountedConnectionSurvives(t *testing.T) {
	env := stacktest.Get(t)
	opt := realOptions(env, 1)
	opt.JID = testuser.ComponentDomain(env, 2)
	opt.Secret = env.SecretFor(opt.JID)
	opt.Addr = env.AddrFor(opt.JID)
	h := startPool(t, opt)
	h.waitUp(t, 1, 10*time.Second)
	ctx, c := h.acquire(t, 60*time.Second)
	// ejabberd may route a bounce to any connection of any domain of the
	// listener (global_routes), including other processes': send rounds until
	// each kind was seen here at least once.
	su := func() float64 {
		return testutil.ToFloat64(h.m.inboundErrors.WithLabelValues("message", "service-unavailable"))
	}
	br := func() float64 {
		return testutil.ToFloat64(h.m.inboundErrors.WithLabelValues("message", "jid-malformed")) +
			testutil.ToFloat64(h.m.inboundErrors.WithLabelValues("message", "bad-request"))
	}
	deadline := time.Now().Add(20 * time.Second)
	for round := 0; su() == 0 || br() == 0; round++ {
		if time.Now().After(deadline) {
			t.Fatalf("after %d rounds: service-unavailable %v, malformed %v; want both counted", round, su(), br())
		}
		var b strings.Builder
		for i := range 5 {
			fmt.Fprintf(&b, "<message to='nobody-%d-%d@%s' from='%s' type='chat'><body>x</body></message>",
				time.Now().UnixNano(), i, env.XMPPDomain, opt.JID)
		}
		b.WriteString("<message to='a@b@c' from='" + opt.JID + "'><body>x</body></message>")
		if err := c.Write([]byte(b.String())); err != nil {
			t.Fatal(err)
		}
		if err := c.Fence(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := testutil.ToFloat64(h.m.inboundErrors.WithLabelValues("message", "none")) +
		testutil.ToFloat64(h.m.inboundErrors.WithLabelValues("message", "other")); got != 0 {
		t.Fatalf("%v error stanzas without a recognised condition", got)
	}
	if err := c.Fence(ctx); err != nil {
		t.Fatalf("connection hurt by error stanzas: %v", err)
	}

	// A stanza without `from` makes ejabberd close the stream: a rejection.
	if err := c.Write([]byte("<message to='alice@" + env.XMPPDomain + "'><body>x</body></message>")); err != nil {
		t.Fatal(err)
	}
	err := c.Fence(ctx)
	var lost *LostError
	if !asLost(err, &lost) || !lost.Rejected() {
		t.Fatalf("after a stanza without from: %v, want a rejected LostError", err)
	}
	h.waitUp(t, 1, 10*time.Second)
}

// An IQ addressed to the component gets an answer (a ping, a result; anything
// else, service-unavailable).
func TestRealAnswersIQ(t *testing.T) {
	env := stacktest.Get(t)
	if env.EjabberdAPI == "" {
		stacktest.Missing(t, "no ejabberd HTTP API (ANNOUNCER_EJABBERD_API)")
	}
	h := startPool(t, realOptions(env, 1))
	h.waitUp(t, 1, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	api := testuser.API(env)
	from := "nobody@" + env.XMPPDomain + "/x"
	to := testuser.ComponentDomain(env, 0)
	// Sent again until answered: ejabberd may still route one to a connection
	// an earlier test is closing.
	deadline := time.Now().Add(5 * time.Second)
	for try := 0; testutil.ToFloat64(h.m.replies) < 2; try++ {
		if time.Now().After(deadline) {
			t.Fatalf("iq_replies_total = %v, want 2", testutil.ToFloat64(h.m.replies))
		}
		if try%10 == 0 {
			for _, st := range []string{
				"<iq type='get' id='p1' from='" + from + "' to='" + to + "'><ping xmlns='urn:xmpp:ping'/></iq>",
				"<iq type='get' id='v1' from='" + from + "' to='" + to + "'><query xmlns='jabber:iq:version'/></iq>",
			} {
				if _, err := api.Call(ctx, "send_stanza", map[string]string{"from": from, "to": to, "stanza": st}); err != nil {
					t.Fatal(err)
				}
			}
		}
		time.Sleep(30 * time.Millisecond)
	}
	if err := fence(t, h); err != nil {
		t.Fatal(err)
	}
}

// The counting sink speaks enough XEP-0114 for the pool: handshake, stanzas, fences.
func TestSinkRoundTrip(t *testing.T) {
	s, err := xmppsink.Start("secret")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := startPool(t, Options{Addr: s.Addr(), JID: "c.example", Secret: "secret", ServerDomain: "example", Conns: 2})
	h.waitUp(t, 2, 5*time.Second)
	ctx, c := h.acquire(t, 5*time.Second)
	for range 100 {
		if err := c.Write([]byte("<message to='u@example' from='c.example'><body>b</body></message>")); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Fence(ctx); err != nil {
		t.Fatal(err)
	}
	if got := s.Stanzas(); got != 100 {
		t.Fatalf("sink counted %d stanzas, want 100", got)
	}
}

// A wrong secret against the sink: not up, retried.
func TestSinkWrongSecret(t *testing.T) {
	s, err := xmppsink.Start("secret")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := startPool(t, Options{Addr: s.Addr(), JID: "c.example", Secret: "nope", ServerDomain: "example",
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 20 * time.Millisecond})
	testkit.Eventually(t, 5*time.Second, "a retry after a failed handshake", func() bool {
		return testutil.ToFloat64(h.m.dialFailures) >= 2
	})
	if h.pool.Up() != 0 {
		t.Fatal("up after a failed handshake")
	}
}

func isLost(err error) bool { return errors.Is(err, ErrLost) }

func asLost(err error, target **LostError) bool { return errors.As(err, target) }

// Client mode: c2s sessions (STARTTLS, SASL, a resource per connection) come
// up, fence with pings the server answers, and deliver.
func TestRealClientSessions(t *testing.T) {
	env := stacktest.Get(t)
	sender := testuser.Register(t, env, "snd_acct")
	rcpt := testuser.Login(t, env, "snd_rcpt")
	account := sender + "@" + env.XMPPDomain
	h := startPool(t, Options{
		Addr: env.C2SAddr, ServerDomain: env.XMPPDomain, Conns: 2, PingTimeout: 10 * time.Second,
		ReconnectMin: 50 * time.Millisecond, ReconnectMax: 500 * time.Millisecond,
		// Loopback stack, self-signed certificate.
		Handshake: ClientHandshake(account, sender, "announcer", &tls.Config{InsecureSkipVerify: true}), //nolint:gosec
	})
	h.waitUp(t, 2, 15*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for range 2 {
		c, err := h.pool.Acquire(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Write([]byte("<message to='" + rcpt.JID.String() + "' type='chat'><body>via c2s</body></message>")); err != nil {
			t.Fatal(err)
		}
		if err := c.Fence(ctx); err != nil {
			t.Fatal(err)
		}
		c.Release()
	}
	msgs, err := rcpt.Wait(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	from := map[string]bool{}
	for _, m := range msgs {
		if len(m.Bodies) != 1 || m.Bodies[0] != "via c2s" {
			t.Fatalf("received %+v", m)
		}
		from[m.From] = true
	}
	slots := map[string]bool{}
	for f := range from {
		res, ok := strings.CutPrefix(f, account+"/announcer-")
		if !ok || len(res) != len("abcd-0") {
			t.Fatalf("message from %s: want the resource announcer-<tag>-<slot>", f)
		}
		slots[res[len(res)-1:]] = true
	}
	if !slots["0"] || !slots["1"] {
		t.Fatalf("messages from %v: want one from each connection's resource", from)
	}
}

// Two senders logged in to one account (the senders of two nodes, or two
// replicas) keep their sessions: their resources differ, so ejabberd does
// not end one session for the other's login.
func TestRealClientSessionsOfTwoSendersCoexist(t *testing.T) {
	env := stacktest.Get(t)
	sender := testuser.Register(t, env, "snd_two")
	account := sender + "@" + env.XMPPDomain
	opt := func() Options {
		return Options{Addr: env.C2SAddr, ServerDomain: env.XMPPDomain, Conns: 2, PingTimeout: 10 * time.Second,
			ReconnectMin: 50 * time.Millisecond, ReconnectMax: 500 * time.Millisecond,
			Handshake: ClientHandshake(account, sender, "announcer", &tls.Config{InsecureSkipVerify: true})} //nolint:gosec
	}
	a, b := startPool(t, opt()), startPool(t, opt())
	a.waitUp(t, 2, 15*time.Second)
	b.waitUp(t, 2, 15*time.Second)
	time.Sleep(2 * time.Second) // a session ended by a conflict would be replaced within this
	for name, h := range map[string]*harness{"first": a, "second": b} {
		if r := testutil.ToFloat64(h.m.reconnects); r != 0 || h.pool.Up() != 2 {
			t.Errorf("the %s sender: %v reconnects, %d connections up; want 0 and 2", name, r, h.pool.Up())
		}
	}
}

// A caller that asks to be alone gets a connection nobody else writes on: it
// waits for the users of the connection to leave, shared callers wait behind
// it (or it would starve), and they go on once it released the connection.
func TestAcquireAlone(t *testing.T) {
	env := stacktest.Get(t)
	h := startPool(t, realOptions(env, 1))
	h.waitUp(t, 1, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	shared, err := h.pool.Acquire(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	// acquire asks for a connection in the background: the channel has it once granted.
	acquire := func(alone bool) <-chan *Conn {
		got := make(chan *Conn, 1)
		go func() {
			c, err := h.pool.Acquire(ctx, alone)
			if err != nil {
				t.Error(err)
			}
			got <- c
		}()
		return got
	}
	aloneGot := acquire(true)
	testkit.Eventually(t, 5*time.Second, "the alone caller waiting", func() bool {
		h.pool.mu.Lock()
		defer h.pool.mu.Unlock()
		return h.pool.waitingAlone == 1
	})
	sharedGot := acquire(false)
	select {
	case <-aloneGot:
		t.Fatal("alone while another caller holds the connection")
	case <-sharedGot:
		t.Fatal("a shared caller went ahead of one waiting to be alone")
	case <-time.After(200 * time.Millisecond):
	}
	shared.Release()
	alone := <-aloneGot
	select {
	case <-sharedGot:
		t.Fatal("a shared caller got the connection while it is held alone")
	case <-time.After(200 * time.Millisecond):
	}
	alone.Release()
	select {
	case c := <-sharedGot:
		c.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("the shared caller never got the connection back")
	}
}

// The stack's ejabberd runs mod_multicast with its limits raised: a probe of
// many addresses comes back whole, and a multicast to logged-in users is
// delivered to each of them once its echo fence returned.
func TestRealMulticastProbeAndFence(t *testing.T) {
	env := stacktest.Get(t)
	domain := testuser.ComponentDomain(env, 4)
	opt := realOptions(env, 2)
	opt.Addr, opt.JID, opt.Secret = env.AddrFor(domain), domain, env.SecretFor(domain)
	opt.MulticastService = "multicast." + env.XMPPDomain
	h := startPool(t, opt)
	h.waitUp(t, 2, 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.pool.ProbeMulticast(ctx, 200); err != nil {
		t.Fatalf("probe: %v", err)
	}

	clients := []*xmpptest.Client{testuser.Login(t, env, "mc_a"), testuser.Login(t, env, "mc_b"), testuser.Login(t, env, "mc_c")}
	tpl, err := stanza.Parse([]byte("<message to='%s' from='"+domain+"' type='chat'><body>to all three</body></message>"), stanza.Options{ComponentDomain: domain})
	if err != nil || !tpl.Multicast() {
		t.Fatalf("template: %v (multicast %v)", err, tpl != nil && tpl.Multicast())
	}
	b := tpl.AppendMulticastHead(nil, opt.MulticastService)
	for _, c := range clients {
		b = stanza.AppendBcc(b, c.JID.Bare().String())
	}
	b = tpl.AppendMulticastTail(b)
	_, c := h.acquire(t, 30*time.Second)
	if err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := c.FenceMulticast(ctx); err != nil {
		t.Fatalf("multicast fence: %v", err)
	}
	for _, cl := range clients {
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		msgs, err := cl.Wait(wctx, 1)
		wcancel()
		if err != nil || len(msgs) != 1 || len(msgs[0].Bodies) != 1 || msgs[0].Bodies[0] != "to all three" {
			t.Fatalf("%s: %v %+v", cl.JID, err, msgs)
		}
	}
	if testutil.ToFloat64(h.m.echoes) < 1 || testutil.ToFloat64(h.m.multicastRefused) != 0 {
		t.Fatalf("echoes %v, refused %v", testutil.ToFloat64(h.m.echoes), testutil.ToFloat64(h.m.multicastRefused))
	}
}
