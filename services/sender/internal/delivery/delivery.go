// Package delivery is the sender's use case: render a delivery batch for each
// recipient, send it through a rate-limited connection, fence it, and send it
// again on another connection when the first one dies before the fence.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/metric"
	"github.com/announcer/announcer/pkg/progress"
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
	// FenceMulticast returns nil once ejabberd's multicast service handled
	// every multicast written before it.
	FenceMulticast(ctx context.Context) error
	// MulticastRefusals counts the multicasts the service refused as a whole.
	MulticastRefusals() int64
	Release()
}

// Multicast is the XEP-0033 mode: a batch whose template allows it
// (stanza.Template.Multicast) goes out as multicasts to Service of up to
// Max recipients each. The sender switches it on once the service proved
// it takes Max addresses from us, and off if it ever refuses one.
type Multicast struct {
	Service string
	Max     int
	// Home is the JID this process connects as (the component's). Only a
	// template whose from is in Home's domain goes as multicasts: the
	// service sends a refusal to the multicast's from, so any other from
	// would lose it unseen, and it picks its limit from the from's domain,
	// which the probe (sent from Home) proved for Home alone. Empty: none.
	Home string
	on   atomic.Bool
}

// home reports whether a multicast from from would have its refusal come
// back to this process: ejabberd routes any JID of Home's domain to it.
func (m *Multicast) home(from string) bool {
	return m.Home != "" && from != "" && strings.EqualFold(domainOf(from), domainOf(m.Home))
}

// domainOf is a JID's domain part (no resource, no local part).
func domainOf(jid string) string {
	jid, _, _ = strings.Cut(jid, "/")
	if i := strings.IndexByte(jid, '@'); i >= 0 {
		jid = jid[i+1:]
	}
	return jid
}

// Enable switches the mode on or off for the batches that start from now on.
func (m *Multicast) Enable(on bool) {
	if m != nil {
		m.on.Store(on)
	}
}

// Enabled reports whether batches go out as multicasts.
func (m *Multicast) Enabled() bool { return m != nil && m.on.Load() && m.Max > 0 }

// errRefused: the multicast service refused a multicast while the batch was
// in flight; the batch goes again one stanza per recipient.
var errRefused = errors.New("delivery: the multicast service refused a multicast")

// Requeuer writes a batch to send again back to the deliveries topic (and
// lane) it came from, marked with why (AgainShutdown, AgainRefused) so that
// the handler gives it to Sender.Again rather than Deliver; nil once the bus
// acknowledged it. Its offset was committed with the batch's fence: the
// record written back is what keeps it across a stop or a crash.
type Requeuer interface {
	Requeue(ctx context.Context, b announcement.Batch, why string) error
}

// Why a batch is sent again whole (the mark of a record written back).
const (
	// AgainShutdown: fenced on a connection just before the server ended it
	// cleanly, which may drop what it had acknowledged.
	AgainShutdown = "shutdown"
	// AgainRefused: sent as multicasts around a refusal that may be one of its.
	AgainRefused = "multicast-refused"
)

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

// Progress is the announcements' progress store as the sender uses it (a
// *progress.Tracker): it records fenced steps, resends and dead letters,
// says where a slow batch was fenced before, and whether an announcement
// was cancelled. Its failures never stop a delivery.
type Progress interface {
	Fenced(id string, s progress.Step)
	Resent(id string, written int)
	Dead(id, batch string, length int)
	Position(ctx context.Context, id, batch, digest string) (int, error)
	Cancelled(ctx context.Context, id string) bool
}

type noProgress struct{}

