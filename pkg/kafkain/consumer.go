// Package kafkain consumes a Kafka consumer group at least once: a bounded
// number of messages in flight, each handled concurrently, offsets committed
// in partition order only after their handling is durable, and bad input
// dead-lettered instead of dropped.
package kafkain

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/kafkabus"
)

// Fetcher is the consumer-group reader (a *kafka.Reader).
type Fetcher interface {
	FetchMessage(ctx context.Context) (kafka.Message, error)
	CommitMessages(ctx context.Context, msgs ...kafka.Message) error
}

// DeadLetterer stores a refused message with the reason (kafkabus.DeadLetters); one attempt,
// the consumer retries.
type DeadLetterer interface {
	DeadLetter(ctx context.Context, m kafka.Message, reason string) error
}

// Handler handles one message. It returns nil when the message's effect is
// durable, a *Reject when the message can never be handled (it is
// dead-lettered), or an error that stops the consumer (the message stays
// uncommitted). It must return promptly once ctx ends.
type Handler func(ctx context.Context, m kafka.Message) error

// Reject is the handler's verdict on bad input.
type Reject struct{ Reason string }

func (r *Reject) Error() string { return "rejected: " + r.Reason }

// Options tune a Consumer.
type Options struct {
	MaxInFlight  int           // messages fetched and not yet finished
	DrainTimeout time.Duration // how long in-flight messages may finish after ctx ends
	RetryMin     time.Duration // dead-letter and commit retries
	RetryMax     time.Duration
}

// Consumer runs the fetch → handle → commit loop.
type Consumer struct {
	opt Options
	r   Fetcher
	dlq DeadLetterer
	h   Handler
	log zerolog.Logger
	m   *Metrics

	mu      sync.Mutex
	track   *tracker
	kick    chan struct{}
	fatal   error
	stopped chan struct{}
}

// New builds a consumer; Run starts it.
func New(r Fetcher, dlq DeadLetterer, h Handler, opt Options, log zerolog.Logger, m *Metrics) *Consumer {
	if opt.MaxInFlight < 1 {
		opt.MaxInFlight = 1
	}
	if opt.DrainTimeout <= 0 {
		opt.DrainTimeout = 30 * time.Second
	}
	if opt.RetryMin <= 0 {
		opt.RetryMin = 100 * time.Millisecond
	}
	if opt.RetryMax < opt.RetryMin {
		opt.RetryMax = max(opt.RetryMin, 10*time.Second)
	}
	return &Consumer{
		opt: opt, r: r, dlq: dlq, h: h, m: m,
		log:     log.With().Str("component", "kafkain").Logger(),
		track:   newTracker(),
		kick:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
	}
}

// Run fetches until ctx ends or a handler fails. Then it stops fetching, lets
// the messages in flight finish (up to DrainTimeout), commits what finished
// and returns.
func (c *Consumer) Run(ctx context.Context) error {
	// Handlers outlive ctx by the drain timeout: a batch half-way through its
	// fence should finish and be committed rather than be sent again.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()

	var commits sync.WaitGroup
	commits.Go(func() { c.commitLoop(hctx) })

	sem := make(chan struct{}, c.opt.MaxInFlight)
	var handlers sync.WaitGroup
	var fetchErr error
	for {
		select {
		case sem <- struct{}{}:
		case <-fctx.Done():
		}
		if fctx.Err() != nil {
			break
		}
		m, err := c.r.FetchMessage(fctx)
		if err != nil {
			<-sem
			if fctx.Err() == nil {
				fetchErr = fmt.Errorf("fetch: %w", err)
			}
			break
		}
		c.m.fetched.Inc()
		c.mu.Lock()
		c.track.fetched(m)
		c.mu.Unlock()
		handlers.Go(func() {
			defer func() { <-sem }()
			err := c.handle(hctx, m)
			c.mu.Lock()
			defer c.mu.Unlock()
			if err != nil {
				if hctx.Err() == nil && c.fatal == nil {
					c.fatal = fmt.Errorf("%s: %w", kafkabus.Source(m), err)
					fcancel()
				}
				return
			}
			c.track.finished(m)
			select {
			case c.kick <- struct{}{}:
			default:
			}
		})
	}

	drained := make(chan struct{})
	go func() { handlers.Wait(); close(drained) }()
	t := time.NewTimer(c.opt.DrainTimeout)
	select {
	case <-drained:
	case <-t.C:
		c.log.Warn().Dur("timeout", c.opt.DrainTimeout).Msg("in-flight messages did not finish in time; they stay uncommitted")
		hcancel()
		<-drained
	}
	t.Stop()
	close(c.stopped)
	commits.Wait()

	// The final commit gets its own short deadline: the reader is still open.
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer ccancel()
	cerr := c.commit(cctx)

	c.mu.Lock()
	fatal := c.fatal
	c.mu.Unlock()
	return errors.Join(fatal, fetchErr, cerr)
}

