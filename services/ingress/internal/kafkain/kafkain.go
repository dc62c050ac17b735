// Package kafkain is the Kafka transport of the ingress: it consumes the
// first generation's input topics, whose records carry the same JSON as the
// REST bodies, and turns each record into an announcement event or, when the
// record is bad, a dead letter. A record's offset is committed only after its
// event or dead letter is acknowledged, and offsets are committed in fetch
// order, so a crash at any point redelivers rather than loses.
//
// Records are handled concurrently inside a bounded window, so the shared
// writer batches them and one slow or poisonous record does not stall the
// others; bad input is dead-lettered, never retried and never fatal.
package kafkain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/services/ingress/internal/announce"
)

// Fetcher is a consumer-group reader with explicit commits (*kafka.Reader).
type Fetcher interface {
	FetchMessage(ctx context.Context) (kafka.Message, error)
	CommitMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Announcer is the use case: validate a raw body, publish its event.
type Announcer interface {
	PrepareJSON(body []byte, source string) (announcement.Event, error)
	Publish(ctx context.Context, ev announcement.Event) error
}

// DeadLetterer stores a refused record with the reason.
type DeadLetterer interface {
	DeadLetter(ctx context.Context, m kafka.Message, reason string) error
}

// Options tune the consumer.
type Options struct {
	// Window bounds records fetched but not yet committed (and so memory and goroutines).
	Window int
	// RetryMin and RetryMax bound the backoff between attempts when Kafka refuses a write.
	RetryMin, RetryMax time.Duration
	// CommitTimeout bounds one offset commit.
	CommitTimeout time.Duration
}

// maxCommitBatch caps offsets gathered into one commit request.
const maxCommitBatch = 1000

// Consumer turns input records into events. Run it once.
type Consumer struct {
	r   Fetcher
	a   Announcer
	dl  DeadLetterer
	opt Options
	log zerolog.Logger
	// warn is sampled: when Kafka is down every record would log otherwise.
	warn zerolog.Logger
	m    metrics
}

type metrics struct {
	records      *prometheus.CounterVec // result: announced | dead_lettered
	deadLetters  *prometheus.CounterVec // reason: the field at fault, or too_large
	retries      *prometheus.CounterVec // op: publish | dead_letter
	fetchErrors  prometheus.Counter
	commitErrors prometheus.Counter
	inFlight     prometheus.Gauge
}

// New builds a consumer; its metrics are registered on reg.
func New(r Fetcher, a Announcer, dl DeadLetterer, opt Options, log zerolog.Logger, reg prometheus.Registerer) (*Consumer, error) {
	if opt.Window < 1 {
		return nil, fmt.Errorf("kafkain: window %d: want >= 1", opt.Window)
	}
	if opt.RetryMin <= 0 {
		opt.RetryMin = 100 * time.Millisecond
	}
	if opt.RetryMax < opt.RetryMin {
		opt.RetryMax = max(opt.RetryMin, 5*time.Second)
	}
	if opt.CommitTimeout <= 0 {
		opt.CommitTimeout = 10 * time.Second
	}
	log = log.With().Str("component", "kafkain").Logger()
	c := &Consumer{
		r: r, a: a, dl: dl, opt: opt, log: log,
		warn: log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second}),
		m: metrics{
			records: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "ingress_kafka_input_records_total",
				Help: "Input records handled and committed-to-be, by outcome.",
			}, []string{"result"}),
			deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "ingress_dead_letters_total",
				Help: "Input records sent to the dead-letter topic, by the field at fault.",
			}, []string{"reason"}),
			retries: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "ingress_kafka_input_retries_total",
				Help: "Write attempts that failed and will be retried.",
			}, []string{"op"}),
			fetchErrors: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "ingress_kafka_input_fetch_errors_total",
				Help: "Errors fetching input records.",
			}),
			commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "ingress_kafka_input_commit_errors_total",
				Help: "Offset commits that failed (the records will be redelivered).",
			}),
			inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "ingress_kafka_input_in_flight",
				Help: "Input records fetched and not yet handled.",
			}),
		},
	}
	for _, col := range []prometheus.Collector{c.m.records, c.m.deadLetters, c.m.retries, c.m.fetchErrors, c.m.commitErrors, c.m.inFlight} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("kafkain: metrics: %w", err)
		}
	}
	return c, nil
}

// item is one fetched record; done closes when it is handled, ok says whether
// its event or dead letter was acknowledged (false only at shutdown).
type item struct {
	msg  kafka.Message
	done chan struct{}
	ok   bool
}

