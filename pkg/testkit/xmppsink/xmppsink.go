// Package xmppsink is a counting stand-in for ejabberd's component listener:
// it performs the XEP-0114 handshake, counts the <message/> stanzas it
// receives (and, when asked, hands each one's `to` to a callback) and
// answers pings. Benchmarks use it to measure announcer's side alone.
package xmppsink

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // XEP-0114 mandates SHA-1
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
)

// Sink listens on a loopback port.
type Sink struct {
	ln     net.Listener
	secret string
	// onMessage, when set, gets each message's `to` and `from` attributes (valid during the call).
	onMessage func(to, from []byte)

	stanzas atomic.Int64
	pings   atomic.Int64
	bytes   atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// Start listens on a free loopback port; secret is the component secret.
func Start(secret string) (*Sink, error) { return StartRecording(secret, nil) }

// StartRecording is Start with onTo called for every message stanza with its
// `to` attribute, from the connection's goroutine (it must be safe for
// concurrent use when the sender has several connections).
func StartRecording(secret string, onTo func(to []byte)) (*Sink, error) {
	if onTo == nil {
		return StartTagged(secret, nil)
	}
	return StartTagged(secret, func(to, _ []byte) { onTo(to) })
}

// StartTagged is StartRecording with the message's `from` as well: a test
// that labels each announcement with a from resource tells them apart.
func StartTagged(secret string, onMessage func(to, from []byte)) (*Sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Sink{ln: ln, secret: secret, onMessage: onMessage, conns: map[net.Conn]struct{}{}}
	s.wg.Go(s.accept)
	return s, nil
}

// Addr is the listener's address.
func (s *Sink) Addr() string { return s.ln.Addr().String() }

// Stanzas counts the messages received so far.
func (s *Sink) Stanzas() int64 { return s.stanzas.Load() }

// Pings counts the pings answered so far.
func (s *Sink) Pings() int64 { return s.pings.Load() }

// Bytes counts the stream bytes received after the handshake.
func (s *Sink) Bytes() int64 { return s.bytes.Load() }

// Close stops the sink and its connections.
func (s *Sink) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Sink) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			_ = s.serve(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			_ = c.Close()
		})
	}
}

var (
	msgHead  = []byte("<message")
	pingHead = []byte("<iq type='get' id='")
)

// eachMessage calls fn with the `to` and `from` (nil when absent) of every
// message start tag in p that has a `to`.
func eachMessage(p []byte, fn func(to, from []byte)) {
	for {
		i := bytes.Index(p, msgHead)
		if i < 0 {
			return
		}
		p = p[i+len(msgHead):]
		end := bytes.IndexByte(p, '>')
		if end < 0 {
			return
		}
		tag := p[:end]
		if to := attr(tag, " to="); to != nil {
			fn(to, attr(tag, " from="))
		}
		p = p[end:]
	}
}

// attr is the value of the attribute that starts with name (" to=") in a
// start tag, in either quote style, or nil.
func attr(tag []byte, name string) []byte {
	j := bytes.Index(tag, []byte(name))
	if j < 0 || j+len(name)+1 >= len(tag) {
		return nil
	}
	q := tag[j+len(name)]
	v := tag[j+len(name)+1:]
	if k := bytes.IndexByte(v, q); k >= 0 {
		return v[:k]
	}
	return nil
}

func (s *Sink) serve(c net.Conn) error {
	br := bufio.NewReaderSize(c, 64<<10)
	if _, err := br.ReadSlice('>'); err != nil { // <stream:stream ...>
		return err
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	if _, err := fmt.Fprintf(c, "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:component:accept' id='%s' from='sink'>", id); err != nil {
		return err
	}
	// <handshake>hex</handshake>
	if _, err := br.ReadSlice('>'); err != nil {
		return err
	}
	digest, err := br.ReadSlice('<')
	if err != nil {
		return err
	}
	digest = bytes.Clone(digest[:len(digest)-1])
	if _, err := br.ReadSlice('>'); err != nil {
		return err
	}
	want := sha1.Sum([]byte(id + s.secret)) //nolint:gosec // XEP-0114
	if string(digest) != hex.EncodeToString(want[:]) {
		_, _ = c.Write([]byte("<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"))
		return errors.New("sink: bad handshake")
	}
	if _, err := c.Write([]byte("<handshake/>")); err != nil {
		return err
	}

	// Scan complete stanzas; a stanza cut by a read waits for the next one.
	// Reads land in buf directly: at a million stanzas a second, copying
	// them once more costs the sink as much as the sender's writes.
	buf := make([]byte, 0, 512<<10)
	var reply []byte
	for {
		if cap(buf)-len(buf) < 256<<10 {
			if len(buf) > maxPending {
				return fmt.Errorf("sink: no stanza end in %d bytes", len(buf))
			}
			buf = slices.Grow(buf, 256<<10)
		}
		n, err := br.Read(buf[len(buf):cap(buf)])
		if n > 0 {
			s.bytes.Add(int64(n))
			buf = buf[:len(buf)+n]
			var messages, pings int64
			var used int
			messages, pings, used, reply = scan(buf, reply[:0])
			s.stanzas.Add(messages)
			s.pings.Add(pings)
			if s.onMessage != nil {
				eachMessage(buf[:used], s.onMessage)
			}
			if len(reply) > 0 {
				if _, werr := c.Write(reply); werr != nil {
					return werr
				}
			}
			buf = buf[:copy(buf, buf[used:])]
		}
		if err != nil {
			return err
		}
	}
}

// maxPending bounds what the sink holds without a stanza end.
const maxPending = 8 << 20

var (
	msgTail = []byte("message>")
	iqTail  = []byte("iq>")
)

// scan counts the messages that end in p, appends to reply the result of
// every ping that ends in p, and returns how much of p it consumed: up to
// the end of its last message or iq. It walks p's '/' bytes, every end tag
// holds one, and a stanza has about half as many of them as of '<'.
func scan(p, reply []byte) (messages, pings int64, used int, _ []byte) {
	for i := 0; ; i++ {
		j := bytes.IndexByte(p[i:], '/')
		if j < 0 {
			return messages, pings, used, reply
		}
		i += j
		if i == 0 || p[i-1] != '<' {
			continue
		}
		rest := p[i+1:]
		switch {
		case bytes.HasPrefix(rest, msgTail):
			messages++
			used = i + 1 + len(msgTail)
		case bytes.HasPrefix(rest, iqTail):
			// The iq began after the previous stanza's end.
			if k := bytes.Index(p[used:i], pingHead); k >= 0 {
				id := p[used+k+len(pingHead) : i]
				if q := bytes.IndexByte(id, '\''); q >= 0 {
					reply = append(reply, "<iq type='result' id='"...)
					reply = append(reply, id[:q]...)
					reply = append(reply, "' from='sink'/>"...)
					pings++
				}
			}
			used = i + 1 + len(iqTail)
		}
	}
}
