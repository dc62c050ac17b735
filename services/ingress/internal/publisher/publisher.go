// Package publisher is the Kafka adapter of the ingress: it writes
// announcement events to the announcements topic with acks=all, on one
// shared batching writer. (Bad Kafka input goes to the dead-letter topic
// through the stage runtime's writer.)
package publisher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/metric"
	"github.com/announcer/announcer/services/ingress/internal/announce"
)

// recordOverhead is room left for the key, headers and record framing when
// checking a value against the bus's message size limit.
const recordOverhead = kafkabus.RecordOverhead

// Options name the topics and the bus's message size limit.
type Options struct {
	AnnouncementsTopic string
	// PriorityTopic is the priority lane (events with priority high); empty = none.
	PriorityTopic   string
	MaxMessageBytes int
	// TopicsReady says whether the topics exist yet (nil: always). Until
	// then a publish is refused without touching the writer: kafka-go caches
	// the metadata of its first write for up to 6 s, and metadata without the
	// topics would fail the writes for that long after they exist.
	TopicsReady func() bool
}

// Kafka publishes on w. Many goroutines may call it at once: concurrent
// writes share the writer's batches, which is what makes the REST path fast.
type Kafka struct {
	w   Writer
	opt Options

	latency prometheus.Histogram
	redials prometheus.Counter
}

// Writer is what publishes (a *kafkabus.Writer).
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// New returns the adapter; w must be a kafkabus writer (acks=all, topic per message).
func New(w Writer, opt Options, reg prometheus.Registerer) (*Kafka, error) {
	if opt.AnnouncementsTopic == "" {
		return nil, errors.New("publisher: the topic name must not be empty")
	}
	if opt.MaxMessageBytes <= recordOverhead {
		return nil, fmt.Errorf("publisher: max message bytes %d: want > %d", opt.MaxMessageBytes, recordOverhead)
	}
	ms := metric.New(reg)
	k := &Kafka{
		w:   w,
		opt: opt,
		latency: ms.Histogram("publish_duration_seconds",
			"Time from handing an event to the writer until Kafka acknowledged it (acks=all), successes only.", metric.LatencyBuckets()),
		redials: ms.Counter("publish_redials_total",
			"Publishes tried again on a new connection because the broker had closed the one they were written on (a broker restart)."),
	}
	if err := ms.Err(); err != nil {
		return nil, fmt.Errorf("publisher: metrics: %w", err)
	}
	return k, nil
}

var _ announce.Publisher = (*Kafka)(nil)

// Publish writes e to the announcements topic (or its priority lane) keyed by its id and returns once
// it is acknowledged. Errors wrap announce.ErrTooLarge or announce.ErrUnavailable.
func (k *Kafka) Publish(ctx context.Context, e announcement.Event) error {
	v, err := k.encode(e)
	if err != nil {
		return err
	}
	if k.opt.TopicsReady != nil && !k.opt.TopicsReady() {
		return fmt.Errorf("%w: the topics are being set up", announce.ErrUnavailable)
	}
	topic := k.opt.AnnouncementsTopic
	if e.Priority == announcement.PriorityHigh && k.opt.PriorityTopic != "" {
		topic = k.opt.PriorityTopic
	}
	start := time.Now()
	// The writer makes one attempt per call (a 503 must not hide a write
	// retrying in the background), so a leadership move or a topic whose
	// metadata is not out yet is retried here, while the request has time.
	// A connection the broker closed since its last use (a restart) fails
	// the first write on it; the writer then dials afresh, so it is tried
	// once more at once. If that one fails too, the broker is not taking
	// connections: 503.
	retry := backoff.Policy{Initial: 20 * time.Millisecond, Max: 250 * time.Millisecond}
	redialed := false
	for attempt := 0; ; attempt++ {
		err = k.w.WriteMessages(ctx, kafka.Message{Topic: topic, Key: []byte(e.ID), Value: v})
		if err != nil && !redialed && connectionClosed(err) {
			redialed = true
			k.redials.Inc()
			continue
		}
		if err == nil || !retriable(err) || backoff.Sleep(ctx, retry.Delay(attempt)) != nil {
			break
		}
	}
	switch {
	case err == nil:
		k.latency.Observe(time.Since(start).Seconds())
		return nil
	case tooLarge(err):
		return fmt.Errorf("%w: %w", announce.ErrTooLarge, err)
	}
	return fmt.Errorf("%w: %w", announce.ErrUnavailable, unwrapOne(err))
}

// CheckSize returns an error wrapping announce.ErrTooLarge when e is over
// the bus's message size; it writes nothing.
func (k *Kafka) CheckSize(e announcement.Event) error {
	_, err := k.encode(e)
	return err
}

// encode returns the record value of e, or why the bus cannot take it.
func (k *Kafka) encode(e announcement.Event) ([]byte, error) {
	v, err := e.Encode()
	if err != nil {
		return nil, fmt.Errorf("publisher: encode event: %w", err)
	}
	if limit := k.opt.MaxMessageBytes - recordOverhead; len(v) > limit {
		return nil, fmt.Errorf("%w: the event is %d bytes, the bus takes %d", announce.ErrTooLarge, len(v), limit)
	}
	return v, nil
}

// retriable is a Kafka error the broker says will pass (no leader, a
// leader that moved, metadata not propagated yet). A refused connection is
// not: the ingress answers 503 at once while the broker is down.
func retriable(err error) bool {
	var ke kafka.Error
	return errors.As(unwrapOne(err), &ke) && ke.Temporary()
}

// connectionClosed is a write on a connection the broker had closed: it
// ends with EOF, a reset or a broken pipe, never with a refused dial.
func connectionClosed(err error) bool {
	err = unwrapOne(err)
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
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
