// Package testkit is where announcer's test helpers live, apart from the
// production packages: this package has what many tests need (a free
// loopback address, a connection closed when the test ends, polling until a
// condition holds, a logger into the test's output, a service or loop run
// until the test ends, metric values read from a registry or a /metrics
// page); its subpackages have
// the local stack's addresses (stacktest), a Kafka test client (kafkatest), a
// TCP proxy that produces network failures (tcpproxy) and a real XMPP client
// (xmpptest).
package testkit

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// FreeAddr returns a loopback address nothing listens on right now (for a
// server the test starts, or one that comes up later), and never one it
// returned before in this process: once a listener is closed the kernel may
// offer its port again, and a broker's client and controller listeners once
// got the same port that way.
func FreeAddr(t testing.TB) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	addr, err := newAddr(func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }, handedOut.addrs)
	if err != nil {
		t.Fatalf("free address: %v", err)
	}
	return addr
}

// newAddr listens until it gets an address not in seen, adds it to seen and
// returns it. The listeners it opened stay open until then, so the kernel
// cannot offer a seen port twice in a row.
func newAddr(listen func() (net.Listener, error), seen map[string]bool) (string, error) {
	var held []net.Listener
	defer func() {
		for _, ln := range held {
			_ = ln.Close()
		}
	}()
	for range 1000 {
		ln, err := listen()
		if err != nil {
			return "", err
		}
		held = append(held, ln)
		if addr := ln.Addr().String(); !seen[addr] {
			seen[addr] = true
			return addr, nil
		}
	}
	return "", errors.New("1000 ports in a row were ones handed out before")
}

// handedOut is every address FreeAddr returned in this process.
var handedOut = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

// Dial connects to addr over TCP, failing the test if it cannot; the
// connection is closed when the test ends.
func Dial(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := (&net.Dialer{}).DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Eventually polls ok every 20 ms until it holds, and fails the test naming
// what it waited for after timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Get fetches url without keeping the connection (nothing left for goleak)
// and returns the status and body; a request that fails returns 0 and the error text.
func Get(t testing.TB, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, string(b)
}