// Run consumes until ctx ends. Records in flight at that moment finish their
// current write attempt; those acknowledged are committed, the rest are
// redelivered to the next consumer.
func (c *Consumer) Run(ctx context.Context) error {
	pending := make(chan *item, c.opt.Window)
	committed := make(chan struct{})
	go func() {
		defer close(committed)
		c.commitLoop(pending)
	}()

	var wg sync.WaitGroup
	var runErr error
	for attempt := 0; ; {
		m, err := c.r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) {
				runErr = fmt.Errorf("kafkain: reader closed: %w", err)
				break
			}
			c.m.fetchErrors.Inc()
			c.warn.Warn().Err(err).Msg("fetching input records failed; retrying")
			if !sleep(ctx, c.backoff(attempt)) {
				break
			}
			attempt++
			continue
		}
		attempt = 0
		it := &item{msg: m, done: make(chan struct{})}
		queued := false
		select {
		case pending <- it:
			queued = true
		case <-ctx.Done():
			// Window full at shutdown: this record is neither handled nor committed.
		}
		if !queued {
			break
		}
		c.m.inFlight.Inc()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.m.inFlight.Dec()
			defer close(it.done)
			it.ok = c.handle(ctx, it.msg)
		}()
	}
	wg.Wait()
	close(pending)
	<-committed
	return runErr
}

// handle returns true once the record's event or dead letter is acknowledged,
// false when ctx ended first.
func (c *Consumer) handle(ctx context.Context, m kafka.Message) bool {
	source := announce.SourceKafkaPrefix + m.Topic
	for attempt := 0; ; attempt++ {
		ev, err := c.a.PrepareJSON(m.Value, source)
		var ve *announce.ValidationError
		switch {
		case errors.As(err, &ve):
			return c.deadLetter(ctx, m, ve.Error(), announce.FieldLabel(ve.Field))
		case err != nil:
			// Not the record's fault (e.g. no randomness for an id): try again.
			c.warn.Warn().Err(err).Msg("preparing an input record failed; retrying")
		default:
			return c.publish(ctx, m, ev)
		}
		if !sleep(ctx, c.backoff(attempt)) {
			return false
		}
	}
}

func (c *Consumer) publish(ctx context.Context, m kafka.Message, ev announcement.Event) bool {
	for attempt := 0; ; attempt++ {
		// The attempt itself is not cancelled at shutdown (the use case bounds it):
		// abandoning a write halfway would only make a duplicate more likely.
		err := c.a.Publish(context.WithoutCancel(ctx), ev)
		if err == nil {
			c.m.records.WithLabelValues("announced").Inc()
			return true
		}
		if errors.Is(err, announce.ErrTooLarge) {
			return c.deadLetter(ctx, m, err.Error(), "too_large")
		}
		c.m.retries.WithLabelValues("publish").Inc()
		c.warn.Warn().Err(err).Msg("publishing an input record's event failed; retrying")
		if !sleep(ctx, c.backoff(attempt)) {
			return false
		}
	}
}

func (c *Consumer) deadLetter(ctx context.Context, m kafka.Message, reason, label string) bool {
	for attempt := 0; ; attempt++ {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opt.CommitTimeout)
		err := c.dl.DeadLetter(wctx, m, reason)
		cancel()
		if err == nil {
			c.m.records.WithLabelValues("dead_lettered").Inc()
			c.m.deadLetters.WithLabelValues(label).Inc()
			return true
		}
		c.m.retries.WithLabelValues("dead_letter").Inc()
		c.warn.Warn().Err(err).Msg("writing a dead letter failed; retrying")
		if !sleep(ctx, c.backoff(attempt)) {
			return false
		}
	}
}

// commitLoop commits offsets in fetch order, each only after its record is
// handled. It gathers consecutive finished records into one commit, and
// stops committing for good at the first record that was not acknowledged.
func (c *Consumer) commitLoop(pending <-chan *item) {
	batch := make([]kafka.Message, 0, maxCommitBatch)
	stuck := false
	for it := range pending {
		select {
		case <-it.done:
		default:
			// Commit what is finished before waiting on a slow record.
			batch = c.commit(batch)
			<-it.done
		}
		if stuck || !it.ok {
			stuck = true
			continue
		}
		batch = append(batch, it.msg)
		if len(pending) == 0 || len(batch) >= maxCommitBatch {
			batch = c.commit(batch)
		}
	}
	c.commit(batch)
}

func (c *Consumer) commit(batch []kafka.Message) []kafka.Message {
	if len(batch) == 0 {
		return batch
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opt.CommitTimeout)
	defer cancel()
	if err := c.r.CommitMessages(ctx, batch...); err != nil {
		// The records are done; they will be redelivered and published again
		// (at-least-once), so counting is all that is left to do.
		c.m.commitErrors.Inc()
		c.warn.Warn().Err(err).Int("records", len(batch)).Msg("committing input offsets failed; they will be redelivered")
	}
	return batch[:0]
}

// backoff is exponential with full jitter.
func (c *Consumer) backoff(attempt int) time.Duration {
	d := c.opt.RetryMin << min(attempt, 20)
	if d <= 0 || d > c.opt.RetryMax {
		d = c.opt.RetryMax
	}
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

// sleep waits d or until ctx ends; false means ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
