// Package xmpplink keeps a node's XMPP links to ejabberd up: XEP-0114
// component connections, or c2s client sessions when Options.Handshake is
// ClientHandshake ([sender] mode = "client"). It does the dial, the handshake
// (mellium), a read loop per connection, buffered writes of pre-rendered
// stanzas, ping fences correlated across the node's connections, keepalive,
// and reconnection with backoff — forever.
package xmpplink

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"mellium.im/xmpp"
	"mellium.im/xmpp/component"
	"mellium.im/xmpp/jid"

	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/stanza"
)

// ErrClosed is returned by Acquire once the pool has stopped.
var ErrClosed = errors.New("xmpplink: pool closed")

// Options configure the connections to one ejabberd node.
type Options struct {
	Node         string // node name, for logs
	Addr         string // host:port of the node's component listener
	JID          string // the component's JID: handshake address and `from` of pings
	Secret       string
	ServerDomain string // the node's XMPP domain: `to` of pings
	Conns        int    // connections to keep up

	PingInterval     time.Duration // keepalive period
	PingTimeout      time.Duration // an unanswered ping or a stalled write after this kills the connection
	HandshakeTimeout time.Duration // dial + handshake
	ReconnectMin     time.Duration
	ReconnectMax     time.Duration
	WriteBufferBytes int

	// ServerClosed, when set, is told when the server ended a connection's
	// stream cleanly (end of stream, no error): a server shutting down, which
	// may drop what it had acknowledged but not yet handed to its clients.
	ServerClosed func(slot int)
	// MulticastRefused, when set, is told of each multicast the service
	// refused. It is called from a connection's read loop: it must not block.
	MulticastRefused func()

	// MulticastService is the JID of ejabberd's XEP-0033 service
	// ("multicast.<domain>"): where multicast fences go. Empty: no multicast.
	MulticastService string

	// Dial replaces net.Dialer (tests route through proxies).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Handshake opens the XMPP session on a new connection of slot; nil means
	// the XEP-0114 handshake as JID with Secret. ClientHandshake gives c2s.
	// The session must read through nc (or a TLS layer from startTLS): the
	// read loop takes over from it, and connect fails otherwise.
	Handshake func(ctx context.Context, nc net.Conn, slot int) (*xmpp.Session, error)
}

func (o *Options) defaults() error {
	if o.Addr == "" || o.ServerDomain == "" {
		return errors.New("xmpplink: Addr and ServerDomain are required")
	}
	if o.Handshake == nil && o.JID == "" {
		return errors.New("xmpplink: JID is required for the component handshake")
	}
	if o.Conns < 1 {
		o.Conns = 1
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 30 * time.Second
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = 30 * time.Second
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.ReconnectMin <= 0 {
		o.ReconnectMin = 100 * time.Millisecond
	}
	if o.ReconnectMax < o.ReconnectMin {
		o.ReconnectMax = max(o.ReconnectMin, 30*time.Second)
	}
	if o.WriteBufferBytes < 4096 {
		o.WriteBufferBytes = 64 << 10
	}
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = d.DialContext
	}
	return nil
}

type pingRef struct {
	c    *Conn
	lane lane
	seq  uint64
}

// Pool holds a node's connections.
type Pool struct {
	opt        Options
	log        zerolog.Logger
	m          *Metrics
	addr       jid.JID
	retransmit time.Duration

	pingHead, pingTail []byte // a ping stanza is head + id + tail
	echoHead, echoTail []byte // a multicast fence: head + id + tail (nil without a service)
	idPrefix           string
	nextID             atomic.Uint64

	crossResults atomic.Int64 // ping results that arrived on another connection (tests)
	refusals     atomic.Int64 // multicasts the service refused as a whole

	regMu  sync.Mutex
	pings  map[string]pingRef // every unanswered ping of every live connection
	probes map[string]*probe  // multicast probes waiting for their copies

	mu           sync.Mutex
	conns        []*Conn // live connection per slot, nil while down
	changed      chan struct{}
	waitingAlone int // callers waiting for a connection to themselves
	rr           int
	done         chan struct{}
}

