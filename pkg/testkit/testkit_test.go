package testkit

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestFreeAddrIsFree(t *testing.T) {
	addr := FreeAddr(t)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("FreeAddr gave %s, which cannot be listened on: %v", addr, err)
	}
	_ = ln.Close()
}

func TestFreeAddrNeverRepeats(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		addr := FreeAddr(t)
		if seen[addr] {
			t.Fatalf("FreeAddr gave %s twice", addr)
		}
		seen[addr] = true
	}
}

type fakeListener struct {
	net.Listener
	addr   string
	closed bool
}

func (l *fakeListener) Addr() net.Addr { return fakeAddr(l.addr) }
func (l *fakeListener) Close() error   { l.closed = true; return nil }

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

// A port the kernel offers again is skipped, and held until a new one comes.
func TestNewAddrSkipsPortsHandedOut(t *testing.T) {
	var opened []*fakeListener
	var offers []string
	heldAtLastOffer := 0
	listen := func() (net.Listener, error) {
		heldAtLastOffer = 0
		for _, o := range opened {
			if !o.closed {
				heldAtLastOffer++
			}
		}
		l := &fakeListener{addr: offers[0]}
		offers = offers[1:]
		opened = append(opened, l)
		return l, nil
	}
	seen := map[string]bool{}
	offers = []string{"127.0.0.1:1001"}
	if a, err := newAddr(listen, seen); err != nil || a != "127.0.0.1:1001" {
		t.Fatalf("first: %q, %v", a, err)
	}
	offers = []string{"127.0.0.1:1001", "127.0.0.1:1001", "127.0.0.1:1002"}
	if a, err := newAddr(listen, seen); err != nil || a != "127.0.0.1:1002" {
		t.Fatalf("second: %q, %v", a, err)
	}
	if heldAtLastOffer != 2 {
		t.Errorf("%d listeners of ports handed out before were open when a new port was asked for, want 2", heldAtLastOffer)
	}
	for _, l := range opened {
		if !l.closed {
			t.Errorf("listener %s left open", l.addr)
		}
	}
}

func TestEventuallyWaitsForTheCondition(t *testing.T) {
	start := time.Now()
	Eventually(t, 5*time.Second, "50 ms to pass", func() bool { return time.Since(start) > 50*time.Millisecond })
	if time.Since(start) < 50*time.Millisecond {
		t.Fatal("returned before the condition held")
	}
}

// fatalRecorder records Fatalf instead of stopping the test.
type fatalRecorder struct {
	testing.TB
	failed bool
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(string, ...any) { f.failed = true }

func TestEventuallyFailsAfterTheTimeout(t *testing.T) {
	r := &fatalRecorder{TB: t}
	calls := 0
	Eventually(r, 60*time.Millisecond, "never", func() bool {
		calls++
		return r.failed // stops the loop once Fatalf was recorded
	})
	if !r.failed || calls < 2 {
		t.Fatalf("failed %v after %d polls", r.failed, calls)
	}
}

func TestSumMetricAddsTheMatchingSamples(t *testing.T) {
	text := "# HELP a_total x\n# TYPE a_total counter\n" +
		"a_total{node=\"n1\",reason=\"x\"} 2\na_total{node=\"n2\",reason=\"x\"} 3\na_total_other 100\na_total 4\n"
	if got := SumMetric(text, "a_total"); got != 9 {
		t.Fatalf("sum of a_total = %v, want 9", got)
	}
	if got := SumMetric(text, "a_total", `node="n2"`); got != 3 {
		t.Fatalf("sum of a_total on n2 = %v, want 3", got)
	}
}

func TestGatheredAddsTheMatchingSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "c"}, []string{"node", "reason"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g", Help: "g"})
	reg.MustRegister(c, g)
	c.WithLabelValues("n1", "x").Add(2)
	c.WithLabelValues("n2", "x").Add(3)
	c.WithLabelValues("n2", "y").Add(5)
	g.Set(7)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"c_total", nil, 10},
		{"c_total", []string{"n2"}, 8},
		{"c_total", []string{"n2", "x"}, 3},
		{"c_total", []string{"n3"}, 0},
		{"g", nil, 7},
	} {
		if got := Gathered(t, reg, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s %v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}

func TestStartWaitsForTheServiceAndStopsIt(t *testing.T) {
	ran := make(chan struct{})
	got, stop := Start(t, "service", func(ctx context.Context, started func(string)) error {
		defer close(ran)
		started("up")
		<-ctx.Done()
		return errors.New("stopped")
	})
	if got != "up" {
		t.Fatalf("started with %q", got)
	}
	if err := stop(); err == nil || err.Error() != "stopped" {
		t.Fatalf("stop: %v", err)
	}
	if err := stop(); err == nil || err.Error() != "stopped" {
		t.Fatalf("second stop: %v", err)
	}
	<-ran
}

func TestStartFailsForAServiceThatEndsFirst(t *testing.T) {
	r := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() { // Fatalf is recorded, not a Goexit: Start returns
		defer close(done)
		Start(r, "service", func(context.Context, func(int)) error { return errors.New("no config") })
	}()
	<-done
	if !r.failed {
		t.Fatal("a service that ended before it started did not fail the test")
	}
}

func TestBackgroundRunsUntilTheTestEnds(t *testing.T) {
	var stopped atomic.Bool
	t.Run("inner", func(t *testing.T) {
		Background(t, "loop", func(ctx context.Context) error {
			<-ctx.Done()
			stopped.Store(true)
			return nil
		})
	})
	if !stopped.Load() {
		t.Fatal("the background function was not stopped and waited for at the end of the test")
	}
}