func (noProgress) Fenced(string, progress.Step)                                  {}
func (noProgress) Resent(string, int)                                            {}
func (noProgress) Dead(string, string, int)                                      {}
func (noProgress) Position(context.Context, string, string, string) (int, error) { return 0, nil }
func (noProgress) Cancelled(context.Context, string) bool                        { return false }

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
	// StepInterval is how long a batch is sent between fences: a batch the
	// rate limit makes slower than this is fenced in steps, each recorded,
	// so that a restart resumes it at its last step (0 = 1 s).
	StepInterval time.Duration
	// Progress records deliveries (nil: nothing is recorded).
	Progress Progress
	// Multicast, when set and enabled, sends batches as XEP-0033 multicasts.
	Multicast *Multicast
	// ShutdownResend is how far back the batches fenced on a connection are
	// sent again when the server ends it cleanly (a shutdown may drop what it
	// acknowledged but had not handed to its clients yet); 0 = 3 s.
	ShutdownResend time.Duration
	// Waiting is the context a batch waits under for what it needs before
	// an attempt (a connection, the backoff after losing one): the stage's,
	// which ends once the consumer stops taking records, so a stop does not
	// wait for a batch that is not sending. nil: the handler's context.
	Waiting func(ctx context.Context) (context.Context, context.CancelFunc)
	// Requeue writes the batches to send again back to their topic. nil:
	// Run sends them again itself, and what it holds when it stops is lost
	// (logged): for tests and benchmarks without a bus.
	Requeue Requeuer
	// FlushTimeout is how long Run, stopped, still tries to write back the
	// batches it holds (0 = 4 s: it starts after the drain and the final
	// commit, within the 15 s the runtime's stop allows beyond the drain).
	FlushTimeout time.Duration
	// MinWait is the shortest wait the rate limit is paid in: a shorter debt
	// is carried into the next chunk's, so a fast rate costs a timer wake-up
	// and a flush every MinWait rather than every chunk (0 = 10 ms; the
	// connection then runs at most MinWait × RatePerConn stanzas ahead).
	MinWait time.Duration
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

	// recent are the batches fenced in the last ShutdownResend, newest last;
	// inflight the batches being sent (their steps may be fenced on a
	// connection the server is about to close).
	rmu      sync.Mutex
	recent   []fenced
	inflight map[*steps]struct{}
	// refusals counts MulticastRefused calls (under rmu): a multicast batch
	// that saw it change while in flight goes again whole.
	refusals int64

	// pending are the batches to send again that Run has not written back
	// yet, oldest first; only Run removes them, once written.
	qmu     sync.Mutex
	pending []pending
	closed  bool          // Run stopped: nothing writes back any more
	wake    chan struct{} // one token: pending grew

	foreignLogged atomic.Bool // the foreign from that keeps multicast off was logged
}

// pending is a batch to send again, and why.
type pending struct {
	b   announcement.Batch
	why string
}

// fenced is a batch kept for a resend, its recipients packed end to end:
// about a third of the memory of a decoded batch's strings, which the window
// would otherwise hold for up to maxRecent batches.
type fenced struct {
	b     announcement.Batch // Recipients nil: they are in names
	names string
	ends  []uint32 // recipient i is names[ends[i-1]:ends[i]]
	on    []slotFence
	at    time.Time
	// multicast: the batch began as multicasts, which a refusal read after
	// its fence (on another connection) may have dropped.
	multicast bool
}

// slotFence is the last fence of a batch on one connection slot.
type slotFence struct {
	slot int
	at   time.Time
}

// fencedOn reports whether a fence in on was on slot, since since.
func fencedOn(on []slotFence, slot int, since time.Time) bool {
	for _, f := range on {
		if f.slot == slot && !f.at.Before(since) {
			return true
		}
	}
	return false
}

func pack(b announcement.Batch, on []slotFence, at time.Time, multicast bool) fenced {
	n := 0
	for _, r := range b.Recipients {
		n += len(r)
	}
	names := make([]byte, 0, n)
	ends := make([]uint32, len(b.Recipients))
	for i, r := range b.Recipients {
		names = append(names, r...)
		ends[i] = uint32(len(names))
	}
	b.Recipients = nil
	return fenced{b: b, names: string(names), ends: ends, on: slices.Clone(on), at: at, multicast: multicast}
}

// batch is the batch again, its recipients slices of one string.
func (f *fenced) batch() announcement.Batch {
	b := f.b
	b.Recipients = make([]string, len(f.ends))
	start := uint32(0)
	for i, end := range f.ends {
		b.Recipients[i] = f.names[start:end]
		start = end
	}
	return b
}

