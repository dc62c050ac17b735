package audience

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/progress"
	"github.com/announcer/announcer/pkg/stanza"
)

// Node is one ejabberd node as routing sees it.
type Node struct {
	Name              string
	PresenceAddresses []string // presence values that mean "online on this node"
}

// Config tunes a Resolver.
type Config struct {
	Nodes     []Node
	BatchSize int // recipients per delivery batch
	// ShardSize is the members per shard task (on average: ranges are cut by member id).
	ShardSize int
	PageSize  int // members per keyset page
	ScanCount int // SSCAN COUNT hint for all-online scans
	// MaxInFlight bounds the batch writes of one task awaiting Kafka acks.
	MaxInFlight int
	// MaxBatchBytes cuts a batch early when its encoding could exceed a Kafka
	// message (0 = no limit besides BatchSize).
	MaxBatchBytes int
	// RouteUsers reads presence for users-list announcements, only to route them
	// (off for a presence source that names no servers).
	RouteUsers bool
	// UserDomain is the users' XMPP domain: a users-list recipient of it is
	// looked up by its local part, the key of the presence model.
	UserDomain string
	// CountMaxAge is how long a channel's cut into shards serves later
	// announcements of the channel (0: cut each time). Only channels of more
	// than one shard are remembered.
	CountMaxAge time.Duration
	Retry       backoff.Policy
	// PermanentRetryFor is how long a run of ErrPermanent failures of one
	// operation is retried before the task gives up and the announcement is
	// dead-lettered (0: DefaultPermanentRetryFor).
	PermanentRetryFor time.Duration
	// Templates, when set, checks each announcement's template (once per
	// announcement, cached): one that ejabberd would refuse must not become
	// a million bad stanzas.
	Templates Templates
	// Progress records what each task resolved (nil: nothing is recorded).
	Progress Progress
}

// Templates checks a template under the connection mode's rules (a *stanza.Cache).
type Templates interface {
	Get(announcementID, raw string) (*stanza.Template, error)
}

func (c *Config) validate() error {
	var errs []error
	if len(c.Nodes) == 0 {
		errs = append(errs, errors.New("no nodes"))
	}
	if c.BatchSize < 1 || c.ShardSize < 1 || c.PageSize < 1 {
		errs = append(errs, fmt.Errorf("batch, shard and page sizes must be >= 1 (have %d, %d, %d)", c.BatchSize, c.ShardSize, c.PageSize))
	}
	if c.ShardSize < c.PageSize {
		errs = append(errs, fmt.Errorf("shard size %d < page size %d", c.ShardSize, c.PageSize))
	}
	seen := map[string]string{}
	for _, n := range c.Nodes {
		for _, a := range n.PresenceAddresses {
			if other, dup := seen[a]; dup && other != n.Name {
				errs = append(errs, fmt.Errorf("presence address %q belongs to nodes %s and %s", a, other, n.Name))
			}
			seen[a] = n.Name
		}
	}
	return errors.Join(errs...)
}

// Resolver turns events into batches. It is safe for concurrent use: each
// Resolve call is one task with its own state.
type Resolver struct {
	cfg      Config
	progress Progress
	members  MemberStore
	presence Presence
	batches  BatchSink
	tasks    TaskSink
	route    *router
	log      zerolog.Logger
	warn     zerolog.Logger // sampled: a progress store outage would log per task
	m        *metrics
	cuts     *cutCache
}

