// Package delivery is the sender's use case: render a delivery batch for each
// recipient, send it through a rate-limited connection, fence it, and send it
// again on another connection when the first one dies before the fence.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/stanza"
)

// Link is one connection to ejabberd, held between Acquire and Release.
type Link interface {
	// Slot identifies the connection position (stable across reconnects) for
	// per-connection rate limiting.
	Slot() int
	// Write buffers whole stanzas; Flush sends the buffer.
	Write(p []byte) error
	Flush() error
	// Fence returns nil once ejabberd processed everything written before it.
	Fence(ctx context.Context) error
	Release()
}

// Links hands out live connections, waiting for one to come up. With alone,
// the connection is the caller's alone until Release: nothing else is
// written on it meanwhile.
type Links interface {
	Acquire(ctx context.Context, alone bool) (Link, error)
}

// LinksOf adapts a pool whose Acquire hands out a concrete link type (Go has
// no covariant results, so *xmpplink.Pool is not a Links by itself).
func LinksOf[L Link](acquire func(context.Context, bool) (L, error)) Links {
	return linksFunc[L](acquire)
}

type linksFunc[L Link] func(context.Context, bool) (L, error)

func (f linksFunc[L]) Acquire(ctx context.Context, alone bool) (Link, error) {
	l, err := f(ctx, alone)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Templates parses a batch's template at most once per announcement under
// the connection mode's rules (a *stanza.Cache).
type Templates interface {
	Get(announcementID, raw string) (*stanza.Template, error)
}

// rejecter is implemented by link errors that say the server closed the
// stream because of what was sent (not a network failure).
type rejecter interface{ Rejected() bool }

// Options configure the use case.
type Options struct {
	UserDomain  string    // completes bare usernames into JIDs
	Templates   Templates // the connection mode's template rules
	Conns       int       // connection slots (one limiter each)
	RatePerConn int       // stanzas per second per connection; <= 0 = unlimited
	// Rejections is how often ejabberd may close the stream while a batch is in
	// flight before the batch is declared poison and dead-lettered.
	Rejections int
	RetryMin   time.Duration
	RetryMax   time.Duration
}

// Sender delivers batches.
type Sender struct {
	opt      Options
	log      zerolog.Logger
	m        *Metrics
	links    Links
	limiters []*rate.Limiter
	chunk    int
	bufs     sync.Pool
}

// chunkFor picks how many stanzas go out per rate-limiter reservation: about
// 20 reservations a second at the configured rate, at most 64 stanzas.
func chunkFor(ratePerConn int) int {
	if ratePerConn <= 0 {
		return 64
	}
	return min(max(ratePerConn/20, 1), 64)
}

// New builds the use case.
func New(opt Options, links Links, log zerolog.Logger, m *Metrics) *Sender {
	if opt.Conns < 1 {
		opt.Conns = 1
	}
	opt.Rejections = max(opt.Rejections, 0)
	if opt.RetryMin <= 0 {
		opt.RetryMin = 100 * time.Millisecond
	}
	if opt.RetryMax < opt.RetryMin {
		opt.RetryMax = max(opt.RetryMin, 10*time.Second)
	}
	s := &Sender{
		opt:   opt,
		log:   log.With().Str("component", "delivery").Logger(),
		m:     m,
		links: links,
		chunk: chunkFor(opt.RatePerConn),
	}
	s.limiters = make([]*rate.Limiter, opt.Conns)
	for i := range s.limiters {
		if opt.RatePerConn > 0 {
			// Burst = one chunk: the bucket is exact over any window longer than a chunk.
			s.limiters[i] = rate.NewLimiter(rate.Limit(opt.RatePerConn), s.chunk)
		}
	}
	s.bufs.New = func() any { return new(scratch) }
	return s
}

// scratch is the per-call rendering memory: one chunk of stanzas and a JID.
// Rendering per chunk (again on a resend) keeps memory at one chunk per
// batch in flight, whatever the template size.
type scratch struct {
	buf []byte
	jid []byte
}

// Deliver sends b and returns nil once ejabberd has processed all of it, a
// *announcement.BadRecordError when it never can be, or ctx's error.
func (s *Sender) Deliver(ctx context.Context, b announcement.Batch) error {
	tmpl, err := s.opt.Templates.Get(b.AnnouncementID, b.Template)
	if err != nil {
		return &announcement.BadRecordError{Reason: "template: " + err.Error(), Label: "template"}
	}
	sc := s.bufs.Get().(*scratch)
	defer s.bufs.Put(sc)
	valid := 0
	for _, user := range b.Recipients {
		if j, err := stanza.AppendJID(sc.jid[:0], user, s.opt.UserDomain); err == nil && len(j) > 0 {
			valid++
		}
	}
	if invalid := len(b.Recipients) - valid; invalid > 0 {
		s.m.invalid.Add(float64(invalid))
	}
	if valid == 0 {
		s.m.batches.WithLabelValues("empty").Inc()
		return nil
	}

	policy := backoff.Policy{Initial: s.opt.RetryMin, Max: s.opt.RetryMax}
	rejections := 0
	// After ejabberd closed a stream, every batch that was in flight on it is
	// sent again alone on a connection: only a batch that closes the stream
	// on its own counts as poison, never its neighbours.
	alone := false
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			s.m.resends.Inc()
			// The first resend goes out at once on another connection; repeated
			// losses (ejabberd down) back off.
			if attempt > 1 {
				if err := backoff.Sleep(ctx, policy.Delay(attempt-2)); err != nil {
					return err
				}
			}
		}
		link, err := s.links.Acquire(ctx, alone)
		if err != nil {
			return fmt.Errorf("delivery: no connection: %w", err)
		}
		err = s.send(ctx, link, tmpl, &b, sc)
		link.Release()
		if err == nil {
			s.m.batches.WithLabelValues("delivered").Inc()
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var rj rejecter
		if errors.As(err, &rj) && rj.Rejected() {
			if !alone {
				alone = true
				s.m.isolated.Inc()
				continue
			}
			rejections++
			if rejections > s.opt.Rejections {
				s.m.batches.WithLabelValues("poison").Inc()
				return &announcement.BadRecordError{Reason: fmt.Sprintf(
					"ejabberd closed the stream %d times while this batch was in flight, last: %v", rejections, err), Label: "poison"}
			}
		}
		s.log.Debug().Err(err).Str("announcement", b.AnnouncementID).Int("seq", b.Seq).
			Int("attempt", attempt+1).Msg("connection lost before the fence; resending the batch")
	}
}