// maxRecent bounds the batches kept for a resend after a shutdown.
const maxRecent = 256

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
	if opt.StepInterval <= 0 {
		opt.StepInterval = time.Second
	}
	if opt.Progress == nil {
		opt.Progress = noProgress{}
	}
	if opt.ShutdownResend <= 0 {
		opt.ShutdownResend = 3 * time.Second
	}
	if opt.MinWait <= 0 {
		opt.MinWait = 10 * time.Millisecond
	}
	if opt.FlushTimeout <= 0 {
		opt.FlushTimeout = 4 * time.Second
	}
	s := &Sender{
		wake:  make(chan struct{}, 1),
		opt:   opt,
		log:   log.With().Str("component", "delivery").Logger(),
		m:     m,
		links: links,
		chunk: chunkFor(opt.RatePerConn),
	}
	s.limiters = make([]*rate.Limiter, opt.Conns)
	for i := range s.limiters {
		if opt.RatePerConn > 0 {
			// Burst = one chunk: the bucket is exact over any window longer than a
			// chunk and MinWait.
			s.limiters[i] = rate.NewLimiter(rate.Limit(opt.RatePerConn), s.chunk)
		}
	}
	s.bufs.New = func() any { return new(scratch) }
	s.inflight = make(map[*steps]struct{})
	return s
}

// scratch is the per-call rendering memory: one chunk of stanzas and a JID.
// Rendering per chunk (again on a resend) keeps memory at one chunk per
// batch in flight, whatever the template size.
type scratch struct {
	buf []byte
	jid []byte
}

// Deliver sends b and returns nil once ejabberd has processed all of it (or
// the announcement was cancelled), a *announcement.BadRecordError when it
// never can be, or ctx's error.
func (s *Sender) Deliver(ctx context.Context, b announcement.Batch) error {
	return s.deliver(ctx, b, true, false)
}

func (s *Sender) waiting(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.opt.Waiting == nil {
		return ctx, func() {}
	}
	return s.opt.Waiting(ctx)
}

// Again delivers a batch written back by the Requeuer (why is its mark): from
// its first recipient, since the progress store has it fenced to its end,
// and one stanza per recipient unless the mark is AgainShutdown (an unknown
// mark too). Otherwise as Deliver.
func (s *Sender) Again(ctx context.Context, b announcement.Batch, why string) error {
	return s.deliver(ctx, b, false, why != AgainShutdown)
}