// New builds a Resolver and registers its metrics.
func New(cfg Config, members MemberStore, presence Presence, batches BatchSink, tasks TaskSink,
	log zerolog.Logger, reg prometheus.Registerer) (*Resolver, error) {
	if cfg.ScanCount < 1 {
		cfg.ScanCount = 1000
	}
	if cfg.MaxInFlight < 1 {
		cfg.MaxInFlight = 1
	}
	if cfg.PermanentRetryFor <= 0 {
		cfg.PermanentRetryFor = DefaultPermanentRetryFor
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("audience: %w", err)
	}
	names := make([]string, len(cfg.Nodes))
	for i, n := range cfg.Nodes {
		names[i] = n.Name
	}
	m, err := newMetrics(reg, names)
	if err != nil {
		return nil, fmt.Errorf("audience: metrics: %w", err)
	}
	p := cfg.Progress
	if p == nil {
		p = noProgress{}
	}
	return &Resolver{
		cfg: cfg, progress: p, members: members, presence: presence, batches: batches, tasks: tasks,
		route: newRouter(cfg.Nodes), log: log, m: m, cuts: newCutCache(cfg.CountMaxAge),
		warn: log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second}),
	}, nil
}

type noProgress struct{}

func (noProgress) Begin(context.Context, *announcement.Event) (string, bool, error) {
	return "", false, nil
}
func (noProgress) Plan(context.Context, string, int, bool) error { return nil }
func (noProgress) Split(_ context.Context, _ string, p progress.SplitPlan) (progress.SplitPlan, error) {
	return p, nil
}
func (noProgress) Emitted(string, int, int)                    {}
func (noProgress) ShardDone(string, int, progress.ShardCounts) {}
func (noProgress) ShardFailed(string, int, string)             {}
func (noProgress) Finish(string, string, string)               {}
func (noProgress) Cancelled(context.Context, string) bool      { return false }

// Resolve handles one event. It returns nil error with the Result once the
// event's output is acknowledged (or the event was rejected), a
// *announcement.BadRecordError for an event that can never be sent (its
// template breaks the rules), and otherwise an error only when ctx ended
// first: then nothing may be committed.
func (r *Resolver) Resolve(ctx context.Context, ev announcement.Event) (Result, error) {
	if r.cfg.Templates != nil {
		if _, err := r.cfg.Templates.Get(ev.ID, ev.Template); err != nil {
			reason := "template: " + err.Error()
			r.progress.Finish(ev.ID, progress.StateFailed, reason)
			return Result{}, &announcement.BadRecordError{Reason: fmt.Sprintf("announcement %s: %s", ev.ID, reason), Label: "template"}
		}
	}
	start := time.Now()
	state, finished, err := r.progress.Begin(ctx, &ev)
	if err != nil {
		r.m.progressErrors.Inc()
		r.warn.Warn().Err(err).Str("announcement", ev.ID).Msg("progress store: the task goes on; its record is updated once the store is back")
	}
	switch {
	case state == progress.StateCancelled:
		r.m.observe(kindLabel(&ev), Result{Outcome: Cancelled}, time.Since(start), ev.CreatedAt)
		return Result{Outcome: Cancelled}, nil
	case finished:
		r.m.observe(kindLabel(&ev), Result{Outcome: Duplicate}, time.Since(start), ev.CreatedAt)
		return Result{Outcome: Duplicate}, nil
	}
	var res Result
	switch ev.Kind {
	case announcement.KindChannel:
		res, err = r.channel(ctx, &ev)
	case announcement.KindShard:
		res, err = r.shard(ctx, &ev, *ev.Shard)
	case announcement.KindAllOnline:
		r.plan(ctx, &ev, 1, false)
		res, err = r.allOnline(ctx, &ev)
	case announcement.KindUsers:
		r.plan(ctx, &ev, 1, false)
		res, err = r.users(ctx, &ev)
	default:
		res = Result{Outcome: Rejected, Reason: ReasonUnknownKind}
	}
	if errors.Is(err, ErrPermanent) && ctx.Err() == nil {
		r.failed(&ev, err)
		return Result{}, &announcement.BadRecordError{Reason: fmt.Sprintf("announcement %s: %v", ev.ID, err), Label: "permanent"}
	}
	if err != nil {
		return res, err
	}
	switch res.Outcome {
	case Rejected:
		r.progress.Finish(ev.ID, progress.StateRejected, res.Reason)
		r.log.Warn().Str("announcement", ev.ID).Str("kind", string(ev.Kind)).Str("reason", res.Reason).
			Stringer("channel", channelOf(&ev)).Msg("announcement rejected")
	case Delivered, Counted:
		index := 0
		if ev.Shard != nil {
			index = ev.Shard.Index
		}
		r.progress.ShardDone(ev.ID, index, progress.ShardCounts{Members: res.Audience, Online: res.Online,
			Recipients: res.Recipients, Batches: res.Batches, PerNode: res.PerNode})
	}
	r.m.observe(kindLabel(&ev), res, time.Since(start), ev.CreatedAt)
	return res, nil
}

