package xmpplink

import (
	"bufio"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"mellium.im/xmpp"
	"mellium.im/xmpp/stream"

	"github.com/announcer/announcer/pkg/stanza"
)

// ErrLost is wrapped by every error a connection returns once it is dead: what
// was written on it but not fenced must be sent again elsewhere.
var ErrLost = errors.New("xmpplink: connection lost")

var (
	errPingTimeout = errors.New("no ping answered in time")
	errClosing     = errors.New("closing")
)

// LostError says why a connection died.
type LostError struct{ Cause error }

func (e *LostError) Error() string { return ErrLost.Error() + ": " + e.Cause.Error() }

func (e *LostError) Unwrap() []error { return []error{ErrLost, e.Cause} }

// Rejected reports whether ejabberd closed the stream because of bytes sent on
// it (as opposed to a network failure or a restart): resending the same
// stanzas would most likely kill the next connection too.
func (e *LostError) Rejected() bool {
	var se stream.Error
	if !errors.As(e.Cause, &se) {
		return false
	}
	switch se.Err {
	case "not-well-formed", "policy-violation", "invalid-from", "improper-addressing",
		"invalid-xml", "restricted-xml", "invalid-namespace", "unsupported-stanza-type", "bad-format":
		return true
	}
	return false
}

type outPing struct {
	id  string
	seq uint64
}

// lane is a kind of fence, with its own sequence: an XEP-0199 ping proves
// ejabberd routed what the connection sent before it; an echo (a multicast
// addressed back to us) proves its multicast service handled the multicasts
// before it. A ping's answer says nothing about multicasts, so the two never
// confirm each other.
type lane int

const (
	lanePing lane = iota
	laneEcho
	lanes
)

// fenceState is one lane's sequence: the last fence written, the highest
// answered, and the unanswered ones.
type fenceState struct {
	sent, confirmed uint64
	confirmCh       chan struct{}
	outstanding     []outPing
}

// Conn is one established XEP-0114 connection. Stanza bytes go through a
// buffered writer straight to the socket; a read loop runs for the whole life
// of the connection so ejabberd can never block writing to us.
type Conn struct {
	pool *Pool
	slot int
	nc   net.Conn // the socket
	wc   net.Conn // what the session writes to: a byteConn over nc, or over TLS after STARTTLS
	sess *xmpp.Session
	in   *streamReader // the only reader of the session once it is up

	wmu     sync.Mutex // serialises stanza, ping and reply writes
	bw      *bufio.Writer
	scratch []byte

	dead    chan struct{}
	once    sync.Once
	deadErr error

	pmu         sync.Mutex
	fences      [lanes]fenceState
	pingsClosed bool

	users     atomic.Int32
	exclusive bool // held alone by one caller (under pool.mu)
	replies   chan inbound
}

func newConn(p *Pool, slot int, nc net.Conn, sess *xmpp.Session, in *streamReader) *Conn {
	return &Conn{
		pool: p,
		slot: slot,
		nc:   nc,
		wc:   sess.Conn(),
		sess: sess,
		in:   in,
		bw:   bufio.NewWriterSize(sess.Conn(), p.opt.WriteBufferBytes),
		dead: make(chan struct{}),
		fences: [lanes]fenceState{
			lanePing: {confirmCh: make(chan struct{})},
			laneEcho: {confirmCh: make(chan struct{})},
		},
		replies: make(chan inbound, 64),
	}
}

// Slot is the connection's position in its pool, stable across reconnects:
// per-connection state of callers (a rate limiter) is indexed by it.
func (c *Conn) Slot() int { return c.slot }

// Release ends one Acquire.
func (c *Conn) Release() { c.pool.release(c) }

func (c *Conn) isDead() bool {
	select {
	case <-c.dead:
		return true
	default:
		return false
	}
}

func (c *Conn) lost() error { return &LostError{Cause: c.deadErr} }

// kill marks the connection dead, closes the socket (which ends the read loop
// and any blocked write) and forgets its pings.
func (c *Conn) kill(err error) {
	c.once.Do(func() {
		c.deadErr = err
		close(c.dead)
		_ = c.nc.Close()
		c.pmu.Lock()
		c.pingsClosed = true
		for l := range c.fences {
			for _, o := range c.fences[l].outstanding {
				c.pool.forget(o.id)
			}
			c.fences[l].outstanding = nil
		}
		c.pmu.Unlock()
	})
}