// deliver is Deliver; resume false starts a slow batch at its first
// recipient whatever the progress store says was fenced, and unicast never
// sends multicasts.
func (s *Sender) deliver(ctx context.Context, b announcement.Batch, resume, unicast bool) error {
	p := s.opt.Progress
	if p.Cancelled(ctx, b.AnnouncementID) {
		s.m.batches.WithLabelValues("cancelled").Inc()
		return nil
	}
	tmpl, err := s.opt.Templates.Get(b.AnnouncementID, b.Template)
	if err != nil {
		p.Dead(b.AnnouncementID, progress.BatchKey(&b), len(b.Recipients))
		return &announcement.BadRecordError{Reason: "template: " + err.Error(), Label: "template"}
	}
	sc := s.bufs.Get().(*scratch)
	defer s.bufs.Put(sc)
	st := &steps{batch: &b, key: progress.BatchKey(&b), digest: "-", m: s.m, fencing: -1}
	// A batch with no valid recipient needs no connection. Looking for the
	// first valid one costs one JID for a normal batch.
	if !anyValid(b.Recipients, s.opt.UserDomain, sc) {
		st.invalid = len(b.Recipients)
		st.done(p, len(b.Recipients))
		s.m.batches.WithLabelValues("empty").Inc()
		return nil
	}
	// A batch the rate limit makes slow is fenced in steps, and resumes at
	// the step a previous attempt (another process's, before a crash) fenced.
	if s.opt.RatePerConn > 0 && time.Duration(len(b.Recipients))*time.Second/time.Duration(s.opt.RatePerConn) >= s.opt.StepInterval {
		st.slow, st.digest = true, progress.Digest(&b)
	}
	if st.slow && resume {
		pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		pos, err := p.Position(pctx, b.AnnouncementID, st.key, st.digest)
		cancel()
		if err == nil && pos > 0 && pos <= len(b.Recipients) {
			st.from = pos
			s.m.resumed.Add(float64(pos))
		}
	}

	s.track(st)
	defer s.untrack(st)

	policy := backoff.Policy{Initial: s.opt.RetryMin, Max: s.opt.RetryMax}
	multicast := !unicast && s.opt.Multicast.Enabled() && tmpl.Multicast()
	if multicast && !s.opt.Multicast.home(tmpl.From()) {
		multicast = false
		s.m.multicastForeign.Inc()
		if !s.foreignLogged.Swap(true) {
			s.log.Warn().Str("announcement", b.AnnouncementID).Str("from", tmpl.From()).Str("home", s.opt.Multicast.Home).
				Msg("a template's from is not in this sender's component domain: its batches go one stanza per recipient, as the multicast service would send a refusal to that from, unseen (logged once)")
		}
	}
	began, refusals, start := multicast, s.refusalCount(), st.from
	rejections := 0
	// After ejabberd closed a stream, every batch that was in flight on it is
	// sent again alone on a connection: only a batch that closes the stream
	// on its own counts as poison, never its neighbours.
	alone := false
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			s.m.resends.Inc()
			p.Resent(b.AnnouncementID, st.written)
			st.written = 0
			// The first resend goes out at once on another connection; repeated
			// losses (ejabberd down) back off.
			if attempt > 1 {
				wctx, cancel := s.waiting(ctx)
				err := backoff.Sleep(wctx, policy.Delay(attempt-2))
				cancel()
				if err != nil {
					return err
				}
			}
		}
		wctx, cancel := s.waiting(ctx)
		link, err := s.links.Acquire(wctx, alone)
		cancel()
		if err != nil {
			return fmt.Errorf("delivery: no connection: %w", err)
		}
		err = s.send(ctx, link, tmpl, st, sc, multicast)
		link.Release()
		if err == nil {
			s.remember(st, began, refusals)
		}
		if errors.Is(err, errRefused) {
			// Everything since the last fence goes again, one stanza per
			// recipient: from where the multicasts began, that is all of them,
			// and the batch need not go again once done.
			if st.from <= start {
				began = false
			}
			multicast = false
			s.opt.Multicast.Enable(false)
			s.m.multicastOff.Inc()
			s.log.Error().Str("announcement", b.AnnouncementID).
				Msg("the multicast service refused a multicast: sending one stanza per recipient from now on (raise mod_multicast limits, then restart the sender)")
			continue
		}
		if err == nil {
			if st.cancelled {
				s.m.batches.WithLabelValues("cancelled").Inc()
			} else {
				s.m.batches.WithLabelValues("delivered").Inc()
			}
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
			if multicast {
				// Its multicasts alone closed the stream: one stanza per recipient
				// is what ejabberd takes from any template it accepts, and a
				// multicast of many addresses can pass the listener's
				// max_stanza_size where each stanza would not. Only a batch that
				// closes the stream one stanza per recipient is poison.
				multicast = false
				s.m.multicastRejected.Inc()
				s.log.Warn().Err(err).Str("announcement", b.AnnouncementID).Int("seq", b.Seq).
					Msg("ejabberd closed the stream for this batch's multicasts alone: sending it one stanza per recipient")
				continue
			}
			rejections++
			if rejections > s.opt.Rejections {
				s.m.batches.WithLabelValues("poison").Inc()
				p.Dead(b.AnnouncementID, st.key, len(b.Recipients))
				return &announcement.BadRecordError{Reason: fmt.Sprintf(
					"ejabberd closed the stream %d times while this batch was in flight, last: %v", rejections, err), Label: "poison"}
			}
		}
		s.log.Debug().Err(err).Str("announcement", b.AnnouncementID).Int("seq", b.Seq).
			Int("attempt", attempt+1).Msg("connection lost before the fence; resending from the last fence")
	}
}

func (s *Sender) refusalCount() int64 {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return s.refusals
}

func (s *Sender) track(st *steps) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.inflight[st] = struct{}{}
}

func (s *Sender) untrack(st *steps) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	delete(s.inflight, st)
}