// kindLabel is the event's kind, or dry_run: a preview sends nothing and
// must not count as recipients reached.
func kindLabel(ev *announcement.Event) string {
	if ev.DryRun {
		return "dry_run"
	}
	return string(ev.Kind)
}

// plan records the shard count; a failure only leaves the record behind.
func (r *Resolver) plan(ctx context.Context, ev *announcement.Event, shards int, split bool) {
	if err := r.progress.Plan(ctx, ev.ID, shards, split); err != nil {
		r.m.progressErrors.Inc()
		r.warn.Warn().Err(err).Str("announcement", ev.ID).Msg("progress store: the shard count waits in the queue")
	}
}

type channelRef struct{ c *announcement.ChannelRef }

func (c channelRef) String() string {
	if c.c == nil {
		return ""
	}
	return c.c.String()
}

func channelOf(ev *announcement.Event) fmt.Stringer { return channelRef{ev.Channel} }

// writeAll writes records to Kafka with r.retry. After a write that Kafka
// acknowledged in part (*kafkabus.PartialWriteError), only the rest goes
// again: what was acknowledged is durable, and written twice it would be sent twice.
func writeAll[T any](ctx context.Context, r *Resolver, records []T, write func(context.Context, []T) error) error {
	pending := records
	return r.retry(ctx, depKafka, func() error {
		err := write(ctx, pending)
		pending = kafkabus.Unacknowledged(pending, err)
		return err
	})
}

// failed records a unit given up on a permanent error. A shard (or the one
// shard of an all-online, users or small channel announcement) may have
// emitted batches, and other shards go on: the record ends failed once they
// are done, and can be cancelled until then. A channel that failed before
// it was cut emitted nothing: it ends failed now.
func (r *Resolver) failed(ev *announcement.Event, err error) {
	var in inlineShard
	switch {
	case ev.Kind == announcement.KindShard && ev.Shard != nil:
		r.progress.ShardFailed(ev.ID, ev.Shard.Index, fmt.Sprintf("shard %d: %v", ev.Shard.Index, err))
	case ev.Kind == announcement.KindAllOnline, ev.Kind == announcement.KindUsers, errors.As(err, &in):
		r.progress.ShardFailed(ev.ID, 0, err.Error())
	default:
		r.progress.Finish(ev.ID, progress.StateFailed, err.Error())
	}
}

// inlineShard is the failure of a small channel's one shard, resolved in
// the channel's own task.
type inlineShard struct{ error }

func (e inlineShard) Unwrap() error { return e.error }

// retry runs op until it succeeds or ctx ends, counting and (sparsely) logging failures.
// Transient failures are retried until ctx ends; ErrPermanent ones until
// they have lasted PermanentRetryFor. A budget of time, not of tries: with
// the backoff's short first steps a few tries are over in a second, before a
// failover or a table swap is. A transient failure in between starts the
// count again (the database was not answering at all).
func (r *Resolver) retry(ctx context.Context, dep string, op func() error) error {
	var since time.Time // first of the current run of permanent failures
	return backoff.Retry(ctx, r.cfg.Retry, func() error {
		err := op()
		switch {
		case !errors.Is(err, ErrPermanent):
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= r.cfg.PermanentRetryFor:
			return backoff.Permanent(err)
		}
		return err
	}, func(err error, attempt int) {
		r.m.retries.WithLabelValues(dep).Inc()
		if attempt == 1 || attempt%10 == 0 {
			r.log.Warn().Err(err).Str("dependency", dep).Int("attempt", attempt).Msg("failure, retrying")
		}
	})
}

