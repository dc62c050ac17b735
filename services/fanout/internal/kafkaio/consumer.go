package kafkaio

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/services/fanout/internal/audience"
)

// Reader is the part of *kafka.Reader the consumer uses (explicit commits).
type Reader interface {
	FetchMessage(ctx context.Context) (kafka.Message, error)
	CommitMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Resolver is the use case.
type Resolver interface {
	Resolve(ctx context.Context, ev announcement.Event) (audience.Result, error)
}

// DeadLetterer keeps records that cannot be used.
type DeadLetterer interface {
	DeadLetter(ctx context.Context, m kafka.Message, reason string) error
}

// Options tune a Consumer.
type Options struct {
	// Workers is how many events are resolved at once, over all partitions
	// (each partition is handled in order, one event at a time).
	Workers int
	// QueuePerPartition bounds the fetched records waiting per partition; a full
	// queue pauses fetching.
	QueuePerPartition int
	// Drain is how long in-flight events may take to finish after shutdown began;
	// what is not finished then is not committed and will be redone.
	Drain time.Duration
	Retry backoff.Policy
	// Done, if set, is called after an event's offset was committed.
	Done func(ev announcement.Event, res audience.Result)
}

// Consumer feeds the announcements topic to the use case.
type Consumer struct {
	r   Reader
	uc  Resolver
	dl  DeadLetterer
	dec Decoder
	o   Options
	log zerolog.Logger
	m   consumerMetrics
}

type consumerMetrics struct {
	consumed    prometheus.Counter
	deadLetters prometheus.Counter
	commitErrs  prometheus.Counter
	inFlight    prometheus.Gauge
}

// NewConsumer builds the loop and registers its metrics.
func NewConsumer(r Reader, uc Resolver, dl DeadLetterer, dec Decoder, o Options, log zerolog.Logger, reg prometheus.Registerer) (*Consumer, error) {
	if o.Workers < 1 {
		o.Workers = 1
	}
	if o.QueuePerPartition < 1 {
		o.QueuePerPartition = 4
	}
	if o.Drain <= 0 {
		o.Drain = 5 * time.Second
	}
	c := &Consumer{r: r, uc: uc, dl: dl, dec: dec, o: o, log: log, m: consumerMetrics{
		consumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fanout_events_consumed_total", Help: "Announcement records fetched.",
		}),
		deadLetters: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fanout_dead_letters_total", Help: "Records that could not be decoded, copied to the dead-letter topic.",
		}),
		commitErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fanout_commit_errors_total", Help: "Offset commits that failed (the record will be redone).",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fanout_events_in_flight", Help: "Events being resolved now.",
		}),
	}}
	for _, col := range []prometheus.Collector{c.m.consumed, c.m.deadLetters, c.m.commitErrs, c.m.inFlight} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("kafkaio: metrics: %w", err)
		}
	}
	return c, nil
}

type partitionKey struct {
	topic     string
	partition int
}

// Run fetches until ctx ends. Then it stops fetching, lets the events in
// flight finish for up to Drain, and returns; unfinished events stay
// uncommitted and are redone by whoever owns the partition next.
func (c *Consumer) Run(ctx context.Context) error {
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	sem := make(chan struct{}, c.o.Workers)
	queues := map[partitionKey]chan kafka.Message{}
	var wg sync.WaitGroup
	var runErr error
fetch:
	for {
		m, err := c.r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() == nil {
				runErr = fmt.Errorf("kafka: fetch: %w", err)
			}
			break
		}
		c.m.consumed.Inc()
		k := partitionKey{m.Topic, m.Partition}
		q, ok := queues[k]
		if !ok {
			q = make(chan kafka.Message, c.o.QueuePerPartition)
			queues[k] = q
			wg.Go(func() { c.partition(ctx, work, q, sem) })
		}
		select {
		case q <- m:
		case <-ctx.Done():
			break fetch
		}
	}
	for _, q := range queues {
		close(q)
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(c.o.Drain)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		c.log.Warn().Dur("drain", c.o.Drain).Msg("events still in flight at shutdown; they will be redone")
		cancelWork()
		<-done
	}
	return runErr
}

// partition handles one partition's records in order. stop ends the intake;
// work ends the events in flight.
func (c *Consumer) partition(stop, work context.Context, q <-chan kafka.Message, sem chan struct{}) {
	for m := range q {
		if stop.Err() != nil {
			continue // not started: left uncommitted for the next owner
		}
		select {
		case sem <- struct{}{}:
		case <-stop.Done():
			continue
		}
		c.m.inFlight.Inc()
		c.handle(work, m)
		c.m.inFlight.Dec()
		<-sem
	}
}

func (c *Consumer) handle(ctx context.Context, m kafka.Message) {
	ev, err := c.dec.Decode(m.Value)
	var res audience.Result
	if err != nil {
		reason := err.Error()
		if err := backoff.Retry(ctx, c.o.Retry, func() error { return c.dl.DeadLetter(ctx, m, reason) }, c.retrying("dead letter")); err != nil {
			return
		}
		c.m.deadLetters.Inc()
		c.log.Warn().Str("source", kafkabus.Source(m)).Str("reason", reason).Msg("bad announcement record dead-lettered")
	} else {
		// Resolve retries its dependencies itself; an error here means ctx ended.
		err := backoff.Retry(ctx, c.o.Retry, func() error {
			var err error
			res, err = c.uc.Resolve(ctx, ev)
			return err
		}, c.retrying("resolve"))
		if err != nil {
			return
		}
	}
	// A commit that keeps failing is given up: the next commit of the partition
	// covers this offset too, and if none comes the record is redone (never lost).
	commit := backoff.Policy{Initial: c.o.Retry.Initial, Max: c.o.Retry.Max, Attempts: 5}
	if err := backoff.Retry(ctx, commit, func() error { return c.r.CommitMessages(ctx, m) }, c.retrying("commit")); err != nil {
		c.m.commitErrs.Inc()
		if !errors.Is(err, context.Canceled) {
			c.log.Error().Err(err).Str("source", kafkabus.Source(m)).Msg("offset commit failed; the record may be redone")
		}
		return
	}
	if c.o.Done != nil && ev.ID != "" {
		c.o.Done(ev, res)
	}
}

func (c *Consumer) retrying(what string) func(error, int) {
	return func(err error, attempt int) {
		if attempt == 1 || attempt%10 == 0 {
			c.log.Warn().Err(err).Str("op", what).Int("attempt", attempt).Msg("retrying")
		}
	}
}
