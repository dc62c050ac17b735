package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/httpserver"
	"github.com/announcer/announcer/pkg/progress"
	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/services/ingress/internal/announce"
)

const testToken = "test-token-0123456789"

var goodMsg = base64.StdEncoding.EncodeToString([]byte(`<message to='%s' from='announcer.localhost' type='chat'><body>hi</body></message>`))

// memPublisher stands in for Kafka: it records events or fails as told.
type memPublisher struct {
	mu     sync.Mutex
	events []announcement.Event
	err    error
	// hold, when set, runs first; its error fails the publish (a write in flight).
	hold func(ctx context.Context) error
	// maxBytes > 0 refuses a larger encoded event, as the bus would.
	maxBytes int
}

func (p *memPublisher) CheckSize(e announcement.Event) error {
	if b, err := e.Encode(); err != nil || p.maxBytes > 0 && len(b) > p.maxBytes {
		return fmt.Errorf("%w: %d bytes (%v)", announce.ErrTooLarge, len(b), err)
	}
	return nil
}

func (p *memPublisher) Publish(ctx context.Context, e announcement.Event) error {
	if err := p.CheckSize(e); err != nil {
		return err
	}
	if p.hold != nil {
		if err := p.hold(ctx); err != nil {
			return err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.events = append(p.events, e)
	return nil
}

type fixture struct {
	h       *gin.Engine
	svc     *announce.Service
	pub     *memPublisher
	records *memRecords // nil: no progress store
	reg     *prometheus.Registry
}

// newFixture is the API without a progress store.
func newFixture(t *testing.T, tokens ...string) fixture {
	t.Helper()
	return buildFixture(t, nil, tokens...)
}

// newStoreFixture is the API with a progress store.
func newStoreFixture(t *testing.T, tokens ...string) fixture {
	t.Helper()
	return buildFixture(t, newMemRecords(), tokens...)
}

func buildFixture(t *testing.T, records *memRecords, tokens ...string) fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	pub := &memPublisher{}
	var r announce.Records
	if records != nil {
		r = records
	}
	svc, err := announce.New(pub, r, announce.Limits{
		MaxBodyBytes:   4096,
		MaxUsernames:   3,
		Template:       stanza.Options{MaxBytes: 1024, ComponentDomain: "announcer.localhost"},
		UserDomain:     "localhost",
		PublishTimeout: time.Second,
		PreviewTimeout: 200 * time.Millisecond,
	}, reg)
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(svc, Options{MaxBodyBytes: 4096, Tokens: tokens}, zerolog.Nop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	return fixture{h: h, svc: svc, pub: pub, records: records, reg: reg}
}

type response struct {
	code   int
	header http.Header
	body   map[string]any
	raw    string
}

func do(t *testing.T, h http.Handler, method, path, body string, header ...string) response {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	r := response{code: rec.Code, header: rec.Header(), raw: rec.Body.String()}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s %s: Content-Type %q, want JSON (body %q)", method, path, ct, r.raw)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &r.body); err != nil {
		t.Errorf("%s %s: body %q is not a JSON object: %v", method, path, r.raw, err)
	}
	return r
}

func TestStatuses(t *testing.T) {
	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		pubErr     error
		wantCode   int
		wantField  string
		wantHeader string
	}{
		{name: "channel accepted", method: "POST", path: RouteChannel, body: `{"channel_id": 22, "message": "` + goodMsg + `"}`, wantCode: 202},
		{name: "channel by string id", method: "POST", path: RouteChannel, body: `{"channel_id": "news", "message": "` + goodMsg + `", "persist": true}`, wantCode: 202},
		{name: "all online", method: "POST", path: RouteChannel, body: `{"channel_id": -5, "message": "` + goodMsg + `"}`, wantCode: 202},
		{name: "users accepted", method: "POST", path: RouteUsers, body: `{"usernames": ["alice", "bob@localhost/x"], "message": "` + goodMsg + `"}`, wantCode: 202},
		{name: "bad base64", method: "POST", path: RouteChannel, body: `{"channel_id": 1, "message": "%%%"}`, wantCode: 400, wantField: "message"},
		{name: "unknown field", method: "POST", path: RouteChannel, body: `{"channel_id": 1, "message": "` + goodMsg + `", "priority": 1}`, wantCode: 400, wantField: "priority"},
		{name: "malformed JSON", method: "POST", path: RouteUsers, body: `{"usernames": [`, wantCode: 400, wantField: "body"},
		{name: "too many usernames", method: "POST", path: RouteUsers, body: `{"usernames": ["a","b","c","d"], "message": "` + goodMsg + `"}`, wantCode: 400, wantField: "usernames"},
		{name: "body over the limit", method: "POST", path: RouteUsers, body: `{"usernames": ["` + strings.Repeat("a", 5000) + `"], "message": ""}`, wantCode: 413, wantField: "body"},
		{name: "event over the bus limit", method: "POST", path: RouteChannel, body: `{"channel_id": 1, "message": "` + goodMsg + `"}`, pubErr: fmt.Errorf("%w: 2 MB", announce.ErrTooLarge), wantCode: 413, wantField: "body"},
		{name: "Kafka down", method: "POST", path: RouteChannel, body: `{"channel_id": 1, "message": "` + goodMsg + `"}`, pubErr: fmt.Errorf("%w: dial tcp: connection refused", announce.ErrUnavailable), wantCode: 503, wantHeader: "Retry-After"},
		{name: "wrong method", method: "GET", path: RouteChannel, wantCode: 405, wantField: "method", wantHeader: "Allow"},
		{name: "wrong method on users", method: "PUT", path: RouteUsers, body: `{}`, wantCode: 405, wantField: "method", wantHeader: "Allow"},
		{name: "unknown path", method: "POST", path: "/v1/announce/everyone", body: `{}`, wantCode: 404, wantField: "path"},
		{name: "trailing slash is not redirected", method: "POST", path: RouteChannel + "/", body: `{}`, wantCode: 404, wantField: "path"},
		{name: "root", method: "GET", path: "/", wantCode: 404, wantField: "path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.pub.err = tt.pubErr
			r := do(t, f.h, tt.method, tt.path, tt.body)
			if r.code != tt.wantCode {
				t.Fatalf("status %d, want %d (body %s)", r.code, tt.wantCode, r.raw)
			}
			if tt.wantCode == 202 {
				id, _ := r.body["id"].(string)
				if len(f.pub.events) != 1 || id == "" || f.pub.events[0].ID != id {
					t.Fatalf("answer %s, published %+v: want the answered id published once", r.raw, f.pub.events)
				}
				return
			}
			if len(f.pub.events) != 0 {
				t.Errorf("rejected request published %+v", f.pub.events)
			}
			if msg, _ := r.body["error"].(string); msg == "" {
				t.Errorf("no error message in %s", r.raw)
			}
			if got, _ := r.body["field"].(string); got != tt.wantField {
				t.Errorf("field %q, want %q (%s)", got, tt.wantField, r.raw)
			}
			if tt.wantHeader != "" && r.header.Get(tt.wantHeader) == "" {
				t.Errorf("missing %s header", tt.wantHeader)
			}
		})
	}
}