func (r *Resolver) channel(ctx context.Context, ev *announcement.Event) (Result, error) {
	var ch Channel
	err := r.retry(ctx, depMySQL, func() error {
		var err error
		ch, err = r.members.Channel(ctx, *ev.Channel)
		if errors.Is(err, ErrChannelNotFound) {
			return backoff.Permanent(err)
		}
		return err
	})
	switch {
	case errors.Is(err, ErrChannelNotFound):
		return Result{Outcome: Rejected, Reason: ReasonChannelNotFound}, nil
	case err != nil:
		return Result{}, err
	case !ch.Accepted:
		return Result{Outcome: Rejected, Reason: ReasonChannelNotAccepted}, nil
	}
	cut, err := r.split(ctx, ch.ID)
	if err != nil {
		return Result{}, err
	}
	// Another worker may have cut this channel for this announcement before
	// (it crashed after queuing its tasks): its cut is the one to follow.
	// A cut that could not be recorded is not queued as tasks: a replay of
	// this event could cut otherwise, and tasks of two cuts, known by their
	// index, would pass for copies of each other and leave members out. The
	// channel is then read whole, here: slower, and a replay only repeats.
	if recorded, err := r.progress.Split(ctx, ev.ID, cut); err != nil {
		r.m.progressErrors.Inc()
		r.warn.Warn().Err(err).Str("announcement", ev.ID).Int("shards", cut.Shards()).
			Msg("progress store: the channel's cut could not be recorded; it is read whole by this worker")
		cut = whole(cut.Starts[0])
	} else if !recorded.Equal(cut) {
		r.log.Info().Str("announcement", ev.ID).Stringer("cut", recorded).Stringer("own", cut).
			Msg("the channel was cut into shards for this announcement before: its ranges are kept")
		cut = recorded
	}
	shards := shardsOf(ch.ID, cut)
	r.plan(ctx, ev, len(shards), false)
	if len(shards) == 1 {
		// Small channel: no round trip through the announcements topic.
		res, err := r.shard(ctx, ev, shards[0])
		if err != nil {
			err = inlineShard{err}
		}
		return res, err
	}
	tasks := make([]announcement.Event, len(shards))
	for i := range shards {
		tasks[i] = announcement.Event{
			ID: ev.ID, Kind: announcement.KindShard, Channel: ev.Channel, Template: ev.Template,
			Persist: ev.Persist, CreatedAt: ev.CreatedAt, Source: ev.Source, Shard: &shards[i],
			Priority: ev.Priority, DryRun: ev.DryRun,
		}
	}
	// A task written twice is a shard sent twice.
	if err := writeAll(ctx, r, tasks, r.tasks.WriteTasks); err != nil {
		return Result{}, err
	}
	r.plan(ctx, ev, len(shards), true)
	return Result{Outcome: Split, Shards: len(shards)}, nil
}

// split cuts the channel into shards of ShardSize members: one look-up of
// the channel's first member, then one of the member ShardSize further on
// for each shard, reading about as many index entries as counting them would
// (0.1 s per million members) before any shard can start. Shards of equal
// member-id width would cost the same reads, but member ids are shared by
// every channel: a channel whose members mostly joined at once would have
// most of them in one shard, read by one worker.
//
// The cut of a channel of several shards is kept for CountMaxAge: members
// added since join its last shard, which is open; members who left only
// make a shard smaller.
func (r *Resolver) split(ctx context.Context, channelID int64) (progress.SplitPlan, error) {
	starts, known := r.cuts.get(channelID, time.Now())
	if !known {
		err := r.retry(ctx, depMySQL, func() error {
			var err error
			starts, err = r.members.Starts(ctx, channelID, r.cfg.ShardSize)
			return err
		})
		if err != nil {
			return progress.SplitPlan{}, err
		}
		if len(starts) > 1 {
			r.cuts.put(channelID, starts, time.Now())
		}
	}
	if len(starts) <= 1 {
		first := int64(0)
		if len(starts) == 1 {
			first = starts[0]
		}
		return whole(first), nil
	}
	return progress.SplitPlan{Starts: starts}, nil
}

