package progress

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/metric"
)

// TrackerOptions tune a Tracker.
type TrackerOptions struct {
	// Queue bounds the updates waiting for Redis; beyond it they are dropped
	// and counted (delivery never waits for its bookkeeping).
	Queue int
	// CancelCheck is how stale a cached "not cancelled" may be.
	CancelCheck time.Duration
	// FlushTimeout bounds the last flush at shutdown.
	FlushTimeout time.Duration
}

// Tracker is what a stage uses: counter updates queued and sent to Redis in
// pipelines by Run, cached cancellation checks, and the few synchronous calls
// a stage needs. A Tracker without a store does nothing and says
// "not cancelled": the stages run the same with and without one.
type Tracker struct {
	store *Store
	o     TrackerOptions
	ops   chan op
	log   zerolog.Logger
	m     *trackerMetrics

	mu      sync.Mutex
	cancels map[string]cancelEntry

	failing atomic.Bool // the last pipeline failed: Sync does not wait
}

type op struct {
	script *redis.Script
	id     string
	args   []any
	// indexAt, when set, also lists the announcement (created at that unix
	// millisecond) in the index: a record first written by a queued update.
	indexAt int64
	// barrier, when set, makes the op a marker (nothing is sent): it is
	// closed once every update queued before it reached Redis.
	barrier chan struct{}
}

type cancelEntry struct {
	cancelled bool
	at        time.Time
	loading   bool
}

// maxCancelEntries bounds the cancellation cache; stale entries go first.
const maxCancelEntries = 4096

// NewTracker builds a Tracker on store (nil: a Tracker that does nothing)
// and registers its metrics on reg.
func NewTracker(store *Store, o TrackerOptions, log zerolog.Logger, reg prometheus.Registerer) *Tracker {
	if o.Queue <= 0 {
		o.Queue = 65536
	}
	if o.CancelCheck <= 0 {
		o.CancelCheck = 500 * time.Millisecond
	}
	if o.FlushTimeout <= 0 {
		o.FlushTimeout = 3 * time.Second
	}
	t := &Tracker{
		store: store, o: o, ops: make(chan op, o.Queue),
		log: log.With().Str("component", "progress").Logger(), cancels: map[string]cancelEntry{},
	}
	t.m = newTrackerMetrics(reg, func() float64 { return float64(len(t.ops)) })
	return t
}

// Enabled reports whether there is a store behind the Tracker.
func (t *Tracker) Enabled() bool { return t.store != nil }

// Store is the store behind the Tracker (nil when there is none).
func (t *Tracker) Store() *Store { return t.store }

func (t *Tracker) enqueue(sc *redis.Script, id string, args ...any) {
	if t.store == nil {
		return
	}
	t.enqueueOp(op{script: sc, id: id, args: append(t.store.head(), args...)})
}

func (t *Tracker) enqueueOp(o op) {
	select {
	case t.ops <- o:
	default:
		t.m.dropped.Inc()
	}
}

// syncWait bounds Sync: a slow Redis delays commits by at most this.
const syncWait = 250 * time.Millisecond

// Sync waits until the updates queued before the call reached Redis, for at
// most syncWait, and not at all while Redis is failing. A stage calls it
// before committing its offsets: a crash right after a commit would
// otherwise lose the records of the work that commit covers (a shard
// resolved, a batch fenced), and the announcement could never be done.
func (t *Tracker) Sync(ctx context.Context) {
	if t.store == nil || t.failing.Load() {
		return
	}
	done := make(chan struct{})
	select {
	case t.ops <- op{barrier: done}:
	default:
		return
	}
	timer := time.NewTimer(syncWait)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	case <-ctx.Done():
	}
}

// Emitted records that n batches of the shard are acknowledged by Kafka so far.
func (t *Tracker) Emitted(id string, shard, n int) { t.enqueue(scriptEmitted, id, shard, n) }

// ShardCounts are what one shard (or a whole non-channel announcement) resolved.
type ShardCounts struct {
	Members, Online, Recipients, Batches int
	PerNode                              map[string]int
}

