package stage

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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
// durable, an error with a RejectReason when the message can never be handled
// (it is dead-lettered), or another error, after which the message is handled
// again with backoff. It must return promptly once ctx ends.
type Handler func(ctx context.Context, m kafka.Message) error

// Rejection is a handler error that is the record's own fault: the record is
// dead-lettered with RejectReason. *Reject is one; a use case may declare its own.
type Rejection interface {
	error
	RejectReason() string
}

// Reject is the handler's verdict on bad input. Label, when set, is the
// bounded reason label of the dead-letter metric (default "invalid").
type Reject struct{ Reason, Label string }

func (r *Reject) Error() string { return "rejected: " + r.Reason }

// RejectReason implements Rejection.
func (r *Reject) RejectReason() string { return r.Reason }

// RejectLabel is the metric label of the rejection.
func (r *Reject) RejectLabel() string { return r.Label }

// ConsumerOptions tune a Consumer.
type ConsumerOptions struct {
	// MaxInFlight bounds the records being handled at once.
	MaxInFlight int
	// MaxUncommitted bounds the records fetched and not committed yet: being
	// handled, or handled and waiting for their commit (default MaxInFlight).
	// While commits fail (a broker outage) the consumer takes no new work
	// beyond it, so a crash then replays at most MaxUncommitted records. Above
	// MaxInFlight it lets handlers go on while an earlier, slower record of a
	// partition holds its commit back.
	MaxUncommitted int
	DrainTimeout   time.Duration // how long records in flight may finish after ctx ends
	Retry          backoff.Policy
	// Dedupe remembers this many records (topic, key and value) and
	// skips identical copies: a producer that retried a write whose ack was
	// lost leaves such copies. Only for topics where two identical records
	// are by construction the same piece of work.
	Dedupe int
	// BeforeCommit runs before each commit (bounded by itself): the stage's
	// progress tracker makes sure the records of the committed work reached
	// its store first.
	BeforeCommit func(context.Context)
}

// Consumer runs the fetch → handle → commit loop of one consumer group. It
// never stops on a Kafka error: fetches, commits and dead letters are retried
// with backoff until ctx ends.
type Consumer struct {
	opt    ConsumerOptions
	dlq    DeadLetterer
	h      Handler
	log    zerolog.Logger
	warn   zerolog.Logger // sampled: an outage would log every attempt otherwise
	m      *consumerMetrics
	health *health

	slots   chan struct{} // one token per record fetched and not committed
	working chan struct{} // one token per record being handled

	mu      sync.Mutex
	track   *tracker
	seen    *recent
	kick    chan struct{}
	stopped chan struct{}
}

// NewConsumer builds a consumer; Run starts it on a reader. Its metrics are
// registered on reg, whose names the caller prefixes (announcer_<service>_...).
func NewConsumer(dlq DeadLetterer, h Handler, opt ConsumerOptions, log zerolog.Logger, reg prometheus.Registerer) *Consumer {
	opt.MaxInFlight = max(opt.MaxInFlight, 1)
	opt.MaxUncommitted = max(opt.MaxUncommitted, opt.MaxInFlight)
	if opt.DrainTimeout <= 0 {
		opt.DrainTimeout = 30 * time.Second
	}
	if opt.Retry.Initial <= 0 {
		opt.Retry.Initial = 100 * time.Millisecond
	}
	if opt.Retry.Max < opt.Retry.Initial {
		opt.Retry.Max = max(opt.Retry.Initial, 5*time.Second)
	}
	m := newConsumerMetrics(reg)
	log = log.With().Str("component", "consumer").Logger()
	return &Consumer{
		opt: opt, dlq: dlq, h: h, m: m,
		log:     log,
		warn:    log.Sample(&zerolog.BurstSampler{Burst: 3, Period: 10 * time.Second}),
		health:  newHealth(m, log),
		slots:   make(chan struct{}, opt.MaxUncommitted),
		working: make(chan struct{}, opt.MaxInFlight),
		track:   newTracker(),
		seen:    newRecent(opt.Dedupe),
		kick:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
	}
}

// Ready reports a Kafka operation that is failing right now (readiness).
func (c *Consumer) Ready(context.Context) error { return c.health.err() }

// Run fetches from r until ctx ends. Then it stops fetching, lets the records
// in flight finish (up to DrainTimeout), commits what finished and returns.
// A Consumer may run again after Run returned, on a new reader (a gated
// input that reopens): each run starts with nothing in hand.
func (c *Consumer) Run(ctx context.Context, r Fetcher) error {
	return c.run(ctx, r, func() time.Duration { return c.opt.DrainTimeout })
}

