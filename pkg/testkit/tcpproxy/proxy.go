// Package tcpproxy is a loopback TCP proxy that tests control, to produce
// network failures (hung handshakes, killed or frozen connections) at will.
package tcpproxy

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Mode is what a Proxy does with connections.
type Mode int

const (
	// Forward relays bytes to the target in both directions.
	Forward Mode = iota
	// Blackhole accepts, reads and discards, and never answers: a server that
	// hangs during the handshake.
	Blackhole
	// Refuse closes new connections at once.
	Refuse
)

// Proxy is a loopback TCP proxy a test controls: switch its mode, kill its
// connections, freeze them, to produce failures the real server would not.
type Proxy struct {
	ln net.Listener

	mu     sync.Mutex
	target string
	mode   Mode
	frozen bool
	conns  map[net.Conn]struct{}
	thaw   chan struct{}
	// stalled connections are never read or relayed again, until Close.
	stalled map[net.Conn]bool
	closed  chan struct{}
	wg      sync.WaitGroup
}

// New listens on a free loopback port and relays to target in mode.
func New(t testing.TB, target string, mode Mode) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	p := &Proxy{ln: ln, target: target, mode: mode, conns: map[net.Conn]struct{}{}, thaw: make(chan struct{}),
		stalled: map[net.Conn]bool{}, closed: make(chan struct{})}
	p.wg.Go(p.accept)
	t.Cleanup(p.Close)
	return p
}

// Addr is where clients connect.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Set changes the mode for new connections.
func (p *Proxy) Set(mode Mode) {
	p.mu.Lock()
	p.mode = mode
	p.mu.Unlock()
}

// KillAll closes every open connection (both sides).
func (p *Proxy) KillAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
}

// Freeze stops relaying bytes (connections stay open) until Thaw.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

// Thaw resumes relaying.
func (p *Proxy) Thaw() {
	p.mu.Lock()
	if p.frozen {
		p.frozen = false
		close(p.thaw)
		p.thaw = make(chan struct{})
	}
	p.mu.Unlock()
}

// Stall makes every open connection a peer that accepted and never reads
// again: what it relayed so far stays relayed, nothing more goes through in
// either direction, and it is not closed (the client must notice by itself).
// New connections are relayed as before.
func (p *Proxy) Stall() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		p.stalled[c] = true
	}
	return len(p.conns)
}

// Close stops listening and closes every connection.
func (p *Proxy) Close() {
	_ = p.ln.Close()
	p.mu.Lock()
	select {
	case <-p.closed:
	default:
		close(p.closed)
	}
	p.mu.Unlock()
	p.KillAll()
	p.Thaw()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.stalled, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode, target := p.mode, p.target
		p.mu.Unlock()
		switch mode {
		case Refuse:
			_ = c.Close()
		case Blackhole:
			p.track(c)
			p.wg.Go(func() {
				defer p.untrack(c)
				_, _ = io.Copy(io.Discard, c)
			})
		case Forward:
			up, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.track(c)
			p.track(up)
			p.wg.Go(func() { p.pipe(up, c) })
			p.wg.Go(func() { p.pipe(c, up) })
		}
	}
}

// pipe copies src to dst, pausing while frozen; either side ending closes both.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.untrack(dst)
	defer p.untrack(src)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			for {
				p.mu.Lock()
				frozen, thaw, stalled := p.frozen, p.thaw, p.stalled[src] || p.stalled[dst]
				p.mu.Unlock()
				if stalled {
					<-p.closed
					return
				}
				if !frozen {
					break
				}
				<-thaw
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
