package apiclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// server answers each request with the next of answers (the last one
// repeating) and records what it was sent.
type server struct {
	*httptest.Server
	mu       sync.Mutex
	requests []*http.Request
	bodies   []string
}

func newServer(t *testing.T, answers ...func(w http.ResponseWriter, r *http.Request)) *server {
	s := &server{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		n := len(s.requests)
		s.requests = append(s.requests, r)
		s.bodies = append(s.bodies, string(body))
		s.mu.Unlock()
		answers[min(n, len(answers)-1)](w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.requests)
}

func (s *server) client(t *testing.T, token string) *Client {
	c, err := New(Config{BaseURL: s.URL, Token: token, HTTPClient: s.Client(), Timeout: time.Second,
		Retry: Retry{Base: time.Millisecond, Max: 20 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func answer(status int, body string, header ...string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

func drop(w http.ResponseWriter, _ *http.Request) {
	if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
		_ = conn.Close()
	}
}

var channel42 = Request{Target: ChannelTarget(NumericChannel(42)), Message: []byte(`<message to="%s"/>`)}

func TestAnnounceRetriesWithTheSameKey(t *testing.T) {
	s := newServer(t,
		answer(503, `{"error": "kafka unavailable"}`),
		drop,
		answer(202, `{"id": "a1"}`, "Idempotent-Replayed", "true"))
	acc, err := s.client(t, "tok").Announce(context.Background(), channel42, "key-1")
	if err != nil {
		t.Fatal(err)
	}
	if acc.ID != "a1" || !acc.Replayed {
		t.Errorf("accepted %+v", acc)
	}
	if s.count() != 3 {
		t.Fatalf("%d requests, want 3", s.count())
	}
	for i, r := range s.requests {
		if k := r.Header.Get("Idempotency-Key"); k != "key-1" {
			t.Errorf("attempt %d: key %q", i, k)
		}
		if a := r.Header.Get("Authorization"); a != "Bearer tok" {
			t.Errorf("attempt %d: Authorization %q", i, a)
		}
		if s.bodies[i] != s.bodies[0] {
			t.Errorf("attempt %d sent another body: %s", i, s.bodies[i])
		}
	}
	if r := s.requests[0]; r.URL.Path != "/v1/announce/channel" || r.Header.Get("Content-Type") != "application/json" {
		t.Errorf("POST %s, Content-Type %q", r.URL.Path, r.Header.Get("Content-Type"))
	}
}

func TestAnnounceWithoutKeyIsNotRetried(t *testing.T) {
	s := newServer(t, answer(503, `{"error": "kafka unavailable"}`))
	_, err := s.client(t, "").Announce(context.Background(), channel42, "")
	if StatusOf(err) != 503 || s.count() != 1 {
		t.Errorf("err %v after %d requests, want one 503", err, s.count())
	}
	if s.requests[0].Header.Get("Authorization") != "" {
		t.Error("Authorization sent without a token")
	}
}

func TestRetriesAreBounded(t *testing.T) {
	s := newServer(t, answer(503, `{"error": "redis down"}`))
	_, err := s.client(t, "").Get(context.Background(), "x")
	if !Transient(err) || !strings.Contains(err.Error(), "after 5 attempts") || !strings.Contains(err.Error(), "redis down") {
		t.Errorf("err %v", err)
	}
	if s.count() != 5 {
		t.Errorf("%d requests, want 5", s.count())
	}
}

func TestRetryAfterIsHonouredUpToMax(t *testing.T) {
	s := newServer(t, answer(503, `{"error": "busy"}`, "Retry-After", "30"), answer(200, `{"id": "x", "state": "done"}`))
	start := time.Now()
	if _, err := s.client(t, "").Get(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	// Retry-After 30s is capped at Max (20ms), but no shorter than it.
	if d := time.Since(start); d < 20*time.Millisecond || d > 5*time.Second {
		t.Errorf("retried after %v, want about 20ms", d)
	}
}

func TestTimeoutIsRetried(t *testing.T) {
	s := newServer(t,
		func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
		answer(200, `{"id": "x", "state": "done"}`))
	c, _ := New(Config{BaseURL: s.URL, HTTPClient: s.Client(), Timeout: 50 * time.Millisecond, Retry: Retry{Base: time.Millisecond}})
	a, err := c.Cancel(context.Background(), "x")
	if err != nil || a.State != StateDone || s.count() != 2 {
		t.Errorf("%v, %v after %d requests", a, err, s.count())
	}
}

func TestErrorsThatAreNotRetried(t *testing.T) {
	for _, tc := range []struct {
		status      int
		body        string
		msg, field  string
		wantRetried bool
	}{
		{400, `{"error": "not valid base64", "field": "message"}`, "not valid base64", "message", false},
		{401, `{"error": "missing bearer token"}`, "missing bearer token", "", false},
		{404, `{"error": "no announcement x", "field": "id"}`, "no announcement x", "id", false},
		{409, `{"error": "announcement x is already done", "field": "state"}`, "announcement x is already done", "state", false},
		{501, `{"error": "no progress store"}`, "no progress store", "", false},
		{502, `<html>bad gateway</html>`, "Bad Gateway", "", false},
	} {
		s := newServer(t, answer(tc.status, tc.body))
		_, err := s.client(t, "").Get(context.Background(), "x")
		var he *Error
		if !errors.As(err, &he) || he.Status != tc.status || he.Message != tc.msg || he.Field != tc.field {
			t.Errorf("%d: %#v", tc.status, err)
		}
		if Transient(err) || s.count() != 1 {
			t.Errorf("%d: retried (%d requests)", tc.status, s.count())
		}
	}
}

func TestPreview(t *testing.T) {
	s := newServer(t, answer(200, `{"id": "p1", "state": "done", "dry_run": true, "audience": {"recipients": 3}}`))
	a, err := s.client(t, "").Preview(context.Background(), channel42)
	if err != nil || a.Audience.Recipients != 3 {
		t.Fatalf("%v %v", a, err)
	}
	if !strings.Contains(s.bodies[0], `"dry_run":true`) || s.requests[0].Header.Get("Idempotency-Key") != "" {
		t.Errorf("preview sent %s with key %q", s.bodies[0], s.requests[0].Header.Get("Idempotency-Key"))
	}

	s = newServer(t, answer(504, `{"error": "preview not finished", "id": "p2"}`))
	_, err = s.client(t, "").Preview(context.Background(), channel42)
	var he *Error
	if !errors.As(err, &he) || he.Status != 504 || he.ID != "p2" || s.count() != 1 {
		t.Errorf("504: %#v after %d requests", err, s.count())
	}

	// A server that ignored dry_run has sent it: that must not look like a preview.
	s = newServer(t, answer(200, `{"id": "p3", "state": "accepted", "dry_run": false}`))
	if _, err := s.client(t, "").Preview(context.Background(), channel42); err == nil {
		t.Error("a real send shown as a preview")
	}
	// A first-generation-like server answers only the id of what it sends.
	s = newServer(t, answer(202, `{"id": "p4"}`))
	if _, err := s.client(t, "").Preview(context.Background(), channel42); err == nil ||
		!strings.Contains(err.Error(), "p4") || !strings.Contains(err.Error(), "being sent") {
		t.Errorf("an accepted send: %v; want it named as being sent", err)
	}
}

func TestListAndPaths(t *testing.T) {
	s := newServer(t, answer(200, `{"announcements": [{"id": "b", "state": "done"}, {"id": "a", "state": "failed", "reason": "x"}]}`))
	c, _ := New(Config{BaseURL: s.URL + "/prefix/", HTTPClient: s.Client()})
	list, err := c.List(context.Background(), ListOptions{State: StateDone, Limit: 50})
	if err != nil || len(list) != 2 || list[0].ID != "b" || list[1].Reason != "x" {
		t.Fatalf("%v %v", list, err)
	}
	if u := s.requests[0].URL; u.Path != "/prefix/v1/announcements" || u.RawQuery != "limit=50&state=done" {
		t.Errorf("GET %s", u)
	}

	s = newServer(t, answer(200, `{"id": "a/b", "state": "done"}`))
	if _, err := s.client(t, "").Get(context.Background(), "a/b ?"); err != nil {
		t.Fatal(err)
	}
	if p := s.requests[0].URL.EscapedPath(); p != "/v1/announcements/a%2Fb%20%3F" {
		t.Errorf("path %s: the id is not one escaped segment", p)
	}

	s = newServer(t, answer(200, `{"announcements": [{"id": "a", "state": "done"}, {"state": "done"}]}`))
	if _, err := s.client(t, "").List(context.Background(), ListOptions{}); err == nil || !strings.Contains(err.Error(), "announcements[1]") {
		t.Errorf("bad element: %v", err)
	}
	if q := s.requests[0].URL.RawQuery; q != "" {
		t.Errorf("query %q, want the server's defaults", q)
	}
}

func TestContextEndsRetries(t *testing.T) {
	s := newServer(t, answer(503, `{"error": "down"}`))
	c, _ := New(Config{BaseURL: s.URL, HTTPClient: s.Client(), Retry: Retry{Base: time.Hour, Max: time.Hour}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Get(ctx, "x")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("err %v after %v", err, time.Since(start))
	}
}

func TestBackoff(t *testing.T) {
	c, _ := New(Config{BaseURL: "http://x", Retry: Retry{Base: 100 * time.Millisecond, Max: time.Second}})
	for attempt := 1; attempt <= 40; attempt++ {
		want := min(100*time.Millisecond<<min(attempt-1, 16), time.Second)
		for range 20 {
			if d := c.backoff(attempt, errors.New("x")); d < want/2 || d > want {
				t.Fatalf("attempt %d: wait %v, want %v..%v", attempt, d, want/2, want)
			}
		}
	}
	if d := c.backoff(1, &Error{Status: 503, RetryAfter: 700 * time.Millisecond}); d != 700*time.Millisecond {
		t.Errorf("Retry-After 700ms: wait %v", d)
	}
}

func TestNewChecksTheURL(t *testing.T) {
	for _, u := range []string{"", "127.0.0.1:8080", "ftp://x", "http://", "http://x/?a=b", "http://u:p@x"} {
		if _, err := New(Config{BaseURL: u}); err == nil {
			t.Errorf("%q accepted", u)
		}
	}
	if _, err := New(Config{BaseURL: "https://x:8443/api"}); err != nil {
		t.Error(err)
	}
	// What the URL holds in secret stays out of the message.
	for _, u := range []string{"https://ops:s3cr3t@x", "https://x/?token=s3cr3t", "https://x/#s3cr3t", "http://x:bad port/s3cr3t"} {
		if _, err := New(Config{BaseURL: u}); err == nil || strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%q: %v", u, err)
		}
	}
}

func ExampleError() {
	err := &Error{Status: 409, Message: "Idempotency-Key reused with a different body", Field: "Idempotency-Key"}
	fmt.Println(err)
	// Output: HTTP 409: Idempotency-Key reused with a different body (field Idempotency-Key)
}

// Each preview POST that reaches the server is a dry run of its own: only a
// 503 repeats it, not a timeout or a dropped connection.
func TestPreviewIsNotRepeatedOnceSent(t *testing.T) {
	s := newServer(t, drop, answer(200, `{"id": "p1", "state": "done", "dry_run": true}`))
	_, err := s.client(t, "").Preview(context.Background(), channel42)
	if err == nil || !Reached(err) || s.count() != 1 {
		t.Errorf("dropped: %v after %d requests, want one", err, s.count())
	}

	s = newServer(t,
		func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
		answer(200, `{"id": "p1", "state": "done", "dry_run": true}`))
	c, _ := New(Config{BaseURL: s.URL, HTTPClient: s.Client(), PreviewTimeout: 50 * time.Millisecond, Retry: Retry{Base: time.Millisecond}})
	_, err = c.Preview(context.Background(), channel42)
	if !errors.Is(err, context.DeadlineExceeded) || s.count() != 1 {
		t.Errorf("timed out: %v after %d requests, want one", err, s.count())
	}

	s = newServer(t, answer(503, `{"error": "kafka unavailable"}`), answer(200, `{"id": "p1", "state": "done", "dry_run": true}`))
	if a, err := s.client(t, "").Preview(context.Background(), channel42); err != nil || a.ID != "p1" || s.count() != 2 {
		t.Errorf("503: %v, %v after %d requests, want p1 after 2", a, err, s.count())
	}
}

func TestPreviewRetriesAConnectionNeverMade(t *testing.T) {
	s := newServer(t, answer(200, `{"id": "p1", "state": "done", "dry_run": true}`))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := l.Addr().String()
	l.Close()
	var dials atomic.Int32
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if dials.Add(1) <= 2 {
			addr = refused
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	c, _ := New(Config{BaseURL: s.URL, HTTPClient: &http.Client{Transport: tr}, Retry: Retry{Base: time.Millisecond}})
	a, err := c.Preview(context.Background(), channel42)
	if err != nil || a.ID != "p1" || s.count() != 1 || dials.Load() != 3 {
		t.Errorf("%v, %v after %d dials and %d requests, want p1 after 3 and 1", a, err, dials.Load(), s.count())
	}
}

func TestPreviewTimeout(t *testing.T) {
	for _, tc := range []struct {
		timeout, preview, want time.Duration
	}{
		{0, 0, PreviewWait},
		{10 * time.Second, 0, PreviewWait},
		{2 * time.Minute, 0, 2 * time.Minute},
		{10 * time.Second, time.Second, time.Second},
	} {
		c, err := New(Config{BaseURL: "http://x", Timeout: tc.timeout, PreviewTimeout: tc.preview})
		if err != nil || c.previewTimeout != tc.want {
			t.Errorf("timeout %v, preview timeout %v: %v (%v), want %v", tc.timeout, tc.preview, c.previewTimeout, err, tc.want)
		}
	}
}
