// Package kafkainput is the Kafka transport of the ingress: the first generation's input topics
// carry the same JSON as the REST bodies, and each record becomes an announcement event or,
// when the record is bad, a dead letter. The stage runtime runs the consumer (bounded in flight,
// offsets committed in partition order only after the event or dead letter is acknowledged);
// this package only translates a record into the use case's terms.
package kafkainput

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/metric"
	"github.com/announcer/announcer/pkg/stage"
	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/services/ingress/internal/announce"
)

// Announcer is the use case: validate a raw body, submit its event.
type Announcer interface {
	PrepareJSON(body []byte, source string) (announcement.Event, error)
	Submit(ctx context.Context, ev *announcement.Event, key announce.Key) (announce.Outcome, error)
}

// Handler turns one input record into an event. Kafka refusing the event is retried with
// backoff until it is taken or the consumer stops: bad input is dead-lettered, a Kafka outage
// only waits.
type Handler struct {
	a     Announcer
	retry backoff.Policy
	warn  zerolog.Logger // sampled: during an outage every record would log otherwise
	m     metrics
}

type metrics struct {
	retries *prometheus.CounterVec // op: prepare | publish
	repeats prometheus.Counter
}

// New builds the handler; its metrics are registered on reg. (Records handled
// and dead-lettered, by reason, are the consumer's own metrics.)
func New(a Announcer, retry backoff.Policy, log zerolog.Logger, reg prometheus.Registerer) (*Handler, error) {
	ms := metric.New(reg)
	h := &Handler{
		a: a, retry: retry,
		warn: log.With().Str("component", "kafkainput").Logger().Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second}),
		m: metrics{
			retries: ms.CounterVec("kafka_input_retries_total", "Attempts that failed and will be retried, by operation.", "op"),
			repeats: ms.Counter("kafka_input_key_repeats_total", "Keyed input records whose key and body repeated an announcement's within [progress] idempotency_window: not announced again."),
		},
	}
	if err := ms.Err(); err != nil {
		return nil, fmt.Errorf("kafkainput: metrics: %w", err)
	}
	return h, nil
}

// Handle is a stage.Handler.
func (h *Handler) Handle(ctx context.Context, m kafka.Message) error {
	source := announce.SourceKafkaPrefix + m.Topic
	var ev announcement.Event
	err := backoff.Retry(ctx, h.retry, func() error {
		var err error
		ev, err = h.a.PrepareJSON(m.Value, source)
		var ve *announce.ValidationError
		if errors.As(err, &ve) {
			return backoff.Permanent(err)
		}
		return err // anything else is not the record's fault (e.g. no randomness for an id)
	}, h.retrying("prepare"))
	if err == nil && ev.DryRun {
		err = &announce.ValidationError{Field: "dry_run", Reason: "a preview needs someone to answer: use the REST API"}
	}
	var ve *announce.ValidationError
	if errors.As(err, &ve) {
		return h.reject(ve.Error(), announce.FieldLabel(ve.Field))
	}
	if err != nil {
		return err
	}
	key, err := recordKey(source, m)
	if err != nil {
		return err
	}
	var out announce.Outcome
	err = backoff.Retry(ctx, h.retry, func() error {
		// The attempt itself is not cancelled at shutdown (the use case bounds it):
		// abandoning a write halfway would only make a duplicate more likely.
		var err error
		out, err = h.a.Submit(context.WithoutCancel(ctx), &ev, key)
		if errors.Is(err, announce.ErrTooLarge) || errors.Is(err, announce.ErrKeyReused) {
			return backoff.Permanent(err)
		}
		return err
	}, h.retrying("publish"))
	switch {
	case errors.Is(err, announce.ErrTooLarge):
		return h.reject(err.Error(), "too_large")
	case errors.Is(err, announce.ErrKeyReused):
		return h.reject("record key "+stanza.Clip(string(m.Key))+": "+err.Error(), "key_reused")
	case err == nil && out.NotPublished && len(m.Key) > 0:
		// A producer's retried write, or a producer that keys by channel and
		// sent the same text again: the second is not sent, and must not
		// pass unseen. (An unkeyed record read again after a restart is the
		// consumer's own replay, not news.)
		h.m.repeats.Inc()
		h.warn.Warn().Str("source", kafkabus.Source(m)).Str("key", stanza.Clip(string(m.Key))).Str("announcement", out.ID).
			Msg("input record: its key and body were announced within [progress] idempotency_window; not announced again")
	}
	return err
}

// recordKey is the record's idempotency key. A producer's key says which
// records are one announcement (a retried write announces once). A record
// without one is keyed by where it is: read again (a restart or a rebalance
// before its offset was committed), it takes the id it was published under
// instead of a new one, which fanout would send again. The record's
// timestamp keeps a topic made again from reusing an old record's key.
func recordKey(source string, m kafka.Message) (announce.Key, error) {
	if len(m.Key) > 0 {
		return announce.NewBinaryKey(source, m.Key, m.Topic, m.Value)
	}
	at := fmt.Appendf(nil, "%s/%d/%d/%d", m.Topic, m.Partition, m.Offset, m.Time.UnixNano())
	return announce.NewBinaryKey(source+"@offset", at, m.Topic, m.Value)
}

func (h *Handler) reject(reason, label string) error {
	return &stage.Reject{Reason: reason, Label: label}
}

func (h *Handler) retrying(op string) func(error, int) {
	return func(err error, _ int) {
		h.m.retries.WithLabelValues(op).Inc()
		h.warn.Warn().Err(err).Str("op", op).Msg("input record: retrying")
	}
}