// failWrite turns a write error into the connection's death.
func (c *Conn) failWrite(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.pool.m.writeStalls.Inc()
		err = fmt.Errorf("write made no progress for %s: %w", c.pool.opt.PingTimeout, err)
	}
	c.kill(err)
	return c.lost()
}

// Write buffers pre-rendered stanzas. p must hold whole stanzas: other
// writers interleave between calls. A write that cannot make progress for
// the ping timeout (ejabberd stopped reading) kills the connection.
func (c *Conn) Write(p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.isDead() {
		return c.lost()
	}
	_ = c.wc.SetWriteDeadline(time.Now().Add(c.pool.opt.PingTimeout))
	if _, err := c.bw.Write(p); err != nil {
		return c.failWrite(err)
	}
	return nil
}

// Flush sends what is buffered.
func (c *Conn) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.isDead() {
		return c.lost()
	}
	_ = c.wc.SetWriteDeadline(time.Now().Add(c.pool.opt.PingTimeout))
	if err := c.bw.Flush(); err != nil {
		return c.failWrite(err)
	}
	return nil
}

// Fence returns nil once ejabberd has processed everything written on this
// connection before the call: it sends an XEP-0199 ping and waits for its
// result, which may arrive on any connection of the pool. A connection that
// dies first returns an error wrapping ErrLost.
func (c *Conn) Fence(ctx context.Context) error { return c.fence(ctx, lanePing) }

// FenceMulticast returns nil once ejabberd's multicast service (XEP-0033)
// has handled every multicast written on this connection before the call:
// it sends a multicast whose only address is this component and waits for
// that copy to come back (on any connection of the pool). The service
// handles one sender's multicasts in order, as a connection's stanzas are
// routed in order, so the echo comes back after the earlier ones went out.
func (c *Conn) FenceMulticast(ctx context.Context) error {
	if c.pool.echoHead == nil {
		return errors.New("xmpplink: no multicast service configured")
	}
	return c.fence(ctx, laneEcho)
}

// MulticastRefusals is the pool's count of multicasts refused as a whole.
func (c *Conn) MulticastRefusals() int64 { return c.pool.MulticastRefusals() }

func (c *Conn) fence(ctx context.Context, l lane) error {
	seq, err := c.sendPing(l)
	if err != nil {
		return err
	}
	if err := c.await(ctx, l, seq); err != nil {
		return err
	}
	c.pool.m.fences.Inc()
	return nil
}

// sendPing writes and flushes a fence of lane l; its answer confirms sequence number seq.
func (c *Conn) sendPing(l lane) (seq uint64, err error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.isDead() {
		return 0, c.lost()
	}
	c.pmu.Lock()
	if c.pingsClosed {
		c.pmu.Unlock()
		return 0, c.lost()
	}
	f := &c.fences[l]
	f.sent++
	seq = f.sent
	id := c.pool.remember(c, l, seq)
	f.outstanding = append(f.outstanding, outPing{id: id, seq: seq})
	c.pmu.Unlock()

	c.scratch = c.pool.appendFence(c.scratch[:0], l, id)
	_ = c.wc.SetWriteDeadline(time.Now().Add(c.pool.opt.PingTimeout))
	if _, err := c.bw.Write(c.scratch); err != nil {
		return 0, c.failWrite(err)
	}
	if err := c.bw.Flush(); err != nil {
		return 0, c.failWrite(err)
	}
	c.pool.m.pings.Inc()
	return seq, nil
}

