package xmpplink

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

func selfSigned(t testing.TB) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "example"}, DNSNames: []string{"example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// readUntil reads r a byte at a time until what it read holds s.
func readUntil(r io.Reader, s string) (string, error) {
	var b bytes.Buffer
	one := make([]byte, 1)
	for !bytes.Contains(b.Bytes(), []byte(s)) {
		if _, err := io.ReadFull(r, one); err != nil {
			return b.String(), err
		}
		b.Write(one)
	}
	return b.String(), nil
}

// fakeC2S is a c2s server through STARTTLS, SASL PLAIN and resource binding,
// a new stream header after each restart; then it sends afterBind, in the
// bind result's write or (split) in a write of its own.
func fakeC2S(conn net.Conn, cert tls.Certificate, afterBind string, split bool) error {
	defer conn.Close()
	header := func(id string) string {
		return "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='" + id +
			"' from='example' version='1.0' xml:lang='en'>"
	}
	var c io.ReadWriter = conn
	open := func(id, features string) error {
		if _, err := readUntil(c, "version='1.0'"); err != nil {
			return err
		}
		if _, err := readUntil(c, ">"); err != nil {
			return err
		}
		_, err := io.WriteString(c, header(id)+"<stream:features>"+features+"</stream:features>")
		return err
	}
	answer := func(wait, send string) error {
		if _, err := readUntil(c, wait); err != nil {
			return err
		}
		_, err := io.WriteString(c, send)
		return err
	}
	if err := open("s1", "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"); err != nil {
		return err
	}
	if err := answer("xmpp-tls'/>", "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"); err != nil {
		return err
	}
	c = tls.Server(conn, &tls.Config{Certificates: []tls.Certificate{cert}})
	if err := open("s2", "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms>"); err != nil {
		return err
	}
	if err := answer("</auth>", "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"); err != nil {
		return err
	}
	if err := open("s3", "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>"); err != nil {
		return err
	}
	req, err := readUntil(c, "</iq>")
	if err != nil {
		return err
	}
	id := regexp.MustCompile(`id='([^']*)'`).FindStringSubmatch(req)
	if id == nil {
		return errors.New("bind request without an id: " + req)
	}
	res := "<iq type='result' id='" + id[1] + "'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>u@example/r</jid></bind></iq>"
	if split {
		if _, err := io.WriteString(c, res); err != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
		res = ""
	}
	if _, err := io.WriteString(c, res+afterBind); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, c) // until the client hangs up
	return nil
}

// In client mode the read loop takes over a stream restarted twice (after
// STARTTLS and SASL), under TLS, without losing or re-reading a byte: a
// stanza that came with the bind result, or after it, is read, a stream
// error nested in a message is payload, and the ping result confirms its
// fence.
func TestClientModeStreamAfterTLSAndSASL(t *testing.T) {
	cert := selfSigned(t)
	for _, split := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() {
			server, err := ln.Accept()
			if err != nil {
				served <- err
				return
			}
			served <- fakeC2S(server, cert, "<message from='a@example' to='u@example/r'><stream:error><x/></stream:error></message>"+
				"<iq type='result' id='f-1'/></stream:stream>", split)
		}()
		p, err := NewPool(Options{
			Addr: ln.Addr().String(), ServerDomain: "example", HandshakeTimeout: 5 * time.Second,
			Handshake: ClientHandshake("u@example", "pw", "r", &tls.Config{InsecureSkipVerify: true}),
		}, zerolog.Nop(), NewMetrics(prometheus.NewRegistry()))
		if err != nil {
			t.Fatal(err)
		}
		p.idPrefix = "f-"
		c, err := p.connect(context.Background(), 0)
		if err != nil {
			t.Fatalf("split %v: connect: %v", split, err)
		}
		err = readWithOnePing(t, p, c, fmt.Sprintf("what the server sent (split %v)", split))
		confirmed := pingsConfirmed(c)
		c.kill(errClosing)
		if serr := <-served; serr != nil && !strings.Contains(serr.Error(), "closed") {
			t.Fatalf("split %v: server: %v", split, serr)
		}
		_ = ln.Close()
		if !errors.Is(err, io.EOF) || confirmed != 1 {
			t.Fatalf("split %v: read loop ended with %v, fence confirmed %d: want the end of the stream, 1", split, err, confirmed)
		}
	}
}
