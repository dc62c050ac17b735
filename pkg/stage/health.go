package stage

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/metric"
)

// Kafka operations whose failures are counted and reported.
const (
	opFetch      = "fetch"
	opCommit     = "commit"
	opDeadLetter = "dead_letter"
)

type consumerMetrics struct {
	fetched, handled, refetched, duplicates, retries, commits prometheus.Counter
	dials                                                     prometheus.Counter
	deadLetters                                               *prometheus.CounterVec // reason
	kafkaErrors                                               *prometheus.CounterVec // op
	outages                                                   prometheus.Counter
	outageSeconds                                             prometheus.Counter
	inFlight                                                  *prometheus.GaugeVec // topic, partition
	lag                                                       *prometheus.GaugeVec // topic, partition
}

func newConsumerMetrics(reg prometheus.Registerer) *consumerMetrics {
	s := metric.Must(reg)
	m := &consumerMetrics{
		fetched:       s.Counter("messages_fetched_total", "Kafka records fetched."),
		handled:       s.Counter("messages_handled_total", "Kafka records handled successfully (dead letters not included)."),
		refetched:     s.Counter("messages_refetched_total", "Records fetched again while this process had them in hand (after a rebalance); not handled twice."),
		duplicates:    s.Counter("duplicates_skipped_total", "Identical copies of records already handled (a producer's retried write); not handled twice."),
		retries:       s.Counter("handler_retries_total", "Handler attempts that failed and were retried."),
		commits:       s.Counter("commits_total", "Offset commits."),
		deadLetters:   s.CounterVec("dead_letters_total", "Records written to the dead-letter topic, by reason.", "reason"),
		kafkaErrors:   s.CounterVec("kafka_errors_total", "Failed Kafka operations (retried with backoff), by operation.", "op"),
		dials:         s.Counter("kafka_dials_total", "Connections the reader opened to brokers: one per partition read when all is well; more while no operation fails means the broker closed them or answered fetches a second late."),
		outages:       s.Counter("kafka_outages_total", "Times a Kafka operation started failing after having worked."),
		outageSeconds: s.Counter("kafka_outage_seconds_total", "Time during which a Kafka operation kept failing."),
		inFlight:      s.GaugeVec("in_flight", "Records fetched and not committed yet (being handled or waiting for their commit), by partition.", "topic", "partition"),
		lag:           s.GaugeVec("consumer_lag", "Records of the partition the consumer group has not committed yet (log end minus committed offset), refreshed every [monitoring] buffer_report_duration.", "topic", "partition"),
	}
	metric.Zero(m.kafkaErrors, opFetch, opCommit, opDeadLetter)
	return m
}

// health remembers which Kafka operations are failing, since when and why,
// for readiness, the outage metrics and one log line per transition.
type health struct {
	m   *consumerMetrics
	log zerolog.Logger

	mu      sync.Mutex
	failing map[string]failure
}

type failure struct {
	since, last time.Time
	err         error
}

func newHealth(m *consumerMetrics, log zerolog.Logger) *health {
	return &health{m: m, log: log, failing: map[string]failure{}}
}

func (h *health) failed(op string, err error) {
	h.m.kafkaErrors.WithLabelValues(op).Inc()
	h.mu.Lock()
	defer h.mu.Unlock()
	f, was := h.failing[op]
	if !was {
		f.since = time.Now()
		h.m.outages.Inc()
		h.log.Warn().Err(err).Str("op", op).Msg("kafka: failing; retrying with backoff until it works again")
	}
	f.err, f.last = err, time.Now()
	h.failing[op] = f
}

// quietFor ends op's outage when it last failed at least quiet ago. An idle
// consumer's fetch never succeeds visibly (it waits for a record), so the
// depth reporter, which just reached the broker and the group, calls this.
func (h *health) quietFor(op string, quiet time.Duration) {
	h.mu.Lock()
	f, was := h.failing[op]
	h.mu.Unlock()
	if was && time.Since(f.last) >= quiet {
		h.ok(op)
	}
}

func (h *health) ok(op string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f, was := h.failing[op]
	if !was {
		return
	}
	delete(h.failing, op)
	d := time.Since(f.since)
	h.m.outageSeconds.Add(d.Seconds())
	h.log.Warn().Str("op", op).Dur("after", d).Msg("kafka: working again")
}

// err names the failing operations, or is nil.
func (h *health) err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for op, f := range h.failing {
		return fmt.Errorf("%s failing for %s: %w", op, time.Since(f.since).Round(time.Second), f.err)
	}
	return nil
}

// clear forgets every failure without calling it recovered: a new run
// starts, and what still fails fails again at once.
func (h *health) clear() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for op, f := range h.failing {
		h.m.outageSeconds.Add(time.Since(f.since).Seconds())
		delete(h.failing, op)
	}
}
