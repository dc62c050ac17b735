package commands

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/announcer/announcer/clients/cli/internal/apiclient"
)

// fakeAPI is the API document's control routes in memory: enough of the
// server to test the client's logic against, scripted per test.
type fakeAPI struct {
	t     *testing.T
	srv   *httptest.Server
	token string // required bearer token; "" = no auth

	mu       sync.Mutex
	anns     map[string]*apiclient.Announcement
	order    []string
	keys     map[string]keyed
	posts    []seenPost
	auths    []string
	deletes  int
	gets     int
	postFail []string // consumed one per POST: "503", "502" (a proxy's page), "400", "drop" or "" (answer normally)
	getFail  []string // consumed one per GET of one: "503", "404" or ""
	// script advances the newest announcement one step per GET; it waits at
	// hold (an index, -1 none) until release.
	script     []func(*apiclient.Announcement)
	hold       int
	released   bool
	firstGet   chan struct{}
	postBlock  bool          // POSTs wait until the client goes away
	cancelHang bool          // DELETEs wait until the client goes away
	hungCancel chan struct{} // one token per DELETE held by cancelHang
	postSeen   chan struct{}
	preview    apiclient.Audience
	preview504 bool
	// previewAs changes how a preview ended (state done unless it says otherwise).
	previewAs func(*apiclient.Announcement)
	// previewDelay is how long a preview's count takes, the dry run made
	// at once as the real server makes it.
	previewDelay time.Duration
}

type keyed struct {
	id   string
	body string
}

type seenPost struct {
	path, key string
	body      map[string]any
}

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func newFakeAPI(t *testing.T) *fakeAPI {
	f := &fakeAPI{
		t:        t,
		anns:     map[string]*apiclient.Announcement{},
		keys:     map[string]keyed{},
		hold:     -1,
		firstGet: make(chan struct{}),
		postSeen: make(chan struct{}, 16),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/announce/channel", f.announce)
	mux.HandleFunc("POST /v1/announce/users", f.announce)
	mux.HandleFunc("GET /v1/announcements", f.list)
	mux.HandleFunc("GET /v1/announcements/{id}", f.get)
	mux.HandleFunc("DELETE /v1/announcements/{id}", f.cancel)
	f.srv = httptest.NewServer(f.auth(mux))
	t.Cleanup(f.srv.Close)
	return f
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, status int, msg, field string) {
	body := map[string]string{"error": msg}
	if field != "" {
		body["field"] = field
	}
	writeJSON(w, status, body)
}

func (f *fakeAPI) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.auths = append(f.auths, r.Header.Get("Authorization"))
		token := f.token
		f.mu.Unlock()
		if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
			apiError(w, http.StatusUnauthorized, "missing or invalid bearer token", "")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (f *fakeAPI) announce(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		apiError(w, http.StatusBadRequest, "malformed JSON", "body")
		return
	}
	key := r.Header.Get("Idempotency-Key")
	f.mu.Lock()
	f.posts = append(f.posts, seenPost{path: r.URL.Path, key: key, body: body})
	fail := ""
	if len(f.postFail) > 0 {
		fail, f.postFail = f.postFail[0], f.postFail[1:]
	}
	block := f.postBlock
	f.mu.Unlock()
	f.postSeen <- struct{}{}

	switch fail {
	case "503":
		apiError(w, http.StatusServiceUnavailable, "kafka unavailable", "")
		return
	case "502":
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, "<html><body>502 Bad Gateway</body></html>")
		return
	case "400":
		apiError(w, http.StatusBadRequest, "message: not valid base64", "message")
		return
	case "drop":
		// The request arrived, the answer never does: the case the key is for.
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			_ = conn.Close()
		}
		return
	}
	if block {
		<-r.Context().Done()
		return
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if key != "" {
		if k, ok := f.keys[key]; ok {
			if k.body != string(raw) {
				apiError(w, http.StatusConflict, "Idempotency-Key reused with a different body", "Idempotency-Key")
				return
			}
			w.Header().Set("Idempotent-Replayed", "true")
			writeJSON(w, http.StatusAccepted, map[string]string{"id": k.id})
			return
		}
	}
	id := fmt.Sprintf("ann-%d", len(f.order)+1)
	a := &apiclient.Announcement{ID: id, State: apiclient.StateAccepted, Kind: apiclient.KindUsers, Source: "rest", Priority: "normal"}
	if c, ok := body["channel_id"]; ok {
		a.Kind = apiclient.KindChannel
		if n, ok := c.(float64); ok && n < 0 {
			a.Kind = apiclient.KindAllOnline
		} else {
			raw, _ := json.Marshal(c)
			var cid apiclient.ChannelID
			_ = json.Unmarshal(raw, &cid)
			a.ChannelID = &cid
		}
	}
	a.Times.Accepted = t0.Add(time.Duration(len(f.order)) * time.Minute)
	if body["dry_run"] == true {
		a.DryRun, a.State = true, apiclient.StateDone
		a.Audience = f.preview
		a.Times.Resolved, a.Times.Done = a.Times.Accepted, a.Times.Accepted
		if f.previewAs != nil {
			f.previewAs(a)
		}
		f.anns[id] = a
		f.order = append(f.order, id)
		status, answer := http.StatusOK, any(a)
		if f.preview504 {
			status, answer = http.StatusGatewayTimeout, map[string]string{"error": "preview did not finish in time", "id": id}
		}
		delay := f.previewDelay
		f.mu.Unlock()
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
		}
		f.mu.Lock()
		if r.Context().Err() == nil {
			writeJSON(w, status, answer)
		}
		return
	}
	f.anns[id] = a
	f.order = append(f.order, id)
	if key != "" {
		f.keys[key] = keyed{id: id, body: string(raw)}
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"id": id})
}

