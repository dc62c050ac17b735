// Package xmpptest is a real XMPP client for tests: it logs in over c2s (STARTTLS, SASL PLAIN),
// announces presence and records every message it receives.
package xmpptest

import (
	"context"
	"crypto/tls"
	"encoding/xml"
	"fmt"
	"net"
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

// Arrival is a message with the time the client had it decoded: benchmarks
// measure delivery rates from these. It is apart from Message so that tests
// comparing whole messages stay exact.
type Arrival struct {
	Message
	At time.Time
}

// Client is one logged-in user.
type Client struct {
	JID  jid.JID
	s    *xmpp.Session
	mu   sync.Mutex
	msgs []Arrival
	end  time.Time // when the stream ended (zero while it is up)
	seen chan struct{}
	done chan error
}

// Login connects to addr (c2s) as user@domain with the password and sends initial presence,
// so messages to the bare JID and offline messages are delivered.
func Login(ctx context.Context, addr, user, domain, password string) (*Client, error) {
	j, err := jid.New(user, domain, "test")
	if err != nil {
		return nil, err
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	s, err := xmpp.NewClientSession(ctx, j, conn,
		// Loopback stack with a self-signed certificate.
		xmpp.StartTLS(&tls.Config{ServerName: domain, InsecureSkipVerify: true}), //nolint:gosec
		xmpp.SASL("", password, sasl.Plain),
		xmpp.BindResource(),
	)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("login %s: %w", j, err)
	}
	c := &Client{JID: s.LocalAddr(), s: s, seen: make(chan struct{}, 1), done: make(chan error, 1)}
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
	c.msgs = append(c.msgs, Arrival{Message: m, At: at})
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
	var out []Message
	for _, a := range c.msgs {
		out = append(out, a.Message)
	}
	return out
}

// Arrivals returns what arrived so far, each with when.
func (c *Client) Arrivals() []Arrival {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Arrival(nil), c.msgs...)
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
