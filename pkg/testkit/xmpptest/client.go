// Package xmpptest is a real XMPP client for tests: it logs in over c2s (STARTTLS, or plaintext
// on loopback; SASL PLAIN), announces presence and records every message it receives.
package xmpptest

import (
	"context"
	"crypto/tls"
	"encoding/xml"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/ping"
	"mellium.im/xmpp/stanza"
)

// Message is what a client received, decoded.
type Message struct {
	From   string   `xml:"from,attr"`
	To     string   `xml:"to,attr"`
	Type   string   `xml:"type,attr"`
	ID     string   `xml:"id,attr"`
	Bodies []string `xml:"body"`
	// Delay is set on messages ejabberd kept in offline storage.
	Delay *struct {
		Stamp string `xml:"stamp,attr"`
	} `xml:"urn:xmpp:delay delay"`
	// Children counts the direct child elements, to catch injected ones.
	Children int
}

// Client is one logged-in user.
type Client struct {
	JID  jid.JID
	s    *xmpp.Session
	mu   sync.Mutex
	msgs []Message
	// firstAt is when the first message with each first body was decoded: benchmarks
	// time deliveries by it, and look it up while clients are still receiving, so the
	// look-up must not cost in proportion to what arrived.
	firstAt map[string]time.Time
	end     time.Time // when the stream ended (zero while it is up)
	seen    chan struct{}
	done    chan error
}

// Login connects to addr (c2s) as user@domain with the password over STARTTLS and sends
// initial presence, so messages to the bare JID and offline messages are delivered.
func Login(ctx context.Context, addr, user, domain, password string) (*Client, error) {
	return login(ctx, addr, user, domain, password, true)
}

// LoginPlaintext is Login without STARTTLS, for the stack's loopback listener, which offers
// TLS without requiring it. Benchmarks use it when the 5,000 clients' TLS, sharing the machine
// with ejabberd, would hide what ejabberd itself spends.
func LoginPlaintext(ctx context.Context, addr, user, domain, password string) (*Client, error) {
	return login(ctx, addr, user, domain, password, false)
}

func login(ctx context.Context, addr, user, domain, password string, startTLS bool) (*Client, error) {
	j, err := jid.New(user, domain, "test")
	if err != nil {
		return nil, err
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	features := []xmpp.StreamFeature{xmpp.SASL("", password, sasl.Plain), xmpp.BindResource()}
	state := xmpp.Secure // mellium offers SASL only on a secured stream: loopback counts as one
	if startTLS {
		// Loopback stack with a self-signed certificate.
		features = append([]xmpp.StreamFeature{xmpp.StartTLS(&tls.Config{ServerName: domain, InsecureSkipVerify: true})}, features...) //nolint:gosec
		state = 0
	}
	s, err := xmpp.NewSession(ctx, j.Domain(), j, conn, state, xmpp.NewNegotiator(func(*xmpp.Session, *xmpp.StreamConfig) xmpp.StreamConfig {
		return xmpp.StreamConfig{Features: features}
	}))
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("login %s: %w", j, err)
	}
	c := &Client{JID: s.LocalAddr(), s: s, seen: make(chan struct{}, 1), done: make(chan error, 1),
		firstAt: map[string]time.Time{}}
	go func() {
		err := s.Serve(xmpp.HandlerFunc(c.handle))
		c.mu.Lock()
		c.end = time.Now()
		c.mu.Unlock()
		c.done <- err
	}()
	if err := s.Send(ctx, stanza.Presence{}.Wrap(nil)); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("presence %s: %w", j, err)
	}
	// The server handles a session's stanzas in order: once this ping is answered the
	// presence was processed, so a message sent after Login returns goes to this session
	// rather than racing into offline storage.
	if err := ping.Send(ctx, s, j.Domain()); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("ping %s: %w", j, err)
	}
	return c, nil
}

func (c *Client) handle(t xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	if start.Name.Local != "message" {
		return nil
	}
	m := Message{}
	for _, a := range start.Attr {
		switch a.Name.Local {
		case "from":
			m.From = a.Value
		case "to":
			m.To = a.Value
		case "type":
			m.Type = a.Value
		case "id":
			m.ID = a.Value
		}
	}
	// Walk the children: count them (an injected element shows up here) and keep bodies.
	depth, inBody := 0, false
	var body []byte
	for {
		tok, err := t.Token()
		if err != nil {
			break
		}
		switch el := tok.(type) {
		case xml.StartElement:
			depth++
			if depth == 1 {
				m.Children++
				switch {
				case el.Name.Local == "body":
					inBody, body = true, body[:0]
				case el.Name.Local == "delay" && el.Name.Space == "urn:xmpp:delay":
					m.Delay = &struct {
						Stamp string `xml:"stamp,attr"`
					}{}
					for _, a := range el.Attr {
						if a.Name.Local == "stamp" {
							m.Delay.Stamp = a.Value
						}
					}
				}
			}
		case xml.EndElement:
			if depth == 1 && inBody {
				m.Bodies = append(m.Bodies, string(body))
				inBody = false
			}
			depth--
		case xml.CharData:
			if inBody && depth == 1 {
				body = append(body, el...)
			}
		}
		if depth < 0 {
			break
		}
	}
	at := time.Now()
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	if len(m.Bodies) > 0 {
		if _, ok := c.firstAt[m.Bodies[0]]; !ok {
			c.firstAt[m.Bodies[0]] = at
		}
	}
	c.mu.Unlock()
	select {
	case c.seen <- struct{}{}:
	default:
	}
	return nil
}

// Ended is when the server ended the session's stream (zero while it is up).
func (c *Client) Ended() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.end
}

// Messages returns what arrived so far.
func (c *Client) Messages() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.msgs)
}

// Received is how many messages arrived so far: a cheap check before looking further.
func (c *Client) Received() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

// FirstArrival is when the first message whose first body is body arrived (zero: none yet).
func (c *Client) FirstArrival(body string) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.firstAt[body]
}

// Wait returns once at least n messages arrived, or with what arrived when ctx ends.
func (c *Client) Wait(ctx context.Context, n int) ([]Message, error) {
	for {
		if m := c.Messages(); len(m) >= n {
			return m, nil
		}
		select {
		case <-c.seen:
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return c.Messages(), fmt.Errorf("%s: %d of %d messages: %w", c.JID, len(c.Messages()), n, ctx.Err())
		}
	}
}

// Close ends the session.
func (c *Client) Close() error {
	err := c.s.Close()
	_ = c.s.Conn().Close()
	return err
}

// TLS reports whether the session runs over TLS.
func (c *Client) TLS() bool {
	_, ok := c.s.Conn().(*tls.Conn)
	return ok
}
