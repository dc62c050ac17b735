// Package debugserver serves /metrics, /healthz, /readyz and pprof on the debug port.
package debugserver

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/announcer/announcer/pkg/httpserver"
)

// Check reports whether one dependency is reachable.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// Server is the debug listener of one service.
type Server struct {
	*httpserver.Server
	mu     sync.Mutex
	checks []Check
}

// New builds the server. gatherer is the service's own registry; checks decide /readyz.
func New(addr string, gatherer prometheus.Gatherer, pprofOn bool, checks ...Check) *Server {
	s := &Server{checks: checks}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.ready)
	if pprofOn {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	s.Server = httpserver.New(addr, mux, 2*time.Second)
	return s
}

// AddCheck adds a readiness check after construction (e.g. once a pool exists).
func (s *Server) AddCheck(c Check) {
	s.mu.Lock()
	s.checks = append(s.checks, c)
	s.mu.Unlock()
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	checks := append([]Check(nil), s.checks...)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	type result struct {
		name string
		err  error
	}
	results := make(chan result, len(checks))
	for _, c := range checks {
		go func() { results <- result{c.Name, c.Fn(ctx)} }()
	}
	status := map[string]string{}
	code := http.StatusOK
	for range checks {
		res := <-results
		if res.err != nil {
			status[res.name] = res.err.Error()
			code = http.StatusServiceUnavailable
		} else {
			status[res.name] = "ok"
		}
	}
	writeJSON(w, code, map[string]any{"ready": code == http.StatusOK, "checks": status})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
