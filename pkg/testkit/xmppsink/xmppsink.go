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
	msgEnd   = []byte("</message>")
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

	// Count complete elements up to the last '>' of what arrived; the rest
	// waits for the next read. Replies are written from this goroutine: the
	// client under test always reads, so this cannot deadlock.
	buf := make([]byte, 0, 128<<10)
	chunk := make([]byte, 64<<10)
	var reply []byte
	for {
		n, err := br.Read(chunk)
		if n > 0 {
			s.bytes.Add(int64(n))
			buf = append(buf, chunk[:n]...)
			last := bytes.LastIndexByte(buf, '>')
			if last >= 0 {
				done := buf[:last+1]
				s.stanzas.Add(int64(bytes.Count(done, msgEnd)))
				if s.onMessage != nil {
					eachMessage(done, s.onMessage)
				}
				reply = reply[:0]
				for rest := done; ; {
					i := bytes.Index(rest, pingHead)
					if i < 0 {
						break
					}
					rest = rest[i+len(pingHead):]
					j := bytes.IndexByte(rest, '\'')
					if j < 0 {
						break
					}
					reply = append(reply, "<iq type='result' id='"...)
					reply = append(reply, rest[:j]...)
					reply = append(reply, "' from='sink'/>"...)
					s.pings.Add(1)
				}
				if len(reply) > 0 {
					if _, werr := c.Write(reply); werr != nil {
						return werr
					}
				}
				buf = append(buf[:0], buf[last+1:]...)
			}
		}
		if err != nil {
			return err
		}
	}
}
