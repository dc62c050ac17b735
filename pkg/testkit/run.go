package testkit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// Log is a logger that writes into the test's own output (shown when the
// test fails or with -v), at level and above.
func Log(t testing.TB, level zerolog.Level) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(level)
}

// Background runs run in a goroutine until the test ends: then its context
// is cancelled, the test waits for it to return, and an error it returns
// fails the test.
func Background(t testing.TB, what string, run func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
}

// Start runs a service in-process as its binary runs it, until the test ends
// (or the returned stop is called), and returns what the service handed its
// started hook (its runtime, its bound addresses) once it did. A service that
// returns before it started, or does not start in 40 s, fails the test.
// stop cancels the service's context and returns what run returned, or an
// error if it did not return within 30 s; it may be called more than once.
func Start[T any](t testing.TB, what string, run func(ctx context.Context, started func(T)) error) (T, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	startc := make(chan T, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, func(v T) {
			select {
			case startc <- v:
			default: // only the first is waited for
			}
		})
	}()
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-errc:
			case <-time.After(30 * time.Second):
				stopErr = errors.New(what + " did not stop within 30 s")
			}
		})
		return stopErr
	}
	var v T
	select {
	case v = <-startc:
	case err := <-errc:
		errc <- err // what stop returns
		cancel()
		t.Fatalf("%s did not start: %v", what, err)
	case <-time.After(40 * time.Second):
		cancel()
		t.Fatalf("%s did not start in 40 s", what)
	}
	t.Cleanup(func() { _ = stop() })
	return v, stop
}