// NewPool checks the options; Run brings the connections up.
func NewPool(opt Options, log zerolog.Logger, m *Metrics) (*Pool, error) {
	if err := opt.defaults(); err != nil {
		return nil, err
	}
	var addr jid.JID
	if opt.Handshake == nil {
		var err error
		if addr, err = jid.Parse(opt.JID); err != nil {
			return nil, fmt.Errorf("xmpplink: JID %q: %w", opt.JID, err)
		}
	}
	p := &Pool{
		opt:  opt,
		log:  log.With().Str("component", "xmpplink").Str("node", opt.Node).Logger(),
		m:    m,
		addr: addr,
		// ejabberd spreads results over every connection of the domain — with the
		// listener's default global_routes, over every connection of every domain of
		// that listener — so with other processes connected a result may never come
		// back to us. Pings are cheap: ask again often (any later answer confirms the
		// earlier pings too); with k connections elsewhere each try succeeds with
		// probability 1/(k+1), and a timeout allows dozens of tries.
		retransmit: min(max(opt.PingTimeout/50, 20*time.Millisecond), 250*time.Millisecond),
		// A per-process prefix keeps other replicas' ids from matching ours.
		idPrefix: "a" + randomHex(4) + "-",
		pings:    make(map[string]pingRef),
		probes:   make(map[string]*probe),
		conns:    make([]*Conn, opt.Conns),
		changed:  make(chan struct{}),
		done:     make(chan struct{}),
	}
	m.address.WithLabelValues(opt.Addr).Set(1)
	p.pingHead = []byte("<iq type='get' id='")
	tail := append([]byte("' to='"), stanza.AppendEscaped(nil, opt.ServerDomain)...)
	if opt.JID != "" { // a c2s session's from is filled in by the server
		tail = append(tail, "' from='"...)
		tail = stanza.AppendEscaped(tail, opt.JID)
	}
	p.pingTail = append(tail, "'><ping xmlns='urn:xmpp:ping'/></iq>"...)
	if opt.MulticastService != "" && opt.JID != "" {
		me := stanza.AppendEscaped(nil, opt.JID)
		p.echoHead = append(append(append([]byte("<message to='"), stanza.AppendEscaped(nil, opt.MulticastService)...), "' from='"...), me...)
		p.echoHead = append(p.echoHead, "' id='"...)
		p.echoTail = append([]byte("'><addresses xmlns='"+stanza.NSAddress+"'><address type='bcc' jid='"), me...)
		p.echoTail = append(p.echoTail, "'/></addresses></message>"...)
	}
	return p, nil
}

// randomHex is n random bytes in hex, for ids no other process picks.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// probe is one multicast whose copies all come back to us.
type probe struct {
	want, got int
	refused   bool
	done      chan struct{}
}

// probed counts a copy of a probe (or its refusal); false for anything else.
func (p *Pool) probed(in inbound) bool {
	p.regMu.Lock()
	defer p.regMu.Unlock()
	pr := p.probes[in.id]
	if pr == nil {
		return false
	}
	if in.typ == "error" {
		pr.refused = true
	} else {
		pr.got++
	}
	if pr.refused || pr.got == pr.want {
		delete(p.probes, in.id)
		close(pr.done)
	}
	return true
}