func (c *Consumer) handle(ctx context.Context, m kafka.Message) error {
	err := c.h(ctx, m)
	var rej *Reject
	if errors.As(err, &rej) {
		return c.deadLetter(ctx, m, rej.Reason)
	}
	if err == nil {
		c.m.handled.Inc()
	}
	return err
}

// deadLetter retries until the dead letter is written or ctx ends: bad input
// is never committed without a trace.
func (c *Consumer) deadLetter(ctx context.Context, m kafka.Message, reason string) error {
	for attempt := 0; ; attempt++ {
		err := c.dlq.DeadLetter(ctx, m, reason)
		if err == nil {
			c.m.deadLettered.Inc()
			c.log.Warn().Str("source", kafkabus.Source(m)).Str("reason", reason).Msg("dead-lettered")
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.m.dlqErrors.Inc()
		d := backoff.Policy{Initial: c.opt.RetryMin, Max: c.opt.RetryMax}.Delay(attempt)
		c.log.Warn().Err(err).Dur("retry_in", d).Msg("dead-letter write failed")
		if err := backoff.Sleep(ctx, d); err != nil {
			return err
		}
	}
}

// commitTimeout bounds one commit (kafka-go blocks commits during a rebalance).
const commitTimeout = 10 * time.Second

// commitLoop commits whenever a handler finished, coalescing bursts; one
// commit at a time keeps commit points monotonic.
func (c *Consumer) commitLoop(ctx context.Context) {
	attempt := 0
	for {
		select {
		case <-c.kick:
		case <-c.stopped:
			return
		}
		cctx, cancel := context.WithTimeout(ctx, commitTimeout)
		err := c.commit(cctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d := backoff.Policy{Initial: c.opt.RetryMin, Max: c.opt.RetryMax}.Delay(attempt)
			attempt++
			c.log.Warn().Err(err).Dur("retry_in", d).Msg("commit failed")
			select {
			case c.kick <- struct{}{}:
			default:
			}
			select {
			case <-time.After(d):
			case <-c.stopped:
				return
			}
			continue
		}
		attempt = 0
	}
}

func (c *Consumer) commit(ctx context.Context) error {
	c.mu.Lock()
	ms := c.track.committable()
	c.mu.Unlock()
	if len(ms) == 0 {
		return nil
	}
	if err := c.r.CommitMessages(ctx, ms...); err != nil {
		c.m.commitErrors.Inc()
		return fmt.Errorf("commit: %w", err)
	}
	c.m.commits.Inc()
	c.mu.Lock()
	c.track.committed(ms)
	c.mu.Unlock()
	return nil
}

// Metrics of the consumer loop.
type Metrics struct {
	fetched, handled, deadLettered, dlqErrors, commits, commitErrors prometheus.Counter
}

// NewMetrics registers the consumer's metrics under the service's subsystem.
func NewMetrics(reg prometheus.Registerer, subsystem string, labels prometheus.Labels) *Metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "announcer", Subsystem: subsystem, Name: name, Help: help, ConstLabels: labels,
		})
	}
	m := &Metrics{
		fetched:      c("messages_fetched_total", "Kafka messages fetched."),
		handled:      c("messages_handled_total", "Kafka messages handled successfully."),
		deadLettered: c("dead_letters_total", "Messages written to the dead-letter topic."),
		dlqErrors:    c("dead_letter_errors_total", "Failed dead-letter writes (retried)."),
		commits:      c("commits_total", "Offset commits."),
		commitErrors: c("commit_errors_total", "Failed offset commits (retried)."),
	}
	reg.MustRegister(m.fetched, m.handled, m.deadLettered, m.dlqErrors, m.commits, m.commitErrors)
	return m
}
