// Package debugserver serves /metrics, /healthz, /readyz and pprof on the debug port.
package debugserver

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check reports whether one dependency is reachable.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// Server is the debug listener of one service.
type Server struct {
	addr   string
	srv    *http.Server
	mu     sync.Mutex
	checks []Check
	ln     net.Listener
}

// New builds the server. gatherer is the service's own registry; checks decide /readyz.
func New(addr string, gatherer prometheus.Gatherer, pprofOn bool, checks ...Check) *Server {
	s := &Server{addr: addr, checks: checks}
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
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s
}

// AddCheck adds a readiness check after construction (e.g. once a pool exists).
func (s *Server) AddCheck(c Check) {
	s.mu.Lock()
	s.checks = append(s.checks, c)
	s.mu.Unlock()
}

// Listen binds the port now, so a taken port fails start-up instead of a running service.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.ln = ln
	return nil
}

// Addr is the bound address (after Listen).
func (s *Server) Addr() string {
	if s.ln == nil {
		return s.addr
	}
	return s.ln.Addr().String()
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	if s.ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		err := s.srv.Shutdown(sctx)
		<-errc
		return err
	}
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

// ErrNotReady is returned by checks whose dependency has not connected yet.
var ErrNotReady = errors.New("not ready")