// whole is the plan of a channel read as one shard, from its first member
// id on (from 0 when that is higher, as a lone shard's [inc_id]s count from 1).
func whole(first int64) progress.SplitPlan {
	return progress.SplitPlan{Starts: []int64{min(first, 0)}}
}

// shardsOf are the member-id ranges of a cut: the last one is open, so
// members added since the cut are in it.
func shardsOf(channelID int64, p progress.SplitPlan) []announcement.Shard {
	n := p.Shards()
	shards := make([]announcement.Shard, n)
	for i, from := range p.Starts {
		shards[i] = announcement.Shard{ChannelID: channelID, Index: i, Count: n, FromMemberID: from}
		if i < n-1 {
			shards[i].ToMemberID = p.Starts[i+1]
		}
	}
	return shards
}

// upperBound is the exclusive end of a shard's range for MemberStore.Members.
// ToMemberID 0 means "to the end" only in the last shard, the one shardsOf
// leaves open: every other shard has a real end, which may be 0 when the ids
// cross zero (read as open, that shard would overlap the next). Shard tasks
// queued by earlier versions read the same: only their last was left open.
func upperBound(s announcement.Shard) int64 {
	if s.ToMemberID == 0 && s.Index == s.Count-1 {
		return NoUpperBound
	}
	return s.ToMemberID
}

// shard streams the members of one range: a reader goroutine fetches the next
// keyset page while this goroutine looks up presence and routes the current one,
// and batch writes run in the background (bounded by MaxInFlight).
func (r *Resolver) shard(ctx context.Context, ev *announcement.Event, s announcement.Shard) (Result, error) {
	// [inc_id]s of a shard start at its first member id + 1: a range [From, To)
	// has at most To-From members, so the shards' numbers never overlap, whatever
	// the shard size or the spread of the ids. A lone shard counts from 1.
	// Shards starting at or below 0 all count from 1, so with negative ids the
	// numbers may repeat: telling them apart needs the cut's first id, which a
	// shard task does not carry, or numbers past 2^63.
	firstInc := uint64(1)
	if s.Count > 1 {
		firstInc = uint64(max(s.FromMemberID, 0)) + 1
	}
	e := r.newEmitter(ctx, ev, s.Index, firstInc)
	defer e.stop()
	rctx, cancelRead := context.WithCancel(e.ctx)
	pages := make(chan []Member, 2)
	free := make(chan []Member, 3)
	readErr := make(chan error, 1)
	go func() {
		readErr <- r.readPages(rctx, s, pages, free)
		close(pages)
	}()
	// Always stop and drain the reader, so it never outlives the task.
	defer func() {
		cancelRead()
		for range pages {
		}
	}()

	names := make([]string, 0, r.cfg.PageSize)
	where := make([]string, 0, r.cfg.PageSize)
	for page := range pages {
		if r.progress.Cancelled(e.ctx, ev.ID) {
			return e.cancelled()
		}
		names = names[:0]
		for _, m := range page {
			if m.Username == "" { // a NULL row of a schema that allows it: no address to send to
				e.skip++
				continue
			}
			names = append(names, m.Username)
		}
		where = where[:len(names)]
		clear(where)
		if err := r.retry(e.ctx, depPresence, func() error { return r.presence.Lookup(e.ctx, names, where) }); err != nil {
			return Result{}, e.abort(err)
		}
		e.res.Audience += len(names)
		for i, addr := range where {
			if addr != "" {
				e.res.Online++
				e.add(names[i], addr, -1)
			}
		}
		select {
		case free <- page:
		default:
		}
		e.send()
	}
	if err := <-readErr; err != nil {
		return Result{}, e.abort(err)
	}
	return e.finish()
}

