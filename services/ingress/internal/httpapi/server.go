package httpapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// Server serves the API as one lifecycle part.
type Server struct {
	addr            string
	srv             *http.Server
	ln              net.Listener
	shutdownTimeout time.Duration
}

// NewServer wraps h. shutdownTimeout bounds the drain of in-flight requests.
func NewServer(addr string, h http.Handler, shutdownTimeout time.Duration) *Server {
	return &Server{
		addr: addr,
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      60 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
		},
		shutdownTimeout: shutdownTimeout,
	}
}

// Listen binds the port now, so a taken port fails start-up rather than a running service.
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

// Run serves until ctx ends, then stops accepting and waits for in-flight
// requests, each of which still gets its 202 or 503.
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
	sctx, cancel := context.WithTimeout(context.Background(), s.shutdownTimeout)
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
	return s.ln.Close()
}