// fence runs a fence of st on slot, noting it while it is out and once it passed.
func (s *Sender) fence(ctx context.Context, fence func(context.Context) error, st *steps, slot int) error {
	s.rmu.Lock()
	st.fencing = slot
	s.rmu.Unlock()
	err := fence(ctx)
	now := time.Now()
	s.rmu.Lock()
	defer s.rmu.Unlock()
	st.fencing = -1
	if err != nil {
		return err
	}
	for i := range st.on {
		if st.on[i].slot == slot {
			st.on[i].at = now
			return nil
		}
	}
	st.on = append(st.on, slotFence{slot: slot, at: now})
	return nil
}

// remember keeps a fenced batch for ShutdownResend, and stops tracking it;
// not one a clean close already queued whole. A multicast batch that a
// refusal came during (refusals moved since it began) goes again whole
// instead: the refused multicast may be one of its steps fenced before.
func (s *Sender) remember(st *steps, multicast bool, refusals int64) {
	now := time.Now()
	s.rmu.Lock()
	defer s.rmu.Unlock()
	delete(s.inflight, st)
	switch {
	case st.queued:
		return
	case multicast && s.refusals != refusals:
		s.queue([]announcement.Batch{*st.batch}, s.m.multicastOff, AgainRefused)
		return
	}
	i := 0
	for i < len(s.recent) && (now.Sub(s.recent[i].at) > s.opt.ShutdownResend || len(s.recent)-i >= maxRecent) {
		i++
	}
	clear(s.recent[:i]) // the backing array must not keep the batches that left the window
	s.recent = append(s.recent[i:], pack(*st.batch, st.on, now, multicast))
}

// ServerClosed is told that the server ended the stream of connection slot
// cleanly: a shutdown, during which ejabberd may drop stanzas it had already
// acknowledged. The batches fenced on it in the last ShutdownResend go again
// (Run writes them back): duplicates for who got them, nothing lost for the rest.
func (s *Sender) ServerClosed(slot int) {
	since := time.Now().Add(-s.opt.ShutdownResend)
	s.rmu.Lock()
	var whole []announcement.Batch
	for st := range s.inflight {
		// A batch still being sent goes again whole, written back now: the
		// steps it fenced here are not sent again by its next attempt, which
		// starts at its last fence, and it may never end here (a handover, a
		// crash). One whose fence on this connection was out may have had it
		// pass as the close came.
		if !st.queued && (st.fencing == slot || fencedOn(st.on, slot, since)) {
			st.queued = true
			whole = append(whole, *st.batch)
		}
	}
	s.queue(whole, s.m.shutdownResends, AgainShutdown)
	s.rmu.Unlock()
	s.again(func(f *fenced) bool { return fencedOn(f.on, slot, since) }, s.m.shutdownResends, AgainShutdown, false)
}

// MulticastRefused is told that the multicast service refused a multicast.
// ejabberd sends its error and a later multicast fence to any connection of
// the component, so the fence of the refused multicast's batch may have been
// read first, and the batch committed. Multicast goes off, and the batches
// fenced as multicasts in the last ShutdownResend go again one stanza per
// recipient: duplicates for who got them, nothing lost for the rest.
func (s *Sender) MulticastRefused() {
	s.opt.Multicast.Enable(false)
	s.again(func(f *fenced) bool { return f.multicast }, s.m.multicastOff, AgainRefused, true)
}

// again queues for Run the batches fenced in the last ShutdownResend that
// match, and forgets them; refused counts a multicast refusal.
func (s *Sender) again(match func(*fenced) bool, sent prometheus.Counter, why string, refused bool) {
	now := time.Now()
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if refused {
		s.refusals++
	}
	var again []announcement.Batch
	kept := s.recent[:0]
	for _, f := range s.recent {
		if match(&f) && now.Sub(f.at) <= s.opt.ShutdownResend {
			again = append(again, f.batch())
			continue
		}
		kept = append(kept, f)
	}
	clear(s.recent[len(kept):])
	s.recent = kept
	s.queue(again, sent, why)
}

