package backoff

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStepGrowsWithJitterUpToMax(t *testing.T) {
	p := Policy{Initial: 10 * time.Millisecond, Max: 80 * time.Millisecond}
	for n, ceil := range map[int]time.Duration{1: 10, 2: 20, 3: 40, 4: 80, 5: 80, 60: 80} {
		ceil *= time.Millisecond
		lo, hi := ceil, time.Duration(0)
		for range 2000 {
			d := p.Step(n)
			lo, hi = min(lo, d), max(hi, d)
		}
		if lo < ceil/10 || hi > ceil {
			t.Errorf("step %d: [%s, %s] outside [%s, %s]", n, lo, hi, ceil/10, ceil)
		}
		if hi-lo < ceil/4 {
			t.Errorf("step %d: [%s, %s]: no jitter", n, lo, hi)
		}
	}
}

func TestRetryUntilSuccess(t *testing.T) {
	calls, retried := 0, 0
	err := Retry(context.Background(), Policy{Initial: time.Microsecond}, func() error {
		calls++
		if calls < 4 {
			return errors.New("down")
		}
		return nil
	}, func(error, int) { retried++ })
	if err != nil || calls != 4 || retried != 3 {
		t.Fatalf("err %v after %d calls, %d retries", err, calls, retried)
	}
}

func TestRetryStopsOnPermanentAttemptsAndContext(t *testing.T) {
	base := errors.New("no such channel")
	calls := 0
	err := Retry(context.Background(), Policy{Initial: time.Microsecond}, func() error { calls++; return Permanent(base) }, nil)
	if err != base || calls != 1 {
		t.Fatalf("permanent: %v after %d calls", err, calls)
	}

	calls = 0
	down := errors.New("down")
	err = Retry(context.Background(), Policy{Initial: time.Microsecond, Attempts: 3}, func() error { calls++; return down }, nil)
	if err != down || calls != 3 {
		t.Fatalf("attempts: %v after %d calls", err, calls)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = Retry(ctx, Policy{Initial: 10 * time.Second}, func() error { return down }, nil)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("ctx: %v after %s", err, time.Since(start))
	}
	if Permanent(nil) != nil {
		t.Fatal("Permanent(nil) != nil")
	}
}
