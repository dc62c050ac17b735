// Package backoff retries transient failures with capped exponential backoff
// and full jitter, honouring the context.
//
// Fanout never turns a failing dependency into "offline" or "no members": it
// waits instead, and the Kafka partition waits with it.
package backoff

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// Policy is one retry schedule. The zero value retries forever, 50 ms doubling up to 10 s.
type Policy struct {
	Initial time.Duration // first step's upper bound
	Max     time.Duration // cap of one step
	// Attempts bounds the tries (0 = until ctx ends).
	Attempts int
}

func (p Policy) withDefaults() Policy {
	if p.Initial <= 0 {
		p.Initial = 50 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 10 * time.Second
	}
	if p.Max < p.Initial {
		p.Max = p.Initial
	}
	return p
}

// Step returns the wait before retry number n (1-based): full jitter over
// [0, min(Max, Initial·2^(n-1))], so retrying workers do not move in lockstep.
func (p Policy) Step(n int) time.Duration {
	p = p.withDefaults()
	ceil := p.Initial
	for i := 1; i < n && ceil < p.Max; i++ {
		ceil *= 2
	}
	ceil = min(ceil, p.Max)
	// Keep a floor of a tenth so a string of tiny draws cannot hammer a dependency.
	floor := ceil / 10
	return floor + rand.N(ceil-floor+1)
}

// Retry calls op until it succeeds, op's error is permanent (see Permanent),
// the attempts are used up or ctx ends. onRetry (may be nil) sees every failure
// that will be retried: the place to count it. It returns op's last error, or
// ctx's error when ctx ended first.
func Retry(ctx context.Context, p Policy, op func() error, onRetry func(err error, attempt int)) error {
	p = p.withDefaults()
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var pe permanent
		if errors.As(err, &pe) {
			return pe.err
		}
		if p.Attempts > 0 && attempt >= p.Attempts {
			return err
		}
		if onRetry != nil {
			onRetry(err, attempt)
		}
		t := time.NewTimer(p.Step(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent marks err as not worth retrying; Retry returns err itself.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}