// ProbeMulticast asks the multicast service to copy one message to n
// addresses of this component, and returns nil once all n copies came back:
// the service takes multicasts of n addresses from us. An error says it
// refused, or did not answer within the ping timeout.
func (p *Pool) ProbeMulticast(ctx context.Context, n int) error {
	if p.echoHead == nil || n < 1 {
		return errors.New("xmpplink: no multicast service configured")
	}
	id := p.idPrefix + "probe-" + strconv.FormatUint(p.nextID.Add(1), 36)
	pr := &probe{want: n, done: make(chan struct{})}
	p.regMu.Lock()
	p.probes[id] = pr
	p.regMu.Unlock()
	defer func() {
		p.regMu.Lock()
		delete(p.probes, id)
		p.regMu.Unlock()
	}()
	// The echo fence's head (to the service, from us), then n addresses of ours.
	b := append(append(slices.Clone(p.echoHead), id...), "'><addresses xmlns='"+stanza.NSAddress+"'>"...)
	for i := range n {
		b = stanza.AppendBcc(b, p.opt.JID+"/probe-"+strconv.Itoa(i))
	}
	b = append(b, "</addresses><body>multicast probe</body></message>"...)
	c, err := p.Acquire(ctx, false)
	if err != nil {
		return err
	}
	err = c.Write(b)
	if err == nil {
		err = c.Flush()
	}
	c.Release()
	if err != nil {
		return err
	}
	t := time.NewTimer(p.opt.PingTimeout)
	defer t.Stop()
	select {
	case <-pr.done:
	case <-t.C:
		p.regMu.Lock()
		got := pr.got
		p.regMu.Unlock()
		return fmt.Errorf("xmpplink: %d of %d copies of the multicast probe came back from %s within %s", got, n, p.opt.MulticastService, p.opt.PingTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
	if pr.refused {
		return fmt.Errorf("xmpplink: %s refused a multicast of %d addresses (its limits for this component are lower)", p.opt.MulticastService, n)
	}
	return nil
}

// MulticastRefusals counts the multicasts the service refused so far: a
// batch that sees it grow while in flight is sent again one stanza per
// recipient.
func (p *Pool) MulticastRefusals() int64 { return p.refusals.Load() }

func (p *Pool) appendFence(dst []byte, l lane, id string) []byte {
	if l == laneEcho {
		dst = append(dst, p.echoHead...)
		dst = append(dst, id...)
		return append(dst, p.echoTail...)
	}
	dst = append(dst, p.pingHead...)
	dst = append(dst, id...)
	return append(dst, p.pingTail...)
}

func (p *Pool) remember(c *Conn, l lane, seq uint64) string {
	id := p.idPrefix + strconv.FormatUint(p.nextID.Add(1), 36)
	p.regMu.Lock()
	p.pings[id] = pingRef{c: c, lane: l, seq: seq}
	p.regMu.Unlock()
	return id
}

func (p *Pool) forget(id string) {
	p.regMu.Lock()
	delete(p.pings, id)
	p.regMu.Unlock()
}

func (p *Pool) take(id string) (pingRef, bool) {
	p.regMu.Lock()
	defer p.regMu.Unlock()
	ref, ok := p.pings[id]
	if ok {
		delete(p.pings, id)
	}
	return ref, ok
}

// dispatch acts on one inbound element of connection c. Ping results are
// looked up across the whole pool: ejabberd routes a result to any
// connection of the component domain.
func (p *Pool) dispatch(c *Conn, in inbound) {
	switch in.name {
	case "iq":
		switch in.typ {
		case "result", "error":
			if in.typ == "error" {
				p.m.inboundErrors.WithLabelValues("iq", conditionLabel(in.condition)).Inc()
			}
			if ref, ok := p.take(in.id); ok {
				// Even an error answer proves the ping, and all before it, was processed.
				if ref.c != c {
					p.crossResults.Add(1)
				}
				ref.c.confirm(ref.lane, ref.seq)
				return
			}
			if in.typ == "result" {
				p.m.unknownResults.Inc()
			}
		case "get", "set":
			select {
			case c.replies <- in:
			default:
				p.m.repliesDropped.Inc()
			}
		default:
			p.m.ignored.Inc()
		}
	default:
		if in.name == "message" && p.probed(in) {
			return
		}
		if in.name == "message" && in.id != "" && p.echoHead != nil {
			if ref, ok := p.take(in.id); ok && ref.lane == laneEcho {
				// Our multicast fence came back (or bounced): the service handled what came before it.
				ref.c.confirm(laneEcho, ref.seq)
				p.m.echoes.Inc()
				return
			}
		}
		if in.typ == "error" {
			if in.name == "message" && in.from == p.opt.MulticastService && p.opt.MulticastService != "" {
				// The service refused a whole multicast (its limits): nobody got that one.
				p.refusals.Add(1)
				p.m.multicastRefused.Inc()
				if p.opt.MulticastRefused != nil {
					p.opt.MulticastRefused()
				}
				p.log.Error().Str("condition", in.condition).
					Msg("the multicast service refused a multicast: raise mod_multicast limits for this component, or set [sender] multicast = \"off\"")
			}
			p.m.inboundErrors.WithLabelValues(kindLabel(in.name), conditionLabel(in.condition)).Inc()
			return
		}
		p.m.ignored.Inc()
	}
}

// Run keeps Conns connections up until ctx ends, then closes them.
func (p *Pool) Run(ctx context.Context) error {
	defer close(p.done)
	var wg sync.WaitGroup
	for slot := range p.opt.Conns {
		wg.Go(func() { p.keep(ctx, slot) })
	}
	wg.Wait()
	return nil
}

// stableAfter is how long a connection must live before its loss no longer
// counts as a failed attempt (a server that accepts and then drops must not
// make us spin).
const stableAfter = 10 * time.Second

func (p *Pool) keep(ctx context.Context, slot int) {
	policy := backoff.Policy{Initial: p.opt.ReconnectMin, Max: p.opt.ReconnectMax}
	log := p.log.With().Int("slot", slot).Logger()
	attempt := 0
	for ctx.Err() == nil {
		c, err := p.connect(ctx, slot)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			p.m.dialFailures.Inc()
			d := policy.Delay(attempt)
			attempt++
			log.Warn().Err(err).Int("attempt", attempt).Dur("retry_in", d).Msg("connect failed")
			_ = backoff.Sleep(ctx, d)
			continue
		}
		since := time.Now()
		p.setLive(slot, c)
		log.Info().Str("addr", p.opt.Addr).Msg("component connection up")
		err = c.serve(ctx)
		p.setLive(slot, nil)
		if ctx.Err() != nil {
			return
		}
		p.m.reconnects.Inc()
		if closedByServer(err) && p.opt.ServerClosed != nil {
			p.m.serverCloses.Inc()
			p.opt.ServerClosed(slot)
		}
		if time.Since(since) > stableAfter {
			attempt = 0
		}
		d := policy.Delay(attempt)
		attempt++
		log.Warn().Err(err).Dur("retry_in", d).Msg("component connection lost")
		_ = backoff.Sleep(ctx, d)
	}
}

// closedByServer tells a stream the server ended cleanly (EOF, no stream
// error) from a reset, a timeout or a stream error.
func closedByServer(err error) bool {
	var se *xml.SyntaxError
	return errors.Is(err, io.EOF) || (errors.As(err, &se) && se.Msg == "unexpected EOF")
}

// connect dials and performs the handshake, both bounded by HandshakeTimeout:
// a server that accepts TCP and never answers cannot wedge the slot.
func (p *Pool) connect(ctx context.Context, slot int) (*Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, p.opt.HandshakeTimeout)
	defer cancel()
	nc, err := p.opt.Dial(dctx, "tcp", p.opt.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", p.opt.Addr, err)
	}
	// The deadline lives on the socket rather than in mellium's context
	// watcher, which may still fire after the handshake returned.
	_ = nc.SetDeadline(time.Now().Add(p.opt.HandshakeTimeout))
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	// The session reads through bc so the read loop can take over its
	// bytes (see streamReader).
	bc := newByteConn(nc)
	var sess *xmpp.Session
	if p.opt.Handshake != nil {
		sess, err = p.opt.Handshake(context.Background(), bc, slot)
	} else {
		sess, err = component.NewSession(context.Background(), p.addr, []byte(p.opt.Secret), bc)
	}
	if !stop() {
		_ = nc.Close()
		return nil, ctx.Err()
	}
	var in *streamReader
	if err == nil {
		in, err = newStreamReader(sess)
	}
	if err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("handshake with %s: %w", p.opt.Addr, err)
	}
	_ = nc.SetDeadline(time.Time{})
	return newConn(p, slot, nc, sess, in), nil
}

