package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestRetryUntilSuccess(t *testing.T) {
	calls, retried := 0, []int{}
	err := Retry(context.Background(), Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond}, func() error {
		calls++
		if calls < 4 {
			return errors.New("transient")
		}
		return nil
	}, func(_ error, attempt int) { retried = append(retried, attempt) })
	if err != nil || calls != 4 {
		t.Fatalf("err=%v calls=%d", err, calls)
	}
	if len(retried) != 3 || retried[0] != 1 || retried[2] != 3 {
		t.Fatalf("onRetry attempts %v, want [1 2 3]", retried)
	}
}

func TestRetryStopsOnPermanentAttemptsAndContext(t *testing.T) {
	fatal := errors.New("fatal")
	calls := 0
	err := Retry(context.Background(), Policy{Initial: time.Millisecond}, func() error { calls++; return Permanent(fatal) }, nil)
	if !errors.Is(err, fatal) || calls != 1 {
		t.Fatalf("permanent: err=%v calls=%d", err, calls)
	}

	calls = 0
	transient := errors.New("transient")
	err = Retry(context.Background(), Policy{Initial: time.Millisecond, Attempts: 3}, func() error { calls++; return transient }, nil)
	if !errors.Is(err, transient) || calls != 3 {
		t.Fatalf("attempts: err=%v calls=%d", err, calls)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err = Retry(ctx, Policy{Initial: 5 * time.Millisecond}, func() error { return transient }, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ctx: err=%v", err)
	}
}

func TestDelaysAreCappedAndJittered(t *testing.T) {
	b := Policy{Initial: 10 * time.Millisecond, Max: 80 * time.Millisecond}.New()
	seen := map[time.Duration]bool{}
	for i := 0; i < 50; i++ {
		d := b.NextBackOff()
		if d <= 0 || d > 120*time.Millisecond { // Max plus the ±50 % jitter
			t.Fatalf("delay %v out of range", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Fatalf("delays are not jittered: %v", seen)
	}
}

func TestSleepHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
}

func TestDelayGrowsToTheCap(t *testing.T) {
	p := Policy{Initial: 10 * time.Millisecond, Max: 40 * time.Millisecond}
	if d := p.Delay(0); d < 5*time.Millisecond || d > 15*time.Millisecond {
		t.Fatalf("first delay %v, want 10ms ±50%%", d)
	}
	if d := p.Delay(1000); d < 20*time.Millisecond || d > 60*time.Millisecond {
		t.Fatalf("late delay %v, want the 40ms cap ±50%%", d)
	}
}
