// Package metric declares the Prometheus metrics of announcer packages one
// way: a bare name (the service's registerer adds announcer_<service>_ and its
// constant labels), a help text, the label names, and registration where the
// metric is made, so no metric is declared and then left unregistered.
package metric

import "github.com/prometheus/client_golang/prometheus"

// Set makes metrics and registers each on one registerer as it makes it.
type Set struct {
	reg  prometheus.Registerer
	must bool
	err  error
}

// New returns a Set that keeps the first registration error for Err; the
// metrics made after it are not registered.
func New(reg prometheus.Registerer) *Set { return &Set{reg: reg} }

// Must returns a Set that panics when a registration fails, as
// prometheus.Registerer's MustRegister does.
func Must(reg prometheus.Registerer) *Set { return &Set{reg: reg, must: true} }

// Err is the first registration error, or nil.
func (s *Set) Err() error { return s.err }

// Counter is a counter without labels.
func (s *Set) Counter(name, help string) prometheus.Counter {
	return register(s, prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help}))
}

// CounterVec is a counter by labels.
func (s *Set) CounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return register(s, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels))
}

// Gauge is a gauge without labels.
func (s *Set) Gauge(name, help string) prometheus.Gauge {
	return register(s, prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help}))
}

// GaugeVec is a gauge by labels.
func (s *Set) GaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return register(s, prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels))
}

// GaugeFunc is a gauge whose value fn reports at each scrape.
func (s *Set) GaugeFunc(name, help string, fn func() float64) prometheus.GaugeFunc {
	return register(s, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, fn))
}

// Histogram is a histogram without labels.
func (s *Set) Histogram(name, help string, buckets []float64) prometheus.Histogram {
	return register(s, prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}))
}

// HistogramVec is a histogram by labels.
func (s *Set) HistogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return register(s, prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels))
}

// LatencyBuckets are the buckets of a request's latency, 1 ms to 10 s.
func LatencyBuckets() []float64 {
	return []float64{.001, .002, .004, .008, .016, .032, .064, .128, .256, .512, 1, 2, 5, 10}
}

// Zero creates the series of values of a one-label vector, so dashboards
// see zeros instead of gaps before the first event.
func Zero(v *prometheus.CounterVec, values ...string) {
	for _, value := range values {
		v.WithLabelValues(value)
	}
}

func register[C prometheus.Collector](s *Set, c C) C {
	if s.err != nil {
		return c
	}
	if err := s.reg.Register(c); err != nil {
		if s.must {
			panic(err)
		}
		s.err = err
	}
	return c
}