func (p *Pool) setLive(slot int, c *Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns[slot] = c
	up := 0
	for _, c := range p.conns {
		if c != nil {
			up++
		}
	}
	p.m.up.Set(float64(up))
	p.wake()
}

// Up counts the live connections.
func (p *Pool) Up() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.conns {
		if c != nil && !c.isDead() {
			n++
		}
	}
	return n
}

// Acquire returns the live connection with the fewest users, waiting for one
// to come up. With alone, it waits for a connection nobody uses and keeps
// it for the caller alone until Release: what the caller writes is then the
// only thing ejabberd can close the stream for. Call Release when done.
func (p *Pool) Acquire(ctx context.Context, alone bool) (*Conn, error) {
	p.mu.Lock()
	if alone {
		p.waitingAlone++
		defer func() {
			p.mu.Lock()
			p.waitingAlone--
			p.wake() // shared callers held back for this one may go on
			p.mu.Unlock()
		}()
	}
	p.mu.Unlock()
	for {
		p.mu.Lock()
		var best *Conn
		n := len(p.conns)
		// Shared use yields while someone waits to be alone, or that one would starve.
		if alone || p.waitingAlone == 0 {
			for i := range n {
				c := p.conns[(p.rr+i)%n]
				if c == nil || c.isDead() || c.exclusive {
					continue
				}
				if alone && c.users.Load() > 0 {
					continue
				}
				if best == nil || c.users.Load() < best.users.Load() {
					best = c
				}
			}
		}
		p.rr++
		if best != nil {
			best.users.Add(1)
			best.exclusive = alone
			p.mu.Unlock()
			return best, nil
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-p.done:
			return nil, ErrClosed
		}
	}
}

// release ends one Acquire of c; a connection that became free (or is no
// longer held alone) wakes the callers waiting for one.
func (p *Pool) release(c *Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	held := c.exclusive
	c.exclusive = false
	if c.users.Add(-1) == 0 || held {
		p.wake()
	}
}

// wake tells every waiting Acquire to look again; p.mu is held.
func (p *Pool) wake() {
	close(p.changed)
	p.changed = make(chan struct{})
}