// run is Run with the drain timeout chosen when ctx ends.
func (c *Consumer) run(ctx context.Context, r Fetcher, drain func() time.Duration) error {
	c.reset()
	// Handlers outlive ctx by the drain timeout: a batch half-way through its
	// fence should finish and be committed rather than be sent again.
	hctx, hcancel := context.WithCancel(context.WithValue(context.WithoutCancel(ctx), drainingKey{}, ctx))
	defer hcancel()

	// A commit under way when the drain ends is cut short: the final commit
	// covers it, and waiting for both could overrun the shutdown's budget
	// while the coordinator is away.
	lctx, lcancel := context.WithCancel(hctx)
	defer lcancel()
	var commits sync.WaitGroup
	commits.Go(func() { c.commitLoop(lctx, r) })

	// kafka-go queues its fetch errors with the records and paces them itself
	// (ReadBackoffMax): a long wait per error here would hold the records
	// queued behind a burst of them for minutes after the broker is back.
	fetchPolicy := c.opt.Retry
	fetchPolicy.Initial = min(fetchPolicy.Initial, maxFetchDelay)
	fetchPolicy.Max = min(fetchPolicy.Max, maxFetchDelay)

	var handlers sync.WaitGroup
	for failures := 0; ; {
		if !c.acquire(ctx) {
			break
		}
		m, err := r.FetchMessage(ctx)
		if err != nil {
			<-c.working
			<-c.slots
			if ctx.Err() != nil {
				break
			}
			c.health.failed(opFetch, err)
			if backoff.Sleep(ctx, fetchPolicy.Delay(failures)) != nil {
				break
			}
			failures++
			continue
		}
		failures = 0
		c.health.ok(opFetch)
		c.m.fetched.Inc()
		c.mu.Lock()
		admitted := c.track.admit(m)
		// Remembered at admission, not completion: the copy of a retried write
		// usually arrives while the original is still being handled.
		dup := admitted && c.seen.check(m)
		c.setInFlight(m.Topic, m.Partition)
		c.mu.Unlock()
		switch {
		case !admitted:
			// A copy of a record this process has in hand (kafka-go re-read it after a rebalance).
			<-c.working
			<-c.slots
			c.m.refetched.Inc()
		case dup:
			c.m.duplicates.Inc()
			<-c.working
			c.finish(m)
		default:
			handlers.Go(func() {
				c.process(hctx, m)
				<-c.working
			})
		}
	}

	drained := make(chan struct{})
	go func() { handlers.Wait(); close(drained) }()
	timeout := drain()
	t := time.NewTimer(timeout)
	select {
	case <-drained:
	case <-t.C:
		c.log.Warn().Dur("timeout", timeout).Msg("records in flight did not finish in time; they stay uncommitted")
		hcancel()
		<-drained
	}
	t.Stop()
	close(c.stopped)
	lcancel()
	commits.Wait()

	// The final commit gets its own short deadline: the reader is still open.
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer ccancel()
	err := c.commit(cctx, r)
	// What this run did not commit is no longer held here: whoever reads the
	// partitions next handles it. A gated input may stay closed for hours.
	c.mu.Lock()
	c.m.inFlight.Reset()
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("final commit (the records after the last commit will be handled again): %w", err)
	}
	return nil
}

// reset forgets what an earlier run held: its uncommitted records are
// handled again by whoever reads them next. The duplicate memory goes too,
// since a record an earlier run abandoned mid-way was never handled.
func (c *Consumer) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.track = newTracker()
	c.seen = newRecent(c.opt.Dedupe)
	// A failure of an earlier run (a commit that failed as a gate closed) is
	// not this run's: on an idle topic nothing would ever clear it.
	c.health.clear()
	c.stopped = make(chan struct{})
	c.slots = make(chan struct{}, c.opt.MaxUncommitted)
	c.working = make(chan struct{}, c.opt.MaxInFlight)
	select {
	case <-c.kick:
	default:
	}
	c.m.inFlight.Reset()
}

// held is the oldest offset of a partition the consumer holds uncommitted.
func (c *Consumer) held(k topicPartition) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.track.oldest(k)
}

// setInFlight publishes what a partition holds uncommitted; c.mu is held.
func (c *Consumer) setInFlight(topic string, partition int) {
	p := c.track.parts[topicPartition{topic, partition}]
	if p == nil {
		return
	}
	c.m.inFlight.WithLabelValues(topic, strconv.Itoa(partition)).Set(float64(len(p.pending) + len(p.done)))
}

// acquire takes a slot of the uncommitted bound, then one of the handlers,
// or reports that ctx ended first.
func (c *Consumer) acquire(ctx context.Context) bool {
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	select {
	case c.working <- struct{}{}:
		return true
	case <-ctx.Done():
		<-c.slots
		return false
	}
}