// ShardDone records a resolved shard, once.
func (t *Tracker) ShardDone(id string, shard int, c ShardCounts) {
	args := []any{shard, c.Members, c.Online, c.Recipients, c.Batches}
	for node, n := range c.PerNode {
		args = append(args, node, n)
	}
	t.enqueue(scriptShard, id, args...)
}

// Step is one fenced part of a batch: recipients [from, Pos) of it are processed.
type Step struct {
	Batch     string // the batch's key within the announcement, BatchKey
	From      int    // position the step started from
	Pos, Len  int    // fenced position, batch length
	Confirmed int    // stanzas of the step
	Invalid   int    // recipients of the step skipped as invalid
	Written   int    // stanzas written in the step (resends included)
	Digest    string // of the batch's recipients, Digest
}

// Fenced records a fenced step of a batch.
func (t *Tracker) Fenced(id string, s Step) {
	t.enqueue(scriptFenced, id, s.Batch, s.Pos, s.Len, s.Confirmed, s.Invalid, s.Written, s.Digest, s.From)
}

// Resent records a batch sent again after a lost connection.
func (t *Tracker) Resent(id string, written int) { t.enqueue(scriptResent, id, written) }

// Dead records a dead-lettered batch: what it had not fenced counts as dead-lettered.
func (t *Tracker) Dead(id, batch string, length int) { t.enqueue(scriptDead, id, batch, length) }

// Persisted records a batch stored on the storage topic.
func (t *Tracker) Persisted(id, batch string, n int) { t.enqueue(scriptPersisted, id, batch, n) }

// Finish ends an announcement as rejected or failed, with the reason.
func (t *Tracker) Finish(id, state, reason string) { t.enqueue(scriptFinish, id, state, reason) }

// ShardFailed records a shard that could not be resolved: the rest of the
// announcement goes on, and it ends failed (with reason) once that is done.
func (t *Tracker) ShardFailed(id string, shard int, reason string) {
	t.enqueue(scriptShardFailed, id, shard, reason)
}

// Begin is Store.Begin; without a store it says "go on". When the store
// fails, the task goes on without its answer (at-least-once: a copy is then
// resolved again) and the update waits in the queue, so the record still
// says resolving, and is listed, once Redis is back.
func (t *Tracker) Begin(ctx context.Context, ev *announcement.Event) (state string, finished bool, err error) {
	if t.store == nil {
		return "", false, nil
	}
	state, finished, err = t.store.Begin(ctx, ev)
	if err != nil {
		t.enqueueOp(op{script: scriptBegin, id: ev.ID, args: append(append(t.store.head(), Unit(ev)), describe(ev)...),
			indexAt: max(ev.CreatedAt.UnixMilli(), 1)})
	}
	return state, finished, err
}

// Plan is Store.Plan; a failed one waits in the queue (without the shard
// count the record could never be done).
func (t *Tracker) Plan(ctx context.Context, id string, shards int, split bool) error {
	if t.store == nil {
		return nil
	}
	err := t.store.Plan(ctx, id, shards, split)
	if err != nil {
		t.enqueue(scriptPlan, id, shards, flag(split))
	}
	return err
}

// Split is Store.Split; p itself without a store, or with an error (a cut
// recorded later would come too late to agree on).
func (t *Tracker) Split(ctx context.Context, id string, p SplitPlan) (SplitPlan, error) {
	if t.store == nil {
		return p, nil
	}
	return t.store.Split(ctx, id, p)
}

// Position is Store.Position; 0 without a store.
func (t *Tracker) Position(ctx context.Context, id, batch, digest string) (int, error) {
	if t.store == nil {
		return 0, nil
	}
	return t.store.Position(ctx, id, batch, digest)
}

