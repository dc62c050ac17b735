// Package httpserver runs an http.Server as a Run(ctx) part: the port is bound up front
// (a taken port fails start-up, not a running service) and ctx ending drains it gracefully.
package httpserver

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// Server is one listener and its handler.
type Server struct {
	addr     string
	srv      *http.Server
	ln       net.Listener
	shutdown time.Duration
}

// New builds a server for addr; shutdown bounds the wait for in-flight requests.
func New(addr string, h http.Handler, shutdown time.Duration) *Server {
	return &Server{
		addr: addr,
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       30 * time.Second,
			// Long enough for /debug/pprof/profile's default 30 s.
			WriteTimeout:   60 * time.Second,
			IdleTimeout:    2 * time.Minute,
			MaxHeaderBytes: 64 << 10,
		},
		shutdown: shutdown,
	}
}

// Listen binds the port now.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.ln = ln
	return nil
}

// Addr is the bound address (after Listen), else the configured one.
func (s *Server) Addr() string {
	if s.ln == nil {
		return s.addr
	}
	return s.ln.Addr().String()
}

// Run serves until ctx ends, then stops accepting and waits for in-flight requests.
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
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.shutdown)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

// Close releases the port when Run is never called (a later start-up step failed).
func (s *Server) Close() error {
	if s.ln == nil {
		return nil
	}
	if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
