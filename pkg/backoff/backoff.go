// Package backoff is announcer's one retry policy: capped exponential backoff with
// jitter (github.com/cenkalti/backoff/v5 computes the delays), honouring the context.
//
// Transient failures of a dependency are waited out, never turned into "offline",
// "no members" or a dropped message: by default a retry goes on until ctx ends.
package backoff

import (
	"context"
	"time"

	cb "github.com/cenkalti/backoff/v5"
)

// Policy is one retry schedule. The zero value retries forever, from 50 ms doubling up to 10 s,
// each delay randomised by ±50 % so that workers failing together do not retry in lockstep.
type Policy struct {
	Initial  time.Duration // first delay
	Max      time.Duration // cap of one delay
	Attempts int           // tries in all; 0 = until ctx ends
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

// New returns the delay sequence for a hand-written loop: call NextBackOff after each
// failure and Reset after a success.
func (p Policy) New() *cb.ExponentialBackOff {
	p = p.withDefaults()
	b := cb.NewExponentialBackOff()
	b.InitialInterval = p.Initial
	b.MaxInterval = p.Max
	b.Multiplier = 2
	b.RandomizationFactor = 0.5
	b.Reset()
	return b
}

// Retry calls op until it succeeds, returns a Permanent error, the attempts are used up or
// ctx ends. onRetry (may be nil) sees every failure that will be retried, with its 1-based
// attempt number: the place to count it. It returns op's last error or ctx's error.
func Retry(ctx context.Context, p Policy, op func() error, onRetry func(err error, attempt int)) error {
	p = p.withDefaults()
	attempt := 0
	opts := []cb.RetryOption{
		cb.WithBackOff(p.New()),
		cb.WithMaxElapsedTime(0),
		cb.WithNotify(func(err error, _ time.Duration) {
			if onRetry != nil {
				onRetry(err, attempt)
			}
		}),
	}
	if p.Attempts > 0 {
		opts = append(opts, cb.WithMaxTries(uint(p.Attempts)))
	}
	_, err := cb.Retry(ctx, func() (struct{}, error) {
		attempt++
		return struct{}{}, op()
	}, opts...)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Permanent marks err as not worth retrying; Retry returns err itself.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return cb.Permanent(err)
}

// Sleep waits d or until ctx ends, whichever is first.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Delay returns the wait before retry number attempt (0 = the first retry), for loops
// that count their attempts themselves.
func (p Policy) Delay(attempt int) time.Duration {
	b := p.New()
	d := b.NextBackOff()
	for i := 0; i < min(attempt, 64); i++ {
		d = b.NextBackOff()
	}
	return d
}