// Cancelled reports whether the announcement was cancelled, from a cache no
// older than CancelCheck. Redis is asked at most once per CancelCheck per
// announcement; when it cannot answer, the last answer stands (delivery
// never stops because its bookkeeping is down).
func (t *Tracker) Cancelled(ctx context.Context, id string) bool {
	if t.store == nil {
		return false
	}
	now := time.Now()
	t.mu.Lock()
	e, ok := t.cancels[id]
	if ok && (e.cancelled || e.loading || now.Sub(e.at) < t.o.CancelCheck) {
		t.mu.Unlock()
		return e.cancelled
	}
	if len(t.cancels) >= maxCancelEntries {
		t.evictLocked(now)
	}
	e.loading = true
	t.cancels[id] = e
	t.mu.Unlock()

	t.m.cancelLookups.Inc()
	lctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	st, err := t.store.State(lctx, id)
	cancel()
	t.mu.Lock()
	defer t.mu.Unlock()
	e.loading = false
	e.at = time.Now()
	if err != nil {
		t.m.cancelErrors.Inc()
	} else {
		e.cancelled = st == StateCancelled
	}
	t.cancels[id] = e
	return e.cancelled
}

func (t *Tracker) evictLocked(now time.Time) {
	for id, e := range t.cancels {
		if !e.loading && now.Sub(e.at) >= t.o.CancelCheck {
			delete(t.cancels, id)
		}
	}
	if len(t.cancels) >= maxCancelEntries {
		clear(t.cancels)
	}
}

// pipelineOps bounds the updates sent in one pipeline.
const pipelineOps = 256

// lingerFor is how long an update waits for others to share its pipeline.
const lingerFor = 5 * time.Millisecond

// Run sends queued updates until ctx ends, then flushes what is queued
// (bounded by FlushTimeout). Failed updates are retried with backoff.
func (t *Tracker) Run(ctx context.Context) error {
	if t.store == nil {
		<-ctx.Done()
		return nil
	}
	batch := make([]op, 0, pipelineOps)
	policy := backoff.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second}
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for {
		select {
		case <-ctx.Done():
			return t.flush(batch)
		case o := <-t.ops:
			batch = append(batch[:0], o)
		}
		// Updates come one per batch: waiting a few milliseconds for more
		// turns a round trip per batch into one per pipeline.
		linger.Reset(lingerFor)
	collect:
		for len(batch) < pipelineOps {
			select {
			case o := <-t.ops:
				batch = append(batch, o)
			case <-linger.C:
				break collect
			case <-ctx.Done():
				break collect
			}
		}
		linger.Stop()
		for attempt := 0; len(batch) > 0; attempt++ {
			batch = t.send(ctx, batch)
			if len(batch) == 0 {
				break
			}
			if err := backoff.Sleep(ctx, policy.Delay(attempt)); err != nil {
				return t.flush(batch)
			}
		}
	}
}

func (t *Tracker) drain(batch []op) []op {
	for len(batch) < pipelineOps {
		select {
		case o := <-t.ops:
			batch = append(batch, o)
		default:
			return batch
		}
	}
	return batch
}

// flush sends what is left once, bounded by FlushTimeout.
func (t *Tracker) flush(batch []op) error {
	ctx, cancel := context.WithTimeout(context.Background(), t.o.FlushTimeout)
	defer cancel()
	for {
		batch = t.drain(batch)
		if len(batch) == 0 {
			return nil
		}
		if rest := t.send(ctx, batch); len(rest) > 0 || ctx.Err() != nil {
			lost := len(rest) - len(slices.DeleteFunc(rest, func(o op) bool { return o.barrier == nil }))
			t.m.dropped.Add(float64(lost))
			if lost > 0 {
				t.log.Warn().Int("updates", lost).Msg("progress updates lost at shutdown: Redis did not take them in time")
			}
			return nil
		}
		batch = batch[:0]
	}
}

// send runs batch in one pipeline and returns the updates that failed;
// its barriers are released once nothing before them is left.
func (t *Tracker) send(ctx context.Context, batch []op) []op {
	var barriers []op
	batch = slices.DeleteFunc(batch, func(o op) bool {
		if o.barrier != nil {
			barriers = append(barriers, o)
			return true
		}
		return false
	})
	rest := t.sendOps(ctx, batch)
	if len(rest) > 0 {
		t.failing.Store(true)
		return append(rest, barriers...)
	}
	t.failing.Store(false)
	for _, b := range barriers {
		close(b.barrier)
	}
	return nil
}

