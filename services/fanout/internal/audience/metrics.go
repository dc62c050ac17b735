package audience

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/announcer/announcer/pkg/metric"
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
	s := metric.New(reg)
	m := &metrics{
		audience:   s.CounterVec("audience_total", "Members read, users listed or online users scanned, by event kind.", "kind"),
		recipients: s.CounterVec("recipients_total", "Recipients put in delivery batches (the online ones for channels), by event kind.", "kind"),
		taskSize: s.HistogramVec("task_audience", "Audience size of one task (announcement or shard).",
			prometheus.ExponentialBuckets(1, 10, 8), "kind"),
		batches:        s.CounterVec("batches_total", "Delivery batches acknowledged by Kafka, by node.", "node"),
		perNode:        s.CounterVec("node_recipients_total", "Recipients routed to each node.", "node"),
		hashed:         s.Counter("hash_routed_total", "Recipients whose presence named no configured node, routed by hash of the username."),
		skipped:        s.Counter("skipped_empty_usernames_total", "Empty usernames skipped (they can never form a JID)."),
		shards:         s.Counter("shard_tasks_total", "Shard tasks queued for giant channels."),
		rejected:       s.CounterVec("rejected_total", "Announcements finished without recipients, by reason.", "reason"),
		progressErrors: s.Counter("progress_errors_total", "Tasks whose start or shard count could not be recorded in the progress store (they went on)."),
		retries:        s.CounterVec("retries_total", "Transient dependency failures that were retried.", "dependency"),
		duration: s.HistogramVec("task_seconds", "Time to resolve one task until its output was acknowledged.",
			prometheus.ExponentialBuckets(0.001, 4, 10), "kind", "outcome"),
		age: s.HistogramVec("announcement_age_seconds", "Time from the announcement's acceptance to the end of one of its tasks (for shards, the last one is the announcement's completion).",
			prometheus.ExponentialBuckets(0.01, 3, 10), "kind"),
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	// Pre-create the series so dashboards see zeros instead of gaps.
	metric.Zero(m.batches, nodes...)
	metric.Zero(m.perNode, nodes...)
	metric.Zero(m.rejected, ReasonChannelNotFound, ReasonChannelNotAccepted, ReasonScanUnsupported, ReasonUnknownKind)
	metric.Zero(m.retries, depMySQL, depPresence, depKafka)
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
	// A copy skipped or a task cut short by a cancel is no task's size.
	if res.Outcome != Duplicate && res.Outcome != Cancelled {
		m.taskSize.WithLabelValues(kind).Observe(float64(res.Audience))
	}
}