// send renders b chunk by chunk onto link, paced by the link's limiter, then
// fences. Invalid recipients are skipped (they were counted by Deliver): a
// username is never sent raw.
func (s *Sender) send(ctx context.Context, link Link, tmpl *stanza.Template, b *announcement.Batch, sc *scratch) error {
	lim := s.limiters[link.Slot()%len(s.limiters)]
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	n := len(b.Recipients)
	for i := 0; i < n; {
		sc.buf = sc.buf[:0]
		k := 0
		for ; i < n && k < s.chunk; i++ {
			var err error
			sc.jid, err = stanza.AppendJID(sc.jid[:0], b.Recipients[i], s.opt.UserDomain)
			if err != nil || len(sc.jid) == 0 {
				continue
			}
			// AppendRender only reads the JID during the call, so a view of the
			// scratch buffer saves an allocation per recipient.
			sc.buf = tmpl.AppendRender(sc.buf, unsafe.String(&sc.jid[0], len(sc.jid)), b.FirstIncID+uint64(i))
			k++
		}
		if k == 0 {
			continue
		}
		if lim != nil {
			res := lim.ReserveN(time.Now(), k)
			if d := res.Delay(); d > 0 {
				// What is buffered goes out before we sleep, so the pacing shows on the wire.
				if err := link.Flush(); err != nil {
					res.Cancel()
					return err
				}
				if timer == nil {
					timer = time.NewTimer(d)
				} else {
					timer.Reset(d)
				}
				select {
				case <-timer.C:
					s.m.rateWait.Add(d.Seconds())
				case <-ctx.Done():
					res.Cancel()
					return ctx.Err()
				}
			}
		}
		if err := link.Write(sc.buf); err != nil {
			return err
		}
		s.m.sent.Add(float64(k))
	}
	return link.Fence(ctx)
}

// Metrics of the use case.
type Metrics struct {
	sent     prometheus.Counter
	resends  prometheus.Counter
	invalid  prometheus.Counter
	rateWait prometheus.Counter
	isolated prometheus.Counter
	batches  *prometheus.CounterVec
}

// NewMetrics registers the delivery metrics on reg (the service's, which
// names and labels them: announcer_sender_…{node}).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &Metrics{
		sent:     c("stanzas_sent_total", "Stanzas written to ejabberd (resent ones included)."),
		resends:  c("resends_total", "Batches sent again because their connection died before the fence."),
		invalid:  c("invalid_recipients_total", "Recipients skipped because they are not valid JIDs."),
		rateWait: c("rate_limit_wait_seconds_total", "Time spent waiting for the per-connection rate limit."),
		isolated: c("isolated_resends_total", "Batches sent again alone on a connection after ejabberd closed a stream they shared."),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "batches_total", Help: "Batches finished, by outcome (delivered, empty, poison).",
		}, []string{"outcome"}),
	}
	reg.MustRegister(m.sent, m.resends, m.invalid, m.rateWait, m.isolated, m.batches)
	return m
}