func TestPersistDefaults(t *testing.T) {
	f := newFixture(t)
	do(t, f.h, "POST", RouteChannel, `{"channel_id": 1, "message": "`+goodMsg+`"}`)
	do(t, f.h, "POST", RouteUsers, `{"usernames": ["a"], "message": "`+goodMsg+`"}`)
	do(t, f.h, "POST", RouteUsers, `{"usernames": ["a"], "message": "`+goodMsg+`", "persist": false}`)
	if len(f.pub.events) != 3 {
		t.Fatalf("published %d events, want 3", len(f.pub.events))
	}
	for i, want := range []bool{false, true, false} {
		if f.pub.events[i].Persist != want {
			t.Errorf("event %d (%s): persist %v, want %v", i, f.pub.events[i].Kind, f.pub.events[i].Persist, want)
		}
		if f.pub.events[i].Source != announce.SourceREST {
			t.Errorf("event %d: source %q", i, f.pub.events[i].Source)
		}
	}
}

func TestBearerAuth(t *testing.T) {
	f := newFixture(t, "other-token-abcdefghijkl", testToken)
	body := `{"channel_id": 1, "message": "` + goodMsg + `"}`
	tests := []struct {
		name   string
		header []string
		want   int
	}{
		{"no header", nil, 401},
		{"wrong token", []string{"Authorization", "Bearer nope-nope-nope-nope"}, 401},
		{"token prefix only", []string{"Authorization", "Bearer " + testToken[:10]}, 401},
		{"basic scheme", []string{"Authorization", "Basic " + testToken}, 401},
		{"no scheme", []string{"Authorization", testToken}, 401},
		{"right token", []string{"Authorization", "Bearer " + testToken}, 202},
		{"scheme is case-insensitive", []string{"Authorization", "bearer " + testToken}, 202},
		{"second configured token", []string{"Authorization", "Bearer other-token-abcdefghijkl"}, 202},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, f.h, "POST", RouteChannel, body, tt.header...)
			if r.code != tt.want {
				t.Fatalf("status %d, want %d (%s)", r.code, tt.want, r.raw)
			}
			if tt.want == 401 {
				if r.header.Get("WWW-Authenticate") == "" || r.body["field"] != "Authorization" {
					t.Errorf("401 without WWW-Authenticate or field: %v %s", r.header, r.raw)
				}
			}
		})
	}
}