// queue hands batches to Run without waiting (callers hold rmu, and may be
// a connection's read loop). The queue has no bound: Run empties it at the
// pace of a Kafka write, and a batch left out would be lost.
func (s *Sender) queue(batches []announcement.Batch, sent prometheus.Counter, why string) {
	if len(batches) == 0 {
		return
	}
	s.qmu.Lock()
	closed := s.closed
	if !closed {
		for _, b := range batches {
			s.pending = append(s.pending, pending{b: b, why: why})
		}
	}
	s.qmu.Unlock()
	if closed {
		for _, b := range batches {
			s.lost(pending{b: b, why: why}, "it came after the sender stopped writing batches back")
		}
		return
	}
	sent.Add(float64(len(batches)))
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run writes back (see Requeuer), until ctx ends, the batches a server
// shutdown or a multicast refusal may have dropped; each leaves memory only
// once the write is acknowledged. Stopped, it still tries for FlushTimeout to
// write back what it holds, then logs and counts what it could not.
func (s *Sender) Run(ctx context.Context) error {
	defer s.flush()
	s.writeBack(ctx, true)
	return nil
}

// writeBack writes back the pending batches, oldest first, retrying with
// backoff, until ctx ends; with wait false it also returns once none is
// left (the flush).
func (s *Sender) writeBack(ctx context.Context, wait bool) {
	policy := backoff.Policy{Initial: s.opt.RetryMin, Max: s.opt.RetryMax}
	for failures := 0; ; {
		p, ok := s.head()
		if !ok {
			if !wait {
				return
			}
			select {
			case <-s.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		if err := s.requeue(ctx, p); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn().Err(err).Str("announcement", p.b.AnnouncementID).Int("seq", p.b.Seq).
				Msg("writing back a batch to send again failed; retrying")
			if backoff.Sleep(ctx, policy.Delay(failures)) != nil {
				return
			}
			failures++
			continue
		}
		failures = 0
		s.pop()
	}
}

// flush writes back what is still pending once Run stops (the runtime
// closes the bus writer only after Run returned), then closes the queue.
func (s *Sender) flush() {
	if s.opt.Requeue != nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.opt.FlushTimeout)
		defer cancel()
		s.writeBack(ctx, false)
	}
	s.qmu.Lock()
	s.closed = true
	left := s.pending
	s.pending = nil
	s.qmu.Unlock()
	for _, p := range left {
		s.lost(p, "the sender stopped before it was written back")
	}
}

// requeue writes p back, or without a Requeuer sends it again here.
func (s *Sender) requeue(ctx context.Context, p pending) error {
	if s.opt.Requeue == nil {
		err := s.Again(ctx, p.b, p.why)
		if err != nil && ctx.Err() == nil {
			s.log.Warn().Err(err).Str("announcement", p.b.AnnouncementID).Msg("a batch sent again (after a server shutdown or a multicast refusal) failed")
		}
		return ctx.Err()
	}
	if err := s.opt.Requeue.Requeue(ctx, p.b, p.why); err != nil {
		return err
	}
	s.m.requeued.Inc()
	return nil
}

func (s *Sender) head() (pending, bool) {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if len(s.pending) == 0 {
		return pending{}, false
	}
	return s.pending[0], true
}

// pop forgets the oldest pending batch (only Run's loop calls it).
func (s *Sender) pop() {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	s.pending[0] = pending{}
	s.pending = s.pending[1:]
}

// lost reports a batch to send again that nothing will send: enough to find
// it in its deliveries topic and replay it.
func (s *Sender) lost(p pending, why string) {
	s.m.requeueLost.Inc()
	s.log.Error().Str("announcement", p.b.AnnouncementID).Int("shard", p.b.Shard).Int("seq", p.b.Seq).
		Str("node", p.b.Node).Int("recipients", len(p.b.Recipients)).Str("reason", p.why).
		Msg("a batch to send again is dropped: " + why + "; some of its recipients may not have it. Replay its record from the deliveries topic with the header x-announcer-again: shutdown (without it, a batch fenced to its end resumes there and sends nothing)")
}

func anyValid(recipients []string, domain string, sc *scratch) bool {
	for _, user := range recipients {
		if j, err := stanza.AppendJID(sc.jid[:0], user, domain); err == nil && len(j) > 0 {
			return true
		}
	}
	return false
}

