package xmpplink

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"mellium.im/xmpp"
	"mellium.im/xmpp/component"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stream"

	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/services/sender/internal/testuser"
)

// nestedStreamPayloads are elements of the streams namespace a user can put
// in a stanza to us; mellium's reader took each for a stream-level one.
var nestedStreamPayloads = map[string]string{
	"unknown element": "<x xmlns='http://etherx.jabber.org/streams'/>",
	"stream error":    "<error xmlns='http://etherx.jabber.org/streams'><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></error>",
	"prefixed error":  "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>t</text></stream:error>",
	"features":        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
	"stream restart":  "<stream:stream xmlns='jabber:component:accept'><message/></stream:stream>",
	// mellium decoded this one only up to </b>, leaving its decoder inside.
	"error with foreign children": "<s:error xmlns:s='http://etherx.jabber.org/streams'><a xmlns='x'><b/></a><c xmlns='x'/><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></s:error>",
}

// Elements of the streams namespace inside a stanza are payload: the stanza
// is dispatched, the ping result after it confirms the fence, and the loop
// ends only with the input, never as a rejection.
func TestNestedStreamElementsArePayload(t *testing.T) {
	for name, payload := range nestedStreamPayloads {
		t.Run(name, func(t *testing.T) {
			c, m, err := readStream(t, fakeHeader,
				[]byte("<message from='u@example' to='c.example'>"+payload+"</message><iq type='result' id='f-1'/>"))
			if !closedByServer(err) {
				t.Errorf("read loop ended with %v, want the end of input", err)
			}
			var se stream.Error
			if errors.As(err, &se) || (&LostError{Cause: err}).Rejected() {
				t.Errorf("%v counts as a rejection", err)
			}
			if got := testutil.ToFloat64(m.ignored); got != 1 {
				t.Errorf("%v messages dispatched, want 1", got)
			}
			confirmed := pingsConfirmed(c)
			if confirmed != 1 {
				t.Errorf("ping f-1 not confirmed (confirmed %d): the stanza after the payload was not read", confirmed)
			}
		})
	}
}

// Between stanzas the stream rules hold as before: a stream error ends the
// stream as a rejection when its condition says so, </stream:stream> is
// the server closing, other stream elements and text are errors.
func TestStreamLevelRulesBetweenStanzas(t *testing.T) {
	const streamErr = "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
	tests := []struct {
		name, header, data string
		check              func(error) bool
		rejected           bool
	}{
		{"stream error", fakeHeader, streamErr + "</stream:stream>", isPolicyViolation, true},
		{"stream error of another prefix", "<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:component:accept' id='fuzzid' from='c.example'>",
			strings.ReplaceAll(streamErr, "stream:", "s:"), isPolicyViolation, true},
		{"stream error of a default namespace", fakeHeader,
			"<error xmlns='http://etherx.jabber.org/streams'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></error>",
			func(err error) bool { var se stream.Error; return errors.As(err, &se) && se.Err == "conflict" }, false},
		{"end of stream", fakeHeader, "</stream:stream>", func(err error) bool { return errors.Is(err, io.EOF) }, false},
		{"unknown stream element", fakeHeader, "<stream:features/>", is(errStreamElement), false},
		{"stream restart", fakeHeader, "<stream:stream>", is(errStreamRestart), false},
		{"text", fakeHeader, "garbage", is(errStreamText), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, m, err := readStream(t, tt.header,
				[]byte("<message from='u@example' to='c.example'/>"+tt.data+"<iq type='result' id='f-1'/>"))
			if !tt.check(err) {
				t.Fatalf("read loop ended with %v", err)
			}
			if got := (&LostError{Cause: err}).Rejected(); got != tt.rejected {
				t.Errorf("Rejected() = %v, want %v", got, tt.rejected)
			}
			if got := testutil.ToFloat64(m.ignored); got != 1 {
				t.Errorf("%v messages dispatched before it, want 1", got)
			}
			confirmed := pingsConfirmed(c)
			if confirmed != 0 {
				t.Error("read on after the stream ended")
			}
		})
	}
}

func isPolicyViolation(err error) bool {
	var se stream.Error
	return errors.As(err, &se) && se.Err == "policy-violation"
}

func is(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}

