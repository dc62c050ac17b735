package tcpproxy

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/announcer/announcer/pkg/testkit"
)

func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, msg string, wait time.Duration) (string, error) {
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return string(buf), err
}

// A stalled connection relays nothing more and stays open; a new one is relayed.
func TestStall(t *testing.T) {
	p := New(t, echoServer(t), Forward)
	old := testkit.Dial(t, p.Addr())
	if got, err := roundTrip(old, "a", 5*time.Second); err != nil || got != "a" {
		t.Fatalf("before the stall: %q %v", got, err)
	}
	if n := p.Stall(); n != 2 { // the client's side and the target's
		t.Fatalf("stalled %d connections, want 2", n)
	}
	if got, err := roundTrip(old, "b", 300*time.Millisecond); err == nil || got == "b" {
		t.Fatalf("a stalled connection relayed %q (%v)", got, err)
	}
	fresh := testkit.Dial(t, p.Addr())
	if got, err := roundTrip(fresh, "c", 5*time.Second); err != nil || got != "c" {
		t.Fatalf("a new connection after the stall: %q %v", got, err)
	}
}
