package audience

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Dependencies named in the retry metric.
const (
	depMySQL    = "mysql"
	depPresence = "presence"
	depKafka    = "kafka"
)

type metrics struct {
	audience       *prometheus.CounterVec   // kind
	recipients     *prometheus.CounterVec   // kind
	taskSize       *prometheus.HistogramVec // kind
	batches        *prometheus.CounterVec   // node
	perNode        *prometheus.CounterVec   // node
	hashed         prometheus.Counter
	skipped        prometheus.Counter
	shards         prometheus.Counter
	rejected       *prometheus.CounterVec // reason
	retries        *prometheus.CounterVec // dependency
	progressErrors prometheus.Counter
	duration       *prometheus.HistogramVec // kind, outcome
	age            *prometheus.HistogramVec // kind
}

func newMetrics(reg prometheus.Registerer, nodes []string) (*metrics, error) {
	m := &metrics{
		audience: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "audience_total", Help: "Members read, users listed or online users scanned, by event kind.",
		}, []string{"kind"}),
		recipients: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "recipients_total", Help: "Recipients put in delivery batches (the online ones for channels), by event kind.",
		}, []string{"kind"}),
		taskSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "task_audience", Help: "Audience size of one task (announcement or shard).",
			Buckets: prometheus.ExponentialBuckets(1, 10, 8),
		}, []string{"kind"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "batches_total", Help: "Delivery batches acknowledged by Kafka, by node.",
		}, []string{"node"}),
		perNode: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "node_recipients_total", Help: "Recipients routed to each node.",
		}, []string{"node"}),
		hashed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hash_routed_total", Help: "Recipients whose presence named no configured node, routed by hash of the username.",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "skipped_empty_usernames_total", Help: "Empty usernames skipped (they can never form a JID).",
		}),
		shards: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shard_tasks_total", Help: "Shard tasks queued for giant channels.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rejected_total", Help: "Announcements finished without recipients, by reason.",
		}, []string{"reason"}),
		progressErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "progress_errors_total", Help: "Tasks whose start or shard count could not be recorded in the progress store (they went on).",
		}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "retries_total", Help: "Transient dependency failures that were retried.",
		}, []string{"dependency"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "task_seconds", Help: "Time to resolve one task until its output was acknowledged.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"kind", "outcome"}),
		age: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "announcement_age_seconds", Help: "Time from the announcement's acceptance to the end of one of its tasks (for shards, the last one is the announcement's completion).",
			Buckets: prometheus.ExponentialBuckets(0.01, 3, 10),
		}, []string{"kind"}),
	}
	for _, c := range []prometheus.Collector{m.audience, m.recipients, m.taskSize, m.batches, m.perNode, m.hashed,
		m.skipped, m.shards, m.rejected, m.retries, m.duration, m.age, m.progressErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Pre-create the series so dashboards see zeros instead of gaps.
	for _, n := range nodes {
		m.batches.WithLabelValues(n)
		m.perNode.WithLabelValues(n)
	}
	for _, r := range []string{ReasonChannelNotFound, ReasonChannelNotAccepted, ReasonScanUnsupported, ReasonUnknownKind} {
		m.rejected.WithLabelValues(r)
	}
	for _, d := range []string{depMySQL, depPresence, depKafka} {
		m.retries.WithLabelValues(d)
	}
	return m, nil
}

func (m *metrics) observe(kind string, res Result, took time.Duration, created time.Time) {
	m.duration.WithLabelValues(kind, string(res.Outcome)).Observe(took.Seconds())
	if res.Outcome == Rejected {
		m.rejected.WithLabelValues(res.Reason).Inc()
		return
	}
	if !created.IsZero() {
		m.age.WithLabelValues(kind).Observe(time.Since(created).Seconds())
	}
	if res.Outcome == Split {
		m.shards.Add(float64(res.Shards))
		return
	}
	m.audience.WithLabelValues(kind).Add(float64(res.Audience))
	m.recipients.WithLabelValues(kind).Add(float64(res.Recipients))
	m.taskSize.WithLabelValues(kind).Observe(float64(res.Audience))
}
