package xmpplink

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1" //nolint:gosec // XEP-0114
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// fakeHeader is the stream header fakeServer answers with by default.
const fakeHeader = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:component:accept' id='fuzzid' from='c.example'>"

// fakeServer performs the handshake on conn, answering with header (whose
// id must be fuzzid), then sends data and closes, discarding whatever the
// client writes.
func fakeServer(conn net.Conn, secret, header string, data []byte) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	if _, err := br.ReadSlice('>'); err != nil {
		return
	}
	const id = "fuzzid"
	if _, err := io.WriteString(conn, header); err != nil {
		return
	}
	hs, err := br.ReadString('/')
	if err != nil {
		return
	}
	if _, err := br.ReadSlice('>'); err != nil {
		return
	}
	sum := sha1.Sum([]byte(id + secret)) //nolint:gosec // XEP-0114
	if !strings.Contains(hs, hex.EncodeToString(sum[:])) {
		return
	}
	go func() { _, _ = io.Copy(io.Discard, br) }()
	_, _ = conn.Write(append([]byte("<handshake/>"), data...))
}

// readAll runs a real connection (mellium handshake + our read loop) against
// a server that sends data and closes, with one ping outstanding, and returns
// what the read loop ended with.
func readAll(t testing.TB, data []byte) (*Pool, *Metrics, error) {
	c, m, err := readStream(t, fakeHeader, data)
	return c.pool, m, err
}

// readStream is readAll with the server's stream header, returning the
// (dead) connection: its fence state tells which pings were answered.
func readStream(t testing.TB, header string, data []byte) (*Conn, *Metrics, error) {
	client, server := net.Pipe()
	go fakeServer(server, "s", header, data)
	m := NewMetrics(prometheus.NewRegistry())
	p, err := NewPool(Options{
		Addr: "pipe", JID: "c.example", Secret: "s", ServerDomain: "example",
		HandshakeTimeout: 5 * time.Second,
		Dial:             func(context.Context, string, string) (net.Conn, error) { return client, nil },
	}, zerolog.Nop(), m)
	if err != nil {
		t.Fatal(err)
	}
	p.idPrefix = "f-"
	c, err := p.connect(context.Background(), 0)
	if err != nil {
		t.Fatalf("handshake with the fake server: %v", err)
	}
	defer c.kill(errClosing)
	err = readWithOnePing(t, p, c, fmt.Sprintf("input %q", data))
	return c, m, err
}

// readWithOnePing runs c's read loop to its end with one ping outstanding,
// id f-1, as if written before the server's answer; a loop still reading
// after 10 s fails the test (what names the input).
func readWithOnePing(t testing.TB, p *Pool, c *Conn, what string) error {
	t.Helper()
	c.pmu.Lock()
	c.fences[lanePing].sent = 1
	c.fences[lanePing].outstanding = append(c.fences[lanePing].outstanding, outPing{id: p.remember(c, lanePing, 1), seq: 1})
	c.pmu.Unlock()
	done := make(chan error, 1)
	go func() { done <- c.readLoop() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		c.kill(errClosing)
		<-done
		t.Fatalf("read loop still waiting on %s", what)
		return nil
	}
}

// pingsConfirmed is how far c's ping lane is confirmed.
func pingsConfirmed(c *Conn) uint64 {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return c.fences[lanePing].confirmed
}

var inboundSeeds = []string{
	"<iq type='result' id='f-1' from='example' to='c.example'/>",
	"<iq type='error' id='f-1'><ping xmlns='urn:xmpp:ping'/><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
	"<message type='error' from='u@example' to='c.example'><body>x</body><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>gone</text></error></message>",
	"<iq type='get' id='q1' from='u@example/r' to='c.example'><ping xmlns='urn:xmpp:ping'/></iq>",
	"<iq type='set' id='q2' from='u@example/r' to='c.example'><query xmlns='jabber:iq:version'/></iq>",
	"<presence type='error'><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
	"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
	"</stream:stream>",
	"  \n ",
	"garbage",
	"<message><unclosed>",
	"<message a='1' a='2'/>",
	"<?xml version='1.0'?><message/>",
	"<!-- c --><message/>",
	"<message><![CDATA[<x>]]></message>",
	"<message>&bogus;</message>",
	"<iq type='result' id='" + strings.Repeat("x", 10000) + "'/>",
	"<x:y xmlns:x='z'><error><a xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></x:y>",
	"<message/></message>",
	"\x00\xff<message/>",
	// Stream-namespace elements nested in stanzas are payload.
	"<message from='u@example' to='c.example'><x xmlns='http://etherx.jabber.org/streams'/></message><iq type='result' id='f-1'/>",
	"<message from='u@example' to='c.example'><error xmlns='http://etherx.jabber.org/streams'><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></error></message><iq type='result' id='f-1'/>",
	"<iq type='error' id='f-1'><stream:stream><stream:error/></stream:stream></iq><stream:features/>",
	"<message><s:error xmlns:s='http://etherx.jabber.org/streams'><a xmlns='x'><b/></a><c/></s:error></message>",
}