func (t *Tracker) sendOps(ctx context.Context, batch []op) []op {
	if len(batch) == 0 {
		return nil
	}
	c, err := t.store.conn.Client(ctx)
	if err != nil {
		t.failed(err, len(batch))
		return batch
	}
	for try := 0; try < 2; try++ {
		cmds := make([]*redis.Cmd, len(batch))
		index := make([]*redis.IntCmd, len(batch))
		_, _ = c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, o := range batch {
				cmds[i] = o.script.EvalSha(ctx, p, []string{t.store.key(o.id)}, o.args...)
				if o.indexAt != 0 {
					index[i] = p.ZAdd(ctx, t.store.indexKey(), redis.Z{Score: float64(o.indexAt), Member: o.id})
				}
			}
			return nil
		})
		var rest []op
		noScript := false
		var last error
		for i, cmd := range cmds {
			err := cmd.Err()
			if err == nil && index[i] != nil {
				err = index[i].Err()
			}
			if err != nil && !errors.Is(err, redis.Nil) {
				rest = append(rest, batch[i])
				last = err
				noScript = noScript || strings.HasPrefix(err.Error(), "NOSCRIPT")
			}
		}
		t.m.updates.Add(float64(len(batch) - len(rest)))
		if len(rest) == 0 {
			return nil
		}
		batch = rest
		if !noScript {
			t.failed(last, len(rest))
			return rest
		}
		// A restarted Redis forgot the scripts: load them and go again.
		if err := loadScripts(ctx, c); err != nil {
			t.failed(err, len(rest))
			return rest
		}
	}
	return batch
}

func (t *Tracker) failed(err error, n int) {
	t.m.errors.Add(float64(n))
	t.log.Warn().Err(err).Int("updates", n).Msg("progress store unavailable; updates wait in the queue")
}

var allScripts = []*redis.Script{
	scriptAccept, scriptBegin, scriptPlan, scriptEmitted, scriptShard, scriptShardFailed, scriptFenced,
	scriptResent, scriptDead, scriptPersisted, scriptFinish, scriptCancel,
}

func loadScripts(ctx context.Context, c redis.Scripter) error {
	for _, s := range allScripts {
		if err := s.Load(ctx, c).Err(); err != nil {
			return err
		}
	}
	return nil
}

// BatchKey names a batch within its announcement.
func BatchKey(b *announcement.Batch) string {
	return strconv.Itoa(b.Shard) + "/" + strconv.Itoa(b.Seq)
}

// Digest identifies a batch's recipients, so a resumed batch skips only
// what was fenced of the same content.
func Digest(b *announcement.Batch) string {
	h := uint64(14695981039346656037)
	for _, r := range b.Recipients {
		for i := 0; i < len(r); i++ {
			h ^= uint64(r[i])
			h *= 1099511628211
		}
		h ^= 0xff // a separator: ["ab","c"] and ["a","bc"] differ
		h *= 1099511628211
	}
	return strconv.FormatUint(h, 36) + "." + strconv.Itoa(len(b.Recipients))
}

type trackerMetrics struct {
	updates, errors, dropped    prometheus.Counter
	cancelLookups, cancelErrors prometheus.Counter
}

func newTrackerMetrics(reg prometheus.Registerer, queued func() float64) *trackerMetrics {
	s := metric.Must(reg)
	m := &trackerMetrics{
		updates:       s.Counter("progress_updates_total", "Progress updates written to the progress store (one per batch or fenced step)."),
		errors:        s.Counter("progress_update_errors_total", "Progress updates that failed and were queued again."),
		dropped:       s.Counter("progress_updates_dropped_total", "Progress updates dropped because the queue was full or Redis was down at shutdown; the announcement's figures lag."),
		cancelLookups: s.Counter("progress_cancel_lookups_total", "Reads of an announcement's state to see whether it was cancelled (cached)."),
		cancelErrors:  s.Counter("progress_cancel_lookup_errors_total", "Failed cancellation reads (the last answer stands)."),
	}
	s.GaugeFunc("progress_queue_length", "Progress updates waiting for the progress store.", queued)
	return m
}