func (r *Resolver) readPages(ctx context.Context, s announcement.Shard, pages chan<- []Member, free <-chan []Member) error {
	after := s.FromMemberID - 1
	before := upperBound(s)
	for {
		var buf []Member
		select {
		case buf = <-free:
		default:
			buf = make([]Member, 0, r.cfg.PageSize)
		}
		var page []Member
		err := r.retry(ctx, depMySQL, func() error {
			var err error
			page, err = r.members.Members(ctx, s.ChannelID, after, before, r.cfg.PageSize, buf)
			return err
		})
		if err != nil {
			return err
		}
		if len(page) == 0 {
			return nil
		}
		select {
		case pages <- page:
		case <-ctx.Done():
			return ctx.Err()
		}
		if len(page) < r.cfg.PageSize {
			return nil
		}
		after = page[len(page)-1].ID
	}
}

func (r *Resolver) allOnline(ctx context.Context, ev *announcement.Event) (Result, error) {
	e := r.newEmitter(ctx, ev, 0, 1)
	defer e.stop()
	for node, n := range r.cfg.Nodes {
		for _, addr := range n.PresenceAddresses {
			cursor := uint64(0)
			for {
				var (
					names []string
					next  uint64
				)
				err := r.retry(e.ctx, depPresence, func() error {
					var err error
					names, next, err = r.presence.Scan(e.ctx, addr, cursor, r.cfg.ScanCount)
					if errors.Is(err, ErrScanUnsupported) {
						return backoff.Permanent(err)
					}
					return err
				})
				if errors.Is(err, ErrScanUnsupported) {
					return Result{Outcome: Rejected, Reason: ReasonScanUnsupported}, nil
				}
				if err != nil {
					return Result{}, e.abort(err)
				}
				e.res.Audience += len(names)
				e.res.Online += len(names)
				for _, u := range names {
					e.add(u, addr, node)
				}
				e.send()
				if next == 0 {
					break
				}
				if r.progress.Cancelled(e.ctx, ev.ID) {
					return e.cancelled()
				}
				cursor = next
			}
		}
	}
	return e.finish()
}

func (r *Resolver) users(ctx context.Context, ev *announcement.Event) (Result, error) {
	e := r.newEmitter(ctx, ev, 0, 1)
	defer e.stop()
	keys := make([]string, 0, r.cfg.PageSize)
	at := make([]int, 0, r.cfg.PageSize)
	found := make([]string, 0, r.cfg.PageSize)
	where := make([]string, 0, r.cfg.PageSize)
	for chunk := range chunks(ev.Usernames, r.cfg.PageSize) {
		if r.progress.Cancelled(e.ctx, ev.ID) {
			return e.cancelled()
		}
		where = where[:len(chunk)]
		clear(where)
		if r.cfg.RouteUsers && len(chunk) > 0 {
			// Recipients are usernames or JIDs (the topics' one form); presence
			// is keyed by username, and a JID of another domain has none.
			keys, at = keys[:0], at[:0]
			for i, u := range chunk {
				if k, ok := stanza.PresenceKey(u, r.cfg.UserDomain); ok {
					keys, at = append(keys, k), append(at, i)
				}
			}
			found = found[:len(keys)]
			clear(found)
			if len(keys) > 0 {
				if err := r.retry(e.ctx, depPresence, func() error { return r.presence.Lookup(e.ctx, keys, found) }); err != nil {
					return Result{}, e.abort(err)
				}
			}
			for j, i := range at {
				where[i] = found[j]
			}
		}
		e.res.Audience += len(chunk)
		for i, u := range chunk {
			if where[i] != "" {
				e.res.Online++
			}
			// Offline users are delivered too (ejabberd stores them); "" routes by hash.
			e.add(u, where[i], -1)
		}
		e.send()
	}
	return e.finish()
}

func chunks(s []string, n int) func(yield func([]string) bool) {
	return func(yield func([]string) bool) {
		for len(s) > 0 {
			k := min(n, len(s))
			if !yield(s[:k]) {
				return
			}
			s = s[k:]
		}
	}
}
