package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	}))
	defer ready.Close()
	notReady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "kafka: dial tcp kafka:9092: connection refused", http.StatusServiceUnavailable)
	}))
	defer notReady.Close()
	// A port nobody listens on: take one, then free it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/readyz"
	_ = l.Close()

	tests := []struct {
		name       string
		args       []string
		want       int
		wantStderr string
	}{
		{"ready", []string{ready.URL + "/readyz"}, 0, ""},
		{"ready with timeout flag", []string{"-timeout", "2s", ready.URL + "/readyz"}, 0, ""},
		{"not found", []string{ready.URL + "/nope"}, 1, "404 Not Found"},
		{"not ready shows the reason", []string{notReady.URL + "/readyz"}, 1, "503 Service Unavailable: kafka: dial tcp kafka:9092: connection refused"},
		{"nobody listening", []string{closed}, 1, "connection refused"},
		{"bad url", []string{"http://[::1"}, 1, "announcer-probe:"},
		{"no url", nil, 2, "usage:"},
		{"two urls", []string{ready.URL, ready.URL}, 2, "usage:"},
		{"zero timeout", []string{"-timeout", "0s", ready.URL}, 2, "usage:"},
		{"unknown flag", []string{"-x", ready.URL}, 2, "flag provided but not defined"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			got := run(context.Background(), tc.args, &stderr)
			if got != tc.want {
				t.Errorf("exit %d, want %d; stderr: %s", got, tc.want, stderr.String())
			}
			if tc.wantStderr == "" && stderr.Len() != 0 {
				t.Errorf("unexpected stderr: %s", stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tc.wantStderr)
			}
		})
	}
}

// A service that accepts the connection but never answers must not hang the healthcheck.
func TestRunTimesOut(t *testing.T) {
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hung.Close()
	defer close(release)

	var stderr bytes.Buffer
	if got := run(context.Background(), []string{"-timeout", "200ms", hung.URL + "/readyz"}, &stderr); got != 1 {
		t.Fatalf("exit %d, want 1; stderr: %s", got, stderr.String())
	}
	if !strings.Contains(stderr.String(), "deadline exceeded") {
		t.Errorf("stderr %q does not name the timeout", stderr.String())
	}
}

// The body shown on failure is bounded: a huge error page does not flood the health log.
func TestRunBoundsBody(t *testing.T) {
	big := strings.Repeat("x", 10*maxBody)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, big, http.StatusInternalServerError)
	}))
	defer srv.Close()
	var stderr bytes.Buffer
	if got := run(context.Background(), []string{srv.URL}, &stderr); got != 1 {
		t.Fatalf("exit %d, want 1", got)
	}
	if n := strings.Count(stderr.String(), "x"); n != maxBody {
		t.Errorf("printed %d bytes of body, want %d", n, maxBody)
	}
}
