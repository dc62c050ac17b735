package lifecycle

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// recorder notes the order in which parts stop.
type recorder struct {
	mu    sync.Mutex
	order []string
}

func (r *recorder) part(name string, hold time.Duration) Part {
	return Part{Name: name, Run: func(ctx context.Context) error {
		<-ctx.Done()
		time.Sleep(hold)
		r.mu.Lock()
		r.order = append(r.order, name)
		r.mu.Unlock()
		return nil
	}}
}

func TestShutdownStopsUpstreamFirst(t *testing.T) {
	var r recorder
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		// The intake holds on a bit while draining: downstream must still wait for it.
		done <- Run(ctx, zerolog.Nop(), 5*time.Second,
			[]Part{r.part("http", 50*time.Millisecond)},
			[]Part{r.part("writer", 0)})
	}()
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.order, ","); got != "http,writer" {
		t.Fatalf("stop order %s, want http,writer", got)
	}
}

func TestFailingPartStopsEverything(t *testing.T) {
	var r recorder
	boom := errors.New("boom")
	err := Run(context.Background(), zerolog.Nop(), 5*time.Second,
		[]Part{{Name: "consumer", Run: func(context.Context) error { return boom }}, r.part("http", 0)},
		[]Part{r.part("writer", 0)})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "consumer") {
		t.Fatalf("err = %v, want the part's error named", err)
	}
	if len(r.order) != 2 {
		t.Fatalf("stopped %v, want both other parts", r.order)
	}
}

func TestShutdownTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Run(ctx, zerolog.Nop(), 50*time.Millisecond,
		[]Part{{Name: "stuck", Run: func(context.Context) error { <-release; return nil }}})
	if err == nil || !strings.Contains(err.Error(), "did not stop") {
		t.Fatalf("err = %v, want a shutdown timeout", err)
	}
}