// process handles one record until its effect is durable or hctx ends.
func (c *Consumer) process(ctx context.Context, m kafka.Message) {
	for attempt := 0; ; attempt++ {
		err := c.h(ctx, m)
		if err == nil {
			c.m.handled.Inc()
			break
		}
		var rej Rejection
		if errors.As(err, &rej) {
			if c.deadLetter(ctx, m, rej) != nil {
				return // shutting down: the record stays uncommitted
			}
			break
		}
		// Draining, a failed attempt is not tried again: only work under way
		// is worth the wait, and the record stays for the next reader.
		if ctx.Err() != nil || draining(ctx) {
			return
		}
		c.m.retries.Inc()
		d := c.opt.Retry.Delay(attempt)
		c.warn.Warn().Err(err).Str("source", kafkabus.Source(m)).Dur("retry_in", d).Msg("handling failed; retrying")
		// A drain that starts during the wait ends it, and no attempt follows:
		// the drain would otherwise wait out the backoff, then a new attempt.
		wait, stop := UntilDraining(ctx)
		err = backoff.Sleep(wait, d)
		stop()
		if err != nil || draining(ctx) {
			return
		}
	}
	c.finish(m)
}

func (c *Consumer) finish(m kafka.Message) {
	c.mu.Lock()
	c.track.finished(m)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// deadLetter retries until the dead letter is written or ctx ends: bad input
// is never committed without a trace.
func (c *Consumer) deadLetter(ctx context.Context, m kafka.Message, rej Rejection) error {
	label := "invalid"
	if l, ok := rej.(interface{ RejectLabel() string }); ok && l.RejectLabel() != "" {
		label = l.RejectLabel()
	}
	for attempt := 0; ; attempt++ {
		err := c.dlq.DeadLetter(ctx, m, rej.RejectReason())
		if err == nil {
			c.health.ok(opDeadLetter)
			c.m.deadLetters.WithLabelValues(label).Inc()
			c.warn.Warn().Str("source", kafkabus.Source(m)).Str("reason", rej.RejectReason()).Msg("dead-lettered")
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.health.failed(opDeadLetter, err)
		if err := backoff.Sleep(ctx, c.opt.Retry.Delay(attempt)); err != nil {
			return err
		}
	}
}

const (
	// commitTimeout bounds one commit (kafka-go blocks commits while the
	// group has no generation, e.g. during a broker outage).
	commitTimeout = 10 * time.Second
	// maxCommitDelay caps the wait between commit retries: once the broker is
	// back, what finished during the outage is committed within it.
	maxCommitDelay = time.Second
	// maxFetchDelay caps the wait after a failed fetch (see run).
	maxFetchDelay = 100 * time.Millisecond
)

// commitLoop commits whenever a handler finished, coalescing bursts; one
// commit at a time keeps commit points monotonic.
func (c *Consumer) commitLoop(ctx context.Context, r Fetcher) {
	policy := c.opt.Retry
	policy.Max = min(policy.Max, maxCommitDelay)
	attempt := 0
	for {
		select {
		case <-c.kick:
		case <-c.stopped:
			return
		}
		cctx, cancel := context.WithTimeout(ctx, commitTimeout)
		err := c.commit(cctx, r)
		cancel()
		if err == nil {
			attempt = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		c.health.failed(opCommit, err)
		d := policy.Delay(attempt)
		attempt++
		select {
		case c.kick <- struct{}{}:
		default:
		}
		select {
		case <-time.After(d):
		case <-c.stopped:
			return
		}
	}
}

func (c *Consumer) commit(ctx context.Context, r Fetcher) error {
	c.mu.Lock()
	ms := c.track.committable()
	c.mu.Unlock()
	if len(ms) == 0 {
		return nil
	}
	if c.opt.BeforeCommit != nil {
		c.opt.BeforeCommit(ctx)
	}
	if err := r.CommitMessages(ctx, ms...); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	c.health.ok(opCommit)
	c.m.commits.Inc()
	c.mu.Lock()
	freed := c.track.committed(ms)
	for _, m := range ms {
		c.setInFlight(m.Topic, m.Partition)
	}
	c.mu.Unlock()
	for range freed {
		<-c.slots
	}
	return nil
}

type drainingKey struct{}

// draining reports whether the consumer that handed ctx's record to its
// handler has stopped taking records (a shutdown, a gate closing).
func draining(ctx context.Context) bool {
	d, ok := ctx.Value(drainingKey{}).(context.Context)
	return ok && d.Err() != nil
}

// UntilDraining is ctx, also ended once the consumer that handed ctx's record
// to its handler stops taking records. A handler waits on it for what it
// needs before it can start (a connection): a record that has not started
// is not worth the drain, and stays uncommitted for the next reader.
func UntilDraining(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	d, ok := ctx.Value(drainingKey{}).(context.Context)
	if !ok {
		return ctx, cancel
	}
	stop := context.AfterFunc(d, cancel)
	return ctx, func() { stop(); cancel() }
}