// steps is a batch's way through its fences: recipients before from are
// fenced (processed by ejabberd), and every fence is recorded as a step.
type steps struct {
	batch     *announcement.Batch
	key       string
	digest    string // "-": a fast batch, whose steps are never resumed
	slow      bool   // fenced in steps, cancellable between chunks
	from      int
	sent      int // valid stanzas written since the last fence
	invalid   int // invalid recipients passed since the last fence
	written   int // stanzas written since the last fence, for the record of a resend
	cancelled bool
	m         *Metrics

	// Under Sender.rmu: the slot of a fence that is out (-1: none), the
	// slots fenced on, and whether a clean close queued it to go again whole.
	fencing int
	on      []slotFence
	queued  bool
}

// done records the fence of everything up to pos; the invalid recipients
// of the step are counted here, once, whatever the attempts before.
func (st *steps) done(p Progress, pos int) {
	p.Fenced(st.batch.AnnouncementID, progress.Step{Batch: st.key, From: st.from, Pos: pos, Len: len(st.batch.Recipients),
		Confirmed: st.sent, Invalid: st.invalid, Written: st.written, Digest: st.digest})
	if st.invalid > 0 {
		st.m.invalid.Add(float64(st.invalid))
	}
	st.from, st.sent, st.invalid, st.written = pos, 0, 0, 0
}

// send renders the batch from its last fence chunk by chunk onto link,
// paced by the link's limiter, and fences (in steps when it is slow). Each
// recipient's JID is built once per attempt; an invalid one is skipped and
// counted with its step: a username is never sent raw.
func (s *Sender) send(ctx context.Context, link Link, tmpl *stanza.Template, st *steps, sc *scratch, multicast bool) error {
	lim := s.limiters[link.Slot()%len(s.limiters)]
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	fence, chunk := link.Fence, s.chunk
	var refusals int64
	if multicast {
		fence, chunk = link.FenceMulticast, s.opt.Multicast.Max
		refusals = link.MulticastRefusals()
		inner := fence
		fence = func(ctx context.Context) error {
			if err := inner(ctx); err != nil {
				return err
			}
			if link.MulticastRefusals() != refusals {
				return errRefused
			}
			return nil
		}
	}
	b := st.batch
	n := len(b.Recipients)
	st.sent, st.invalid = 0, 0
	lastFence := time.Now()
	i := st.from
	for i < n {
		if st.slow {
			if s.opt.Progress.Cancelled(ctx, b.AnnouncementID) {
				// What went out is fenced, so the record says exactly what was sent.
				st.cancelled = true
				break
			}
			if i > st.from && time.Since(lastFence) >= s.opt.StepInterval {
				if err := s.fence(ctx, fence, st, link.Slot()); err != nil {
					return err
				}
				st.done(s.opt.Progress, i)
				lastFence = time.Now()
			}
		}
		sc.buf = sc.buf[:0]
		if multicast {
			sc.buf = tmpl.AppendMulticastHead(sc.buf, s.opt.Multicast.Service)
		}
		k := 0
		for ; i < n && k < chunk; i++ {
			var err error
			sc.jid, err = stanza.AppendJID(sc.jid[:0], b.Recipients[i], s.opt.UserDomain)
			if err != nil || len(sc.jid) == 0 {
				st.invalid++
				continue
			}
			// The renderers only read the JID during the call, so a view of the
			// scratch buffer saves an allocation per recipient.
			jid := unsafe.String(&sc.jid[0], len(sc.jid))
			if multicast {
				sc.buf = stanza.AppendBcc(sc.buf, jid)
			} else {
				sc.buf = tmpl.AppendRender(sc.buf, jid, b.FirstIncID+uint64(i))
			}
			k++
		}
		if k == 0 {
			continue
		}
		if multicast {
			sc.buf = tmpl.AppendMulticastTail(sc.buf)
			s.m.multicasts.Inc()
		}
		// The rate limit counts recipients, whatever the stanzas that carry them.
		if err := s.pace(ctx, lim, k, link, &timer); err != nil {
			return err
		}
		if err := link.Write(sc.buf); err != nil {
			return err
		}
		st.sent += k
		st.written += k
		s.m.sent.Add(float64(k))
	}
	// Nothing written since the last fence (every recipient invalid, say):
	// nothing to prove.
	if st.written > 0 {
		if err := s.fence(ctx, fence, st, link.Slot()); err != nil {
			return err
		}
	}
	// i is n, or where a cancel stopped the batch.
	st.done(s.opt.Progress, i)
	return nil
}

