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
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// FreeAddr returns a loopback address nothing listens on right now (for a
// server the test starts, or one that comes up later).
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free address: %v", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatalf("free address: %v", err)
	}
	return addr
}

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
