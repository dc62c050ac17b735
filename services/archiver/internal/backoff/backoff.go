// Package backoff provides exponential retry delays with jitter that honour a context.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy doubles the delay from Min up to Max; each delay is drawn from [d/2, d]
// so that many clients failing together do not retry in lockstep.
type Policy struct {
	Min, Max time.Duration
}

// Delay returns the wait before retry number attempt (0 = first retry).
func (p Policy) Delay(attempt int) time.Duration {
	lo, hi := p.Min, p.Max
	if lo <= 0 {
		lo = 100 * time.Millisecond
	}
	if hi < lo {
		hi = lo
	}
	d := lo
	for i := 0; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	half := d / 2
	return half + rand.N(d-half+1)
}

// Sleep waits d or until ctx ends, whichever is first.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
