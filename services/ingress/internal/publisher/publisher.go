// Package publisher is the Kafka adapter of the ingress: it writes
// announcement events to the announcements topic and bad Kafka input to the
// dead-letter topic, both with acks=all, on one shared batching writer.
package publisher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/services/ingress/internal/announce"
)

// HeaderTruncated marks a dead letter whose value was cut to fit the bus (kafkabus.DeadLetter);
// its value is the original size in bytes.
const HeaderTruncated = kafkabus.HeaderTruncated

// recordOverhead is room left for the key, headers and record framing when
// checking a value against the bus's message size limit.
const recordOverhead = kafkabus.RecordOverhead

// Options name the topics and the bus's message size limit.
type Options struct {
	AnnouncementsTopic string
	DeadLetterTopic    string
	MaxMessageBytes    int
}

// Kafka publishes on w. Many goroutines may call it at once: concurrent
// writes share the writer's batches, which is what makes the REST path fast.
type Kafka struct {
	w   *kafka.Writer
	opt Options

	latency *prometheus.HistogramVec // topic kind: announcements | dead_letter
	errs    *prometheus.CounterVec
}

// New returns the adapter; w must be a kafkabus writer (acks=all, topic per message).
func New(w *kafka.Writer, opt Options, reg prometheus.Registerer) (*Kafka, error) {
	if opt.AnnouncementsTopic == "" || opt.DeadLetterTopic == "" {
		return nil, errors.New("publisher: topic names must not be empty")
	}
	if opt.MaxMessageBytes <= recordOverhead {
		return nil, fmt.Errorf("publisher: max message bytes %d: want > %d", opt.MaxMessageBytes, recordOverhead)
	}
	k := &Kafka{
		w:   w,
		opt: opt,
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ingress_publish_duration_seconds",
			Help:    "Time from handing a record to the writer until Kafka acknowledged it (acks=all), successes only.",
			Buckets: []float64{.001, .002, .004, .008, .016, .032, .064, .128, .256, .512, 1, 2, 5, 10},
		}, []string{"topic"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingress_publish_errors_total",
			Help: "Records the writer failed to get acknowledged.",
		}, []string{"topic"}),
	}
	for _, c := range []prometheus.Collector{k.latency, k.errs} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("publisher: metrics: %w", err)
		}
	}
	return k, nil
}

var _ announce.Publisher = (*Kafka)(nil)

// Publish writes e to the announcements topic keyed by its id and returns once
// it is acknowledged. Errors wrap announce.ErrTooLarge or announce.ErrUnavailable.
func (k *Kafka) Publish(ctx context.Context, e announcement.Event) error {
	v, err := e.Encode()
	if err != nil {
		return fmt.Errorf("publisher: encode event: %w", err)
	}
	if limit := k.opt.MaxMessageBytes - recordOverhead; len(v) > limit {
		return fmt.Errorf("%w: the event is %d bytes, the bus takes %d", announce.ErrTooLarge, len(v), limit)
	}
	return k.write(ctx, "announcements", kafka.Message{Topic: k.opt.AnnouncementsTopic, Key: []byte(e.ID), Value: v})
}

// DeadLetter writes the raw input record to the dead-letter topic with why it
// was refused and where it came from. Its original key and headers are kept;
// a value too large for the bus is cut, and HeaderTruncated says so.
func (k *Kafka) DeadLetter(ctx context.Context, src kafka.Message, reason string) error {
	return k.write(ctx, "dead_letter", kafkabus.DeadLetter(src, k.opt.DeadLetterTopic, reason, k.opt.MaxMessageBytes))
}

func (k *Kafka) write(ctx context.Context, label string, m kafka.Message) error {
	start := time.Now()
	err := k.w.WriteMessages(ctx, m)
	if err == nil {
		k.latency.WithLabelValues(label).Observe(time.Since(start).Seconds())
		return nil
	}
	k.errs.WithLabelValues(label).Inc()
	if tooLarge(err) {
		return fmt.Errorf("%w: %w", announce.ErrTooLarge, err)
	}
	return fmt.Errorf("%w: %w", announce.ErrUnavailable, unwrapOne(err))
}

// unwrapOne reports the cause of a one-message write rather than kafka-go's
// "kafka write errors (1/1)" wrapper.
func unwrapOne(err error) error {
	var we kafka.WriteErrors
	if errors.As(err, &we) && len(we) == 1 && we[0] != nil {
		return we[0]
	}
	return err
}

func tooLarge(err error) bool {
	var mtl kafka.MessageTooLargeError
	if errors.As(err, &mtl) || errors.Is(err, kafka.MessageSizeTooLarge) {
		return true
	}
	var we kafka.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if e != nil && (errors.As(e, &mtl) || errors.Is(e, kafka.MessageSizeTooLarge)) {
				return true
			}
		}
	}
	return false
}