// FuzzInbound feeds arbitrary bytes from "ejabberd" into a real connection's
// read path: it must never panic or hang, only end with an error.
func FuzzInbound(f *testing.F) {
	for _, s := range inboundSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _, err := readAll(t, data)
		if err == nil {
			t.Fatal("read loop ended without an error")
		}
	})
}

// The seeds that matter do what they should.
func TestInboundDispatch(t *testing.T) {
	p, m, err := readAll(t, []byte(inboundSeeds[0]+inboundSeeds[2]+inboundSeeds[3]+inboundSeeds[5]+"<iq type='result' id='other'/>"))
	var se *xml.SyntaxError
	if !errors.As(err, &se) && !errors.Is(err, io.EOF) {
		t.Errorf("read loop ended with %v, want the end of input", err)
	}
	if got := p.crossResults.Load(); got != 0 {
		t.Fatalf("cross results %d", got)
	}
	checks := map[string]float64{
		"unknown results":             testutil.ToFloat64(m.unknownResults),
		"message service-unavailable": testutil.ToFloat64(m.inboundErrors.WithLabelValues("message", "service-unavailable")),
		"presence bad-request":        testutil.ToFloat64(m.inboundErrors.WithLabelValues("presence", "bad-request")),
	}
	for name, got := range checks {
		if got != 1 {
			t.Errorf("%s = %v, want 1", name, got)
		}
	}
	p.regMu.Lock()
	left := len(p.pings)
	p.regMu.Unlock()
	if left != 0 {
		t.Fatalf("%d pings still registered after their result arrived", left)
	}
}

func TestReadElement(t *testing.T) {
	tests := []struct {
		in   string
		want inbound
	}{
		{"<iq type='result' id='a' from='d' to='c'/>", inbound{name: "iq", typ: "result", id: "a", from: "d", to: "c"}},
		{"<iq type='get' id='a'><ping xmlns='urn:xmpp:ping'/></iq>", inbound{name: "iq", typ: "get", id: "a", ping: true}},
		{"<iq type='get' id='a'><query><ping xmlns='urn:xmpp:ping'/></query></iq>", inbound{name: "iq", typ: "get", id: "a"}},
		{"<message type='error'><error type='cancel'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>t</text><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
			inbound{name: "message", typ: "error", errType: "cancel", condition: "item-not-found"}},
		{"<message type='error'><body><error><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></body></message>",
			inbound{name: "message", typ: "error"}},
		// A server naming another stanza namespace on the error it adds.
		{"<message xmlns='jabber:component:accept' type='error'><error xmlns='jabber:client' type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
			inbound{name: "message", typ: "error", errType: "cancel", condition: "item-not-found"}},
		// Not the stanza's error: payload of another namespace.
		{"<message type='error'><error xmlns='http://etherx.jabber.org/streams' type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
			inbound{name: "message", typ: "error"}},
	}
	for _, tt := range tests {
		d := xml.NewDecoder(bytes.NewReader([]byte(tt.in)))
		tok, err := d.Token()
		if err != nil {
			t.Fatal(err)
		}
		got, err := readElement(d, tok.(xml.StartElement))
		if err != nil {
			t.Fatalf("%s: %v", tt.in, err)
		}
		if got != tt.want {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.in, got, tt.want)
		}
	}
}

func TestLabelsAreBounded(t *testing.T) {
	if conditionLabel("made-up") != "other" || conditionLabel("") != "none" || conditionLabel("forbidden") != "forbidden" {
		t.Fatal("condition label")
	}
	if kindLabel("x") != "other" || kindLabel("iq") != "iq" {
		t.Fatal("kind label")
	}
}