func TestMetricsCountRequests(t *testing.T) {
	f := newFixture(t)
	do(t, f.h, "POST", RouteUsers, `{"usernames": ["a"], "message": "`+goodMsg+`"}`)
	do(t, f.h, "POST", RouteUsers, `{"usernames": [], "message": "`+goodMsg+`"}`)
	do(t, f.h, "POST", "/nope", `{}`)
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(`
# HELP http_requests_total HTTP requests by route and status code.
# TYPE http_requests_total counter
http_requests_total{code="202",route="/v1/announce/users"} 1
http_requests_total{code="400",route="/v1/announce/users"} 1
http_requests_total{code="404",route="unmatched"} 1
`), "http_requests_total"); err != nil {
		t.Error(err)
	}
}

type panicking struct{ noStore }

func (panicking) Announce(context.Context, announce.Request, string, announce.Key) (announce.Outcome, error) {
	panic("boom")
}

func TestPanicIsA500(t *testing.T) {
	reg := prometheus.NewRegistry()
	h, err := New(panicking{}, Options{MaxBodyBytes: 1024}, zerolog.Nop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	r := do(t, h, "POST", RouteChannel, `{"channel_id": 1, "message": "x"}`)
	if r.code != 500 {
		t.Fatalf("status %d, want 500", r.code)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP http_panics_total Handler panics recovered into a 500.
# TYPE http_panics_total counter
http_panics_total 1
`), "http_panics_total"); err != nil {
		t.Error(err)
	}
}

// noStore is a use case without a progress store.
type noStore struct{}

func (noStore) DecodeChannel(b []byte) (announce.Request, error) { return announce.DecodeChannel(b) }
func (noStore) DecodeUsers(b []byte) (announce.Request, error)   { return announce.DecodeUsers(b) }

func (noStore) Status(context.Context, string) (progress.Announcement, error) {
	return progress.Announcement{}, announce.ErrNoStore
}

func (noStore) List(context.Context, string, int) ([]progress.Announcement, error) {
	return nil, announce.ErrNoStore
}

func (noStore) Cancel(context.Context, string) (progress.Announcement, error) {
	return progress.Announcement{}, announce.ErrNoStore
}

// slowAnnouncer answers after release is closed.
type slowAnnouncer struct {
	noStore
	started chan struct{}
	release chan struct{}
}

func (s slowAnnouncer) Announce(context.Context, announce.Request, string, announce.Key) (announce.Outcome, error) {
	close(s.started)
	<-s.release
	return announce.Outcome{ID: "drained"}, nil
}

// Past the in-flight byte bound a POST is answered 503 with Retry-After at
// once; once the requests in flight are answered, POSTs are taken again.
func TestInFlightBytesAreBounded(t *testing.T) {
	a := onceSlow{slowAnnouncer{started: make(chan struct{}), release: make(chan struct{})}, &sync.Once{}}
	body := `{"channel_id": 1, "message": "x"}`
	h, err := New(a, Options{MaxBodyBytes: 1024, MaxInFlightBytes: 1024 + int64(len(body))/2}, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan response, 1)
	go func() { first <- do(t, h, "POST", RouteChannel, body) }()
	<-a.started
	// A body of unknown length counts as max_body_bytes.
	req := httptest.NewRequest("POST", RouteChannel, io.NopCloser(strings.NewReader(body)))
	req.ContentLength = -1
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" || !strings.Contains(rec.Body.String(), "in flight") {
		t.Fatalf("a POST past the bound: %d %v %s", rec.Code, rec.Header(), rec.Body.String())
	}
	close(a.release)
	if r := <-first; r.code != http.StatusAccepted {
		t.Fatalf("the POST in flight: %d %s", r.code, r.raw)
	}
	if r := do(t, h, "POST", RouteChannel, body); r.code != http.StatusAccepted {
		t.Fatalf("a POST after the bound freed: %d %s", r.code, r.raw)
	}
	if _, err := New(a, Options{MaxBodyBytes: 1024, MaxInFlightBytes: 1000}, zerolog.Nop(), prometheus.NewRegistry()); err == nil {
		t.Fatal("a bound smaller than one request was accepted")
	}
}

// onceSlow is slowAnnouncer for its first call; later calls answer at once.
type onceSlow struct {
	slowAnnouncer
	once *sync.Once
}

func (s onceSlow) Announce(ctx context.Context, req announce.Request, source string, key announce.Key) (announce.Outcome, error) {
	slow := false
	s.once.Do(func() { slow = true })
	if slow {
		return s.slowAnnouncer.Announce(ctx, req, source, key)
	}
	return announce.Outcome{ID: "quick"}, nil
}

func TestServerDrainsInFlightRequests(t *testing.T) {
	a := slowAnnouncer{started: make(chan struct{}), release: make(chan struct{})}
	h, err := New(a, Options{MaxBodyBytes: 1024}, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	srv := httpserver.New("127.0.0.1:0", h, 5*time.Second)
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	type answer struct {
		code int
		body string
		err  error
	}
	got := make(chan answer, 1)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	go func() {
		resp, err := client.Post("http://"+srv.Addr()+RouteChannel, "application/json", strings.NewReader(`{"channel_id": 1, "message": "x"}`))
		if err != nil {
			got <- answer{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		got <- answer{code: resp.StatusCode, body: string(b)}
	}()
	<-a.started
	cancel() // shutdown begins while the request waits for "Kafka"
	select {
	case err := <-done:
		t.Fatalf("server stopped (%v) before its in-flight request finished", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(a.release)
	ans := <-got
	if ans.err != nil || ans.code != 202 || !strings.Contains(ans.body, "drained") {
		t.Fatalf("in-flight request got %d %q %v, want its 202", ans.code, ans.body, ans.err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := client.Post("http://"+srv.Addr()+RouteChannel, "application/json", strings.NewReader(`{}`)); err == nil {
		t.Error("server still accepts requests after shutdown")
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(panicking{}, Options{}, zerolog.Nop(), prometheus.NewRegistry()); err == nil {
		t.Error("zero body limit accepted")
	}
	reg := prometheus.NewRegistry()
	if _, err := New(panicking{}, Options{MaxBodyBytes: 1}, zerolog.Nop(), reg); err != nil {
		t.Fatal(err)
	}
	if _, err := New(panicking{}, Options{MaxBodyBytes: 1}, zerolog.Nop(), reg); err == nil {
		t.Error("duplicate metrics registration accepted")
	}
}

func TestStatusOfUnknownErrorIs500(t *testing.T) {
	code, _, msg := statusOf(errors.New("surprise"))
	if code != 500 || strings.Contains(msg, "surprise") {
		t.Errorf("statusOf = %d %q: want 500 without internals", code, msg)
	}
}

// An Idempotency-Key makes a POST safe to retry: a retry after a failed
// publish publishes the identical event (same id, same time), a retry after
// success publishes nothing and answers the same id, and the key with
// another body is a 409.
func TestIdempotencyKey(t *testing.T) {
	f := newStoreFixture(t)
	body := `{"usernames": ["alice"], "message": "` + goodMsg + `"}`
	f.pub.err = fmt.Errorf("%w: timed out", announce.ErrUnavailable)
	if r := do(t, f.h, "POST", RouteUsers, body, HeaderIdempotencyKey, "retry-1"); r.code != http.StatusServiceUnavailable {
		t.Fatalf("first attempt: %d %s", r.code, r.raw)
	}
	if r := do(t, f.h, "POST", RouteUsers, body, HeaderIdempotencyKey, "retry-1"); r.code != http.StatusServiceUnavailable || r.header.Get(HeaderReplayed) != "" {
		t.Fatalf("a failed retry: %d %s, %s %q", r.code, r.raw, HeaderReplayed, r.header.Get(HeaderReplayed))
	}
	f.pub.err = nil
	first := do(t, f.h, "POST", RouteUsers, body, HeaderIdempotencyKey, "retry-1")
	again := do(t, f.h, "POST", RouteUsers, body, HeaderIdempotencyKey, "retry-1")
	if first.code != http.StatusAccepted || again.code != http.StatusAccepted || first.body["id"] != again.body["id"] {
		t.Fatalf("answers %d %s and %d %s: want one id", first.code, first.raw, again.code, again.raw)
	}
	if first.header.Get(HeaderReplayed) != "true" || again.header.Get(HeaderReplayed) != "true" {
		t.Errorf("replays not marked: %q %q", first.header.Get(HeaderReplayed), again.header.Get(HeaderReplayed))
	}
	if len(f.pub.events) != 1 || f.pub.events[0].ID != first.body["id"] {
		t.Fatalf("published %d events, want the one retried after the failure", len(f.pub.events))
	}
	other := do(t, f.h, "POST", RouteUsers, strings.Replace(body, "alice", "bob", 1), HeaderIdempotencyKey, "retry-1")
	if other.code != http.StatusConflict || other.body["field"] != HeaderIdempotencyKey {
		t.Fatalf("another body under the key: %d %s", other.code, other.raw)
	}
	fresh := do(t, f.h, "POST", RouteUsers, body)
	if fresh.code != http.StatusAccepted || fresh.body["id"] == first.body["id"] || fresh.header.Get(HeaderReplayed) != "" {
		t.Fatalf("without a key: %d %s", fresh.code, fresh.raw)
	}
	if bad := do(t, f.h, "POST", RouteUsers, body, HeaderIdempotencyKey, strings.Repeat("k", 256)); bad.code != http.StatusBadRequest {
		t.Fatalf("a 256-byte key: %d %s", bad.code, bad.raw)
	}
}

// Priority: users lists and "priority": "high" take the priority lane; a
// dry run answers the count and is marked as one.
func TestPriorityAndDryRun(t *testing.T) {
	f := newStoreFixture(t)
	for _, tc := range []struct {
		path, body string
		want       string
	}{
		{RouteChannel, `{"channel_id": 1, "message": "` + goodMsg + `"}`, ""},
		{RouteChannel, `{"channel_id": 1, "message": "` + goodMsg + `", "priority": "high"}`, announcement.PriorityHigh},
		{RouteUsers, `{"usernames": ["a"], "message": "` + goodMsg + `"}`, announcement.PriorityHigh},
		{RouteUsers, `{"usernames": ["a"], "message": "` + goodMsg + `", "priority": "normal"}`, ""},
	} {
		f.pub.events = nil
		if r := do(t, f.h, "POST", tc.path, tc.body); r.code != http.StatusAccepted {
			t.Fatalf("%s: %d %s", tc.body, r.code, r.raw)
		}
		if got := f.pub.events[0].Priority; got != tc.want {
			t.Errorf("%s: priority %q, want %q", tc.body, got, tc.want)
		}
	}
	f.pub.events = nil
	r := do(t, f.h, "POST", RouteChannel, `{"channel_id": 1, "message": "`+goodMsg+`", "dry_run": true}`)
	if r.code != http.StatusOK || r.body["dry_run"] != true || r.body["state"] != "done" {
		t.Fatalf("dry run: %d %s", r.code, r.raw)
	}
	if ev := f.pub.events[0]; !ev.DryRun || ev.Priority != announcement.PriorityHigh {
		t.Fatalf("dry-run event %+v: want dry_run on the priority lane", ev)
	}
}

// A body refused while decoding counts as a rejection of its field, as one
// refused by validation does.
func TestDecodeRejectionsAreCounted(t *testing.T) {
	f := newFixture(t)
	do(t, f.h, "POST", RouteChannel, `{"message": "`+goodMsg+`"}`)
	do(t, f.h, "POST", RouteUsers, `{"usernames": ["a"], "message": "`+goodMsg+`", "persist": null}`)
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(`
# HELP announcements_rejected_total Requests rejected by validation, by the field at fault.
# TYPE announcements_rejected_total counter
announcements_rejected_total{field="channel_id",source="rest"} 1
announcements_rejected_total{field="persist",source="rest"} 1
`), "announcements_rejected_total"); err != nil {
		t.Error(err)
	}
}

// A client that goes away while its announcement is being published does
// not cancel the publish: Kafka may take the write all the same (kafka-go
// keeps writing a queued batch), and it must then count as accepted and get
// its record, or a client retrying without a key would announce it twice.
func TestClientGoneDoesNotCancelPublish(t *testing.T) {
	f := newStoreFixture(t)
	started := make(chan context.Context, 1)
	release := make(chan struct{})
	f.pub.hold = func(ctx context.Context) error {
		started <- ctx
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req := httptest.NewRequest("POST", RouteUsers, strings.NewReader(`{"usernames": ["alice"], "message": "`+goodMsg+`"}`)).WithContext(ctx)
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.h.ServeHTTP(rec, req)
	}()
	pubCtx := <-started
	cancel() // what net/http does when the client disconnects
	errAtCancel := pubCtx.Err()
	close(release)
	<-done

	if errAtCancel != nil {
		t.Errorf("the publish's context ended with the client's request: %v", errAtCancel)
	}
	if rec.Code != http.StatusAccepted || len(f.pub.events) != 1 {
		t.Fatalf("answer %d %s, %d events published: want the publish to finish and a 202", rec.Code, rec.Body.String(), len(f.pub.events))
	}
	if _, err := f.records.Get(context.Background(), f.pub.events[0].ID); err != nil {
		t.Errorf("no accepted record for %s: %v", f.pub.events[0].ID, err)
	}
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(`
# HELP announcements_accepted_total Announcements durably published to the announcements topic.
# TYPE announcements_accepted_total counter
announcements_accepted_total{kind="users",source="rest"} 1
`), "announcements_accepted_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(f.reg, "announcements_publish_failed_total"); err != nil || n != 0 {
		t.Errorf("publish_failed counted %d series (%v), want none", n, err)
	}
}

// An event too large for the bus uses up no Idempotency-Key: nothing was
// announced, so the request trimmed to fit is taken under the same key.
func TestTooLargeLeavesTheIdempotencyKeyUnused(t *testing.T) {
	f := newStoreFixture(t)
	f.pub.maxBytes = 1024
	big := `{"usernames": ["alice", "` + strings.Repeat("b", 1000) + `", "` + strings.Repeat("c", 1000) + `"], "message": "` + goodMsg + `"}`
	small := `{"usernames": ["alice"], "message": "` + goodMsg + `"}`
	if r := do(t, f.h, "POST", RouteUsers, big, HeaderIdempotencyKey, "trim-1"); r.code != http.StatusRequestEntityTooLarge {
		t.Fatalf("an event over the bus limit: %d %s, want 413", r.code, r.raw)
	}
	first := do(t, f.h, "POST", RouteUsers, small, HeaderIdempotencyKey, "trim-1")
	if first.code != http.StatusAccepted || first.header.Get(HeaderReplayed) != "" {
		t.Fatalf("the trimmed request under the same key: %d %s, want a fresh 202", first.code, first.raw)
	}
	again := do(t, f.h, "POST", RouteUsers, small, HeaderIdempotencyKey, "trim-1")
	if again.code != http.StatusAccepted || again.body["id"] != first.body["id"] || len(f.pub.events) != 1 {
		t.Fatalf("its retry: %d %s, %d events published: want the first id, published once", again.code, again.raw, len(f.pub.events))
	}
	if r := do(t, f.h, "POST", RouteUsers, big, HeaderIdempotencyKey, "trim-1"); r.code != http.StatusRequestEntityTooLarge {
		t.Fatalf("the large request again: %d %s, want 413", r.code, r.raw)
	}
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(`
# HELP announcements_publish_failed_total Valid announcements that could not be published.
# TYPE announcements_publish_failed_total counter
announcements_publish_failed_total{reason="too_large",source="rest"} 2
`), "announcements_publish_failed_total"); err != nil {
		t.Error(err)
	}
}

// An accepted announcement whose record the request could not write (the
// store away a moment) has it written again in the background: its id
// answers GET and DELETE within seconds, not only once fanout, perhaps
// behind a backlog, starts on it.
func TestARecordTheRequestCouldNotWriteIsWrittenAgain(t *testing.T) {
	f := newStoreFixture(t)
	f.records.acceptFails = 3
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.svc.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	r := do(t, f.h, "POST", RouteUsers, `{"usernames": ["alice"], "message": "`+goodMsg+`"}`)
	if r.code != http.StatusAccepted {
		t.Fatalf("POST: %d %s", r.code, r.raw)
	}
	path := RouteAnnouncements + "/" + r.body["id"].(string)
	deadline := time.Now().Add(5 * time.Second)
	for do(t, f.h, "GET", path, "").code != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: never found, the record was not written again", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := do(t, f.h, "DELETE", path, ""); d.code != http.StatusOK {
		t.Fatalf("DELETE: %d %s", d.code, d.raw)
	}
	if err := testutil.GatherAndCompare(f.reg, strings.NewReader(`
# HELP progress_records_rewritten_total Progress records written again after the request's write failed, by outcome (written; given_up: the queue was full or the store stayed down for 2 minutes; fanout writes the record when it starts).
# TYPE progress_records_rewritten_total counter
progress_records_rewritten_total{outcome="given_up"} 0
progress_records_rewritten_total{outcome="written"} 1
`), "progress_records_rewritten_total"); err != nil {
		t.Error(err)
	}
}