// await waits until fence seq of lane l (or a later one) is answered.
func (c *Conn) await(ctx context.Context, l lane, seq uint64) error {
	deadline := time.NewTimer(c.pool.opt.PingTimeout)
	defer deadline.Stop()
	retransmit := time.NewTimer(c.pool.retransmit)
	defer retransmit.Stop()
	for {
		c.pmu.Lock()
		ok := c.fences[l].confirmed >= seq
		ch := c.fences[l].confirmCh
		c.pmu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-c.dead:
			c.pmu.Lock()
			ok := c.fences[l].confirmed >= seq
			c.pmu.Unlock()
			if ok {
				return nil
			}
			return c.lost()
		case <-ctx.Done():
			return ctx.Err()
		case <-retransmit.C:
			// The result may have been routed to another process that shares the
			// component domain; ejabberd answers in order, so any later result
			// confirms this ping too.
			if _, err := c.sendPing(l); err != nil {
				return err
			}
			retransmit.Reset(c.pool.retransmit)
		case <-deadline.C:
			c.pool.m.pingTimeouts.Inc()
			c.kill(errPingTimeout)
			return c.lost()
		}
	}
}

// confirm records that fence seq of lane l was answered: every earlier one is answered too.
func (c *Conn) confirm(l lane, seq uint64) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	f := &c.fences[l]
	if seq > f.confirmed {
		f.confirmed = seq
		close(f.confirmCh)
		f.confirmCh = make(chan struct{})
	}
	i := 0
	for i < len(f.outstanding) && f.outstanding[i].seq <= f.confirmed {
		c.pool.forget(f.outstanding[i].id)
		i++
	}
	f.outstanding = append(f.outstanding[:0], f.outstanding[i:]...)
}

// serve runs the connection until it dies or ctx ends: the read loop, the
// keepalive and the answers to IQ requests.
func (c *Conn) serve(ctx context.Context) error {
	var wg sync.WaitGroup
	readErr := make(chan error, 1)
	wg.Go(func() { readErr <- c.readLoop() })
	kaDone := make(chan struct{}, 1)
	keepalive := false
	ticker := time.NewTicker(c.pool.opt.PingInterval)
	defer ticker.Stop()
	var result error
loop:
	for {
		select {
		case err := <-readErr:
			c.kill(fmt.Errorf("read: %w", err))
			result = c.deadErr
			break loop
		case <-c.dead:
			result = c.deadErr
			break loop
		case <-ctx.Done():
			c.closeStream()
			c.kill(errClosing)
			break loop
		case <-ticker.C:
			if !keepalive {
				keepalive = true
				wg.Go(func() {
					// A failure kills the connection, which this loop sees on c.dead.
					if seq, err := c.sendPing(lanePing); err == nil {
						_ = c.await(ctx, lanePing, seq)
					}
					kaDone <- struct{}{}
				})
			}
		case <-kaDone:
			keepalive = false
		case in := <-c.replies:
			c.reply(in)
		}
	}
	wg.Wait()
	return result
}

// closeStream ends our stream politely, without waiting longer than a second.
func (c *Conn) closeStream() {
	_ = c.wc.SetWriteDeadline(time.Now().Add(time.Second))
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.isDead() {
		return
	}
	_, _ = c.bw.WriteString("</stream:stream>")
	_ = c.bw.Flush()
}

func (c *Conn) readLoop() error {
	tr := c.in
	for {
		tok, err := tr.Token()
		if err != nil {
			return err
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue // whitespace between stanzas
		}
		in, err := readElement(tr, start)
		if err != nil {
			return err
		}
		c.pool.dispatch(c, in)
	}
}

// reply answers an IQ request addressed to the component: pings get a result,
// anything else service-unavailable (RFC 6120 §8.2.3: every get/set is answered).
func (c *Conn) reply(in inbound) {
	if in.from == "" || in.id == "" {
		return
	}
	to := in.to
	if to == "" {
		to = c.pool.opt.JID
	}
	if to == "" {
		return
	}
	b := make([]byte, 0, 256)
	if in.ping {
		b = append(b, "<iq type='result' id='"...)
	} else {
		b = append(b, "<iq type='error' id='"...)
	}
	b = stanza.AppendEscaped(b, in.id)
	b = append(b, "' to='"...)
	b = stanza.AppendEscaped(b, in.from)
	b = append(b, "' from='"...)
	b = stanza.AppendEscaped(b, to)
	if in.ping {
		b = append(b, "'/>"...)
	} else {
		b = append(b, "'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"...)
	}
	if c.Write(b) == nil && c.Flush() == nil {
		c.pool.m.replies.Inc()
	}
}
