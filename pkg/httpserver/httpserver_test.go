package httpserver

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

func TestServesThenDrainsInFlightRequests(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	s := New("127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		_, _ = io.WriteString(w, "done")
	}), 5*time.Second)
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(ctx) }()

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	body := make(chan string, 1)
	go func() {
		resp, err := client.Get("http://" + s.Addr())
		if err != nil {
			body <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body <- string(b)
	}()
	<-started
	cancel() // shutdown begins with a request in flight
	time.Sleep(50 * time.Millisecond)
	close(release)
	if got := <-body; got != "done" {
		t.Fatalf("in-flight request got %q, want it answered", got)
	}
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("tcp", s.Addr()); err == nil {
		t.Fatal("still accepting after Run returned")
	}
}

func TestTakenPortFailsListen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := New(ln.Addr().String(), http.NotFoundHandler(), time.Second).Listen(); err == nil {
		t.Fatal("Listen on a taken port succeeded")
	}
}
