package metric

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestSetRegistersWhatItMakes(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := New(reg)
	c := s.Counter("c_total", "A counter.")
	v := s.CounterVec("v_total", "A counter by op.", "op")
	g := s.GaugeVec("g", "A gauge by topic and partition.", "topic", "partition")
	s.GaugeFunc("f", "A gauge func.", func() float64 { return 7 })
	h := s.HistogramVec("h_seconds", "A histogram by kind.", []float64{1, 2}, "kind")
	s.Gauge("up", "A gauge.").Set(1)
	s.Histogram("latency_seconds", "A histogram.", LatencyBuckets()).Observe(0.003)
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	c.Inc()
	Zero(v, "fetch", "commit")
	g.WithLabelValues("t", "0").Set(3)
	h.WithLabelValues("k").Observe(1.5)
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 8 {
		t.Fatalf("gathered %d series (%v), want 8", n, err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP v_total A counter by op.
# TYPE v_total counter
v_total{op="commit"} 0
v_total{op="fetch"} 0
`), "v_total"); err != nil {
		t.Fatal(err)
	}
}

func TestSetKeepsTheFirstError(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := New(reg)
	s.Counter("dup_total", "First.")
	s.Counter("dup_total", "Second.")
	if s.Err() == nil {
		t.Fatal("registering a name twice: no error")
	}
	s.Counter("after_total", "Made after the error: not registered.")
	if n, _ := testutil.GatherAndCount(reg, "after_total"); n != 0 {
		t.Fatalf("a metric made after the error was registered")
	}
}

func TestMustPanics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := Must(reg)
	s.Counter("dup_total", "First.")
	defer func() {
		if recover() == nil {
			t.Fatal("Must: registering a name twice did not panic")
		}
	}()
	s.Counter("dup_total", "Second.")
}