// pace waits until the connection's limiter allows k more recipients,
// flushing what is buffered first so the pacing shows on the wire. A
// reservation is at most the limiter's burst, so a large multicast is
// paid for in several.
func (s *Sender) pace(ctx context.Context, lim *rate.Limiter, k int, link Link, timer **time.Timer) error {
	if lim == nil {
		return nil
	}
	for k > 0 {
		n := min(k, lim.Burst())
		k -= n
		res := lim.ReserveN(time.Now(), n)
		d := res.Delay()
		if d < s.opt.MinWait {
			// The bucket stays in debt, so the next reservation waits for it too.
			continue
		}
		if err := link.Flush(); err != nil {
			res.Cancel()
			return err
		}
		if *timer == nil {
			*timer = time.NewTimer(d)
		} else {
			(*timer).Reset(d)
		}
		select {
		case <-(*timer).C:
			s.m.rateWait.Add(d.Seconds())
		case <-ctx.Done():
			res.Cancel()
			return ctx.Err()
		}
	}
	return nil
}

// Metrics of the use case.
type Metrics struct {
	sent     prometheus.Counter
	resends  prometheus.Counter
	invalid  prometheus.Counter
	rateWait prometheus.Counter
	isolated prometheus.Counter
	resumed  prometheus.Counter
	batches  *prometheus.CounterVec

	multicasts   prometheus.Counter
	multicastOff prometheus.Counter

	shutdownResends  prometheus.Counter
	multicastForeign prometheus.Counter
	// multicastRejected counts batches sent again one stanza per recipient after
	// ejabberd closed the stream for their multicast alone.
	multicastRejected prometheus.Counter
	requeued          prometheus.Counter
	requeueLost       prometheus.Counter
}

// NewMetrics registers the delivery metrics on reg (the service's, which
// names and labels them: announcer_sender_…{node}).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	s := metric.Must(reg)
	return &Metrics{
		sent:         s.Counter("stanzas_sent_total", "Stanzas written to ejabberd, resent ones included (in multicast mode: recipients addressed)."),
		resends:      s.Counter("resends_total", "Batches sent again because their connection died before the fence."),
		invalid:      s.Counter("invalid_recipients_total", "Recipients skipped because they are not valid JIDs."),
		rateWait:     s.Counter("rate_limit_wait_seconds_total", "Time spent waiting for the per-connection rate limit."),
		isolated:     s.Counter("isolated_resends_total", "Batches sent again alone on a connection after ejabberd closed a stream they shared."),
		resumed:      s.Counter("resumed_recipients_total", "Recipients not sent again because an earlier attempt (before a restart) had fenced them."),
		batches:      s.CounterVec("batches_total", "Batches finished, by outcome (delivered, empty, poison, cancelled).", "outcome"),
		multicasts:   s.Counter("multicasts_sent_total", "XEP-0033 multicast stanzas written (each carries up to [sender] multicast_max recipients)."),
		multicastOff: s.Counter("multicast_fallbacks_total", "Batches sent again one stanza per recipient because the multicast service refused a multicast (multicast is then off)."),
		shutdownResends: s.Counter("shutdown_resends_total",
			"Batches fenced on a connection in the seconds before the server ended it cleanly (a shutdown), sent again (written back to their topic first)."),
		multicastRejected: s.Counter("multicast_rejected_total",
			"Batches ejabberd closed the stream for while sent alone as multicasts (one over the listener's max_stanza_size, say), sent again one stanza per recipient."),
		multicastForeign: s.Counter("multicast_foreign_from_total",
			"Batches sent one stanza per recipient while multicast is on, because their template's from is not in the component's domain (a refusal would go there, unseen)."),
		requeued: s.Counter("requeued_total",
			"Batches to send again (after a server shutdown or a multicast refusal) written back to their deliveries topic."),
		requeueLost: s.Counter("requeue_lost_total",
			"Batches to send again that the sender stopped before writing back: logged with announcement, shard and seq for a replay."),
	}
}