// A handshake that reads through a connection of its own would leave the
// read loop without the bytes it buffered: connect refuses it.
func TestHandshakeMustReadThroughTheGivenConn(t *testing.T) {
	client, server := net.Pipe()
	go fakeServer(server, "s", fakeHeader, nil)
	p, err := NewPool(Options{
		Addr: "pipe", JID: "c.example", Secret: "s", ServerDomain: "example",
		HandshakeTimeout: 5 * time.Second,
		Dial:             func(context.Context, string, string) (net.Conn, error) { return client, nil },
		Handshake: func(ctx context.Context, nc net.Conn, _ int) (*xmpp.Session, error) {
			return component.NewSession(ctx, jid.MustParse("c.example"), []byte("s"), struct{ net.Conn }{nc})
		},
	}, zerolog.Nop(), NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.connect(context.Background(), 0); err == nil || !strings.Contains(err.Error(), "did not read through") {
		t.Fatalf("connect: %v, want it refused", err)
	}
}

// Against ejabberd: a user's message carrying a stream error, sent to the
// component (or, in client mode, to the account) while a batch is written,
// reaches the pool without costing the connection; the batch is delivered
// and fenced on it.
func TestRealNestedStreamErrorFromAUser(t *testing.T) {
	env := stacktest.Get(t)
	if env.EjabberdAPI == "" {
		stacktest.Missing(t, "no ejabberd HTTP API (ANNOUNCER_EJABBERD_API)")
	}
	poison := "<error xmlns='http://etherx.jabber.org/streams'><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></error>"
	run := func(t *testing.T, opt Options, to func(*Conn) string, from string) {
		rcpt := testuser.Login(t, env, "nested_rcpt")
		h := startPool(t, opt)
		h.waitUp(t, 1, 15*time.Second)
		ctx, c := h.acquire(t, 30*time.Second)
		if from != "" {
			from = " from='" + from + "'"
		}
		batch := func(body string) {
			t.Helper()
			var b strings.Builder
			for range 10 {
				b.WriteString("<message to='" + rcpt.JID.String() + "'" + from + " type='chat'><body>" + body + "</body></message>")
			}
			if err := c.Write([]byte(b.String())); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		batch("before")
		api := testuser.API(env)
		sender := "nobody@" + env.XMPPDomain + "/x"
		// Sent again until it arrived: ejabberd may route one to a
		// connection an earlier test is closing.
		deadline := time.Now().Add(10 * time.Second)
		for try := 0; testutil.ToFloat64(h.m.ignored) == 0; try++ {
			if c.isDead() {
				var lost *LostError
				err := c.lost()
				t.Fatalf("connection lost after the nested stream error: %v (rejected: %v)", err, asLost(err, &lost) && lost.Rejected())
			}
			if time.Now().After(deadline) {
				t.Fatal("the message with the nested stream error never reached the pool")
			}
			if try%10 == 0 {
				st := "<message type='chat' from='" + sender + "' to='" + to(c) + "'><body>p</body>" + poison + "</message>"
				if _, err := api.Call(ctx, "send_stanza", map[string]string{"from": sender, "to": to(c), "stanza": st}); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(30 * time.Millisecond)
		}
		batch("after")
		if err := c.Fence(ctx); err != nil {
			var lost *LostError
			t.Fatalf("fence after the nested stream error: %v (rejected: %v)", err, asLost(err, &lost) && lost.Rejected())
		}
		if r := testutil.ToFloat64(h.m.reconnects); r != 0 || h.pool.Up() != 1 {
			t.Fatalf("%v reconnects, %d up; want the connection kept", r, h.pool.Up())
		}
		if _, err := rcpt.Wait(ctx, 20); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("component", func(t *testing.T) {
		opt := realOptions(env, 1)
		run(t, opt, func(*Conn) string { return opt.JID }, opt.JID)
	})
	t.Run("client", func(t *testing.T) {
		account := testuser.Register(t, env, "nested_acct")
		opt := Options{
			Addr: env.C2SAddr, ServerDomain: env.XMPPDomain, Conns: 1, PingTimeout: 10 * time.Second,
			ReconnectMin: 50 * time.Millisecond, ReconnectMax: 500 * time.Millisecond,
			// Loopback stack, self-signed certificate.
			Handshake: ClientHandshake(account+"@"+env.XMPPDomain, account, "announcer", &tls.Config{InsecureSkipVerify: true}), //nolint:gosec
		}
		// To the session's full JID: without presence, the bare JID would
		// go to offline storage.
		run(t, opt, func(c *Conn) string { return c.sess.LocalAddr().String() }, "")
	})
}