func (f *fakeAPI) get(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets++
	if f.gets == 1 {
		close(f.firstGet)
	}
	if len(f.getFail) > 0 {
		fail := f.getFail[0]
		f.getFail = f.getFail[1:]
		switch fail {
		case "503":
			apiError(w, http.StatusServiceUnavailable, "progress store unavailable", "")
			return
		case "404":
			apiError(w, http.StatusNotFound, "no announcement "+r.PathValue("id"), "id")
			return
		}
	}
	a, ok := f.anns[r.PathValue("id")]
	if !ok {
		apiError(w, http.StatusNotFound, "no announcement "+r.PathValue("id"), "id")
		return
	}
	if len(f.script) > 0 && !a.State.Terminal() && (f.hold != 0 || f.released) {
		f.script[0](a)
		f.script = f.script[1:]
		f.hold--
	}
	writeJSON(w, http.StatusOK, a)
}

func (f *fakeAPI) list(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	state := r.URL.Query().Get("state")
	limit := 20
	if s := r.URL.Query().Get("limit"); s != "" {
		limit, _ = strconv.Atoi(s)
	}
	out := []*apiclient.Announcement{}
	for _, id := range slices.Backward(f.order) {
		if a := f.anns[id]; (state == "" || string(a.State) == state) && len(out) < limit {
			out = append(out, a)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"announcements": out})
}

func (f *fakeAPI) cancel(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	hang := f.cancelHang
	f.mu.Unlock()
	if hang {
		f.hungCancel <- struct{}{}
		<-r.Context().Done()
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id := r.PathValue("id")
	a, ok := f.anns[id]
	switch {
	case !ok:
		apiError(w, http.StatusNotFound, "no announcement "+id, "id")
		return
	case a.State == apiclient.StateDone || a.State == apiclient.StateRejected || a.State == apiclient.StateFailed:
		apiError(w, http.StatusConflict, "announcement "+id+" is already "+string(a.State), "state")
		return
	}
	f.deletes++
	a.State, a.Reason = apiclient.StateCancelled, "cancelled by request"
	a.Times.Cancelled = a.Times.Accepted.Add(2 * time.Second)
	writeJSON(w, http.StatusOK, a)
}

// sendScript takes an announcement through resolving (size unknown) and
// sending to done: 500 recipients, 490 confirmed, 10 dead-lettered.
func sendScript() []func(*apiclient.Announcement) {
	return []func(*apiclient.Announcement){
		func(a *apiclient.Announcement) {
			a.State = apiclient.StateResolving
			a.Audience = apiclient.Audience{Members: 400, Online: 100, Recipients: 100}
			a.Times.Resolving = a.Times.Accepted.Add(100 * time.Millisecond)
		},
		func(a *apiclient.Announcement) {
			a.State = apiclient.StateSending
			a.Audience = apiclient.Audience{Members: 1000, Online: 500, Recipients: 500, PerNode: map[string]int64{"node1": 300, "node2": 200}}
			a.Batches = apiclient.Batches{Planned: 5, Emitted: 5}
			a.Stanzas = apiclient.Stanzas{Sent: 200, Confirmed: 100}
			a.Shards = apiclient.Shards{Total: 1, Done: 1}
			a.Times.Sending = a.Times.Accepted.Add(200 * time.Millisecond)
			a.Times.Resolved = a.Times.Accepted.Add(300 * time.Millisecond)
		},
		func(a *apiclient.Announcement) {
			a.Stanzas = apiclient.Stanzas{Sent: 400, Confirmed: 300, DeadLettered: 10}
			a.Batches.Done = 3
		},
		func(a *apiclient.Announcement) {
			a.State = apiclient.StateDone
			a.Stanzas = apiclient.Stanzas{Sent: 500, Confirmed: 490, DeadLettered: 10}
			a.Batches.Done, a.Batches.Resent = 5, 1
			a.Times.Done = a.Times.Accepted.Add(1500 * time.Millisecond)
		},
	}
}

func (f *fakeAPI) snapshot() (posts []seenPost, deletes int, auths []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.posts), f.deletes, slices.Clone(f.auths)
}

// syncBuffer is a bytes.Buffer a test reads while the run writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
