// Package progress keeps each announcement's record in Redis: its state,
// what fanout resolved, what the senders fenced, what was dead-lettered or
// persisted, when each stage began, and whether it was cancelled; plus the
// idempotency keys of the ingress.
//
// Every stage writes to it per batch (never per stanza) through a Tracker,
// which queues counter updates and sends them in pipelines off the hot path;
// the ingress reads it for the API. A Redis outage never stops delivery: the
// updates wait in a bounded queue, and what overflows is counted.
package progress

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/redisconn"
)

// States of an announcement.
const (
	StateAccepted  = "accepted"
	StateResolving = "resolving"
	StateSending   = "sending"
	StateDone      = "done"
	StateCancelled = "cancelled"
	StateRejected  = "rejected"
	StateFailed    = "failed"
)

// States lists every state, in lifecycle order.
var States = []string{StateAccepted, StateResolving, StateSending, StateDone, StateCancelled, StateRejected, StateFailed}

// Terminal reports whether nothing changes an announcement's state any more.
func Terminal(state string) bool {
	switch state {
	case StateDone, StateCancelled, StateRejected, StateFailed:
		return true
	}
	return false
}

// ErrNotFound is returned for an id the store has no record of (never
// accepted, or older than the TTL).
var ErrNotFound = errors.New("no such announcement")

// Options tune a Store.
type Options struct {
	Prefix            string        // before every key
	TTL               time.Duration // a record lives this long after its last update
	IdempotencyWindow time.Duration
}

// Store is the Redis side. It is safe for concurrent use.
type Store struct {
	conn *redisconn.Conn
	o    Options
	now  func() time.Time
}

// NewStore uses conn, which Close closes.
func NewStore(conn *redisconn.Conn, o Options) *Store {
	if o.TTL <= 0 {
		o.TTL = 7 * 24 * time.Hour
	}
	if o.IdempotencyWindow <= 0 {
		o.IdempotencyWindow = 24 * time.Hour
	}
	return &Store{conn: conn, o: o, now: time.Now}
}

// Ping is a readiness check.
func (s *Store) Ping(ctx context.Context) error { return s.conn.Ping(ctx) }

// Close closes the connections.
func (s *Store) Close() error { return s.conn.Close() }

// key is the record's key; the id is its hash tag, so every script's keys
// share a cluster slot.
func (s *Store) key(id string) string { return s.o.Prefix + "{" + id + "}" }

func (s *Store) indexKey() string { return s.o.Prefix + "index" }

func (s *Store) head() []any {
	return []any{s.o.TTL.Milliseconds(), s.now().UnixMilli()}
}

func (s *Store) run(ctx context.Context, sc *redis.Script, id string, args ...any) (any, error) {
	c, err := s.conn.Client(ctx)
	if err != nil {
		return nil, err
	}
	v, err := sc.Run(ctx, c, []string{s.key(id)}, append(s.head(), args...)...).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return v, err
}

// describe is the record's description of ev, written where absent.
func describe(ev *announcement.Event) []any {
	d := []any{
		"kind", string(ev.Kind),
		"source", ev.Source,
		"priority", priorityOf(ev),
		"persist", flag(ev.Persist),
		"dry_run", flag(ev.DryRun),
		"created", ev.CreatedAt.UnixMilli(),
	}
	if ev.Channel != nil {
		b, err := ev.Channel.MarshalJSON()
		if err == nil {
			d = append(d, "channel", string(b))
		}
	}
	if ev.Kind == announcement.KindUsers {
		d = append(d, "listed", len(ev.Usernames))
	}
	return d
}

func priorityOf(ev *announcement.Event) string {
	if ev.Priority == "" {
		return announcement.PriorityNormal
	}
	return ev.Priority
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Accept records ev as accepted (the ingress, once Kafka acknowledged it)
// and lists it. A record that exists keeps its progress.
func (s *Store) Accept(ctx context.Context, ev *announcement.Event) error {
	v, err := s.run(ctx, scriptAccept, ev.ID, describe(ev)...)
	if err != nil {
		return fmt.Errorf("progress: accept %s: %w", ev.ID, err)
	}
	if vs, ok := v.([]any); ok && len(vs) == 2 && vs[1] == int64(1) {
		return s.index(ctx, ev)
	}
	return nil
}

func (s *Store) index(ctx context.Context, ev *announcement.Event) error {
	c, err := s.conn.Client(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	_, err = c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, s.indexKey(), redis.Z{Score: float64(ev.CreatedAt.UnixMilli()), Member: ev.ID})
		p.ZRemRangeByScore(ctx, s.indexKey(), "-inf", strconv.FormatInt(now.Add(-s.o.TTL).UnixMilli(), 10))
		return nil
	})
	if err != nil {
		return fmt.Errorf("progress: index %s: %w", ev.ID, err)
	}
	return nil
}

// Unit names what one fanout task resolves: the whole announcement (a
// channel's top-level event, a users list, all online) or one shard.
func Unit(ev *announcement.Event) string {
	if ev.Shard != nil && ev.Kind == announcement.KindShard {
		return "s:" + strconv.Itoa(ev.Shard.Index)
	}
	return "top"
}

// Begin marks ev's announcement as resolving and returns its state and
// whether the task's unit was already finished (this event is a copy).
func (s *Store) Begin(ctx context.Context, ev *announcement.Event) (state string, finished bool, err error) {
	args := append([]any{Unit(ev)}, describe(ev)...)
	v, err := s.run(ctx, scriptBegin, ev.ID, args...)
	if err != nil {
		return "", false, fmt.Errorf("progress: begin %s: %w", ev.ID, err)
	}
	vs, ok := v.([]any)
	if !ok || len(vs) != 3 {
		return "", false, fmt.Errorf("progress: begin %s: unexpected answer %v", ev.ID, v)
	}
	state, _ = vs[0].(string)
	// The top unit lists it again, idempotently: the ingress's write of the
	// index may have failed after its record was written, and then no later
	// Begin would find the record new.
	if vs[1] == int64(1) || Unit(ev) == "top" {
		if err := s.index(ctx, ev); err != nil {
			return state, false, err
		}
	}
	return state, vs[2] == int64(1), nil
}

// Plan records how many shards the announcement has; split says they were
// queued as tasks (a copy of the top-level event then has nothing to do).
func (s *Store) Plan(ctx context.Context, id string, shards int, split bool) error {
	if _, err := s.run(ctx, scriptPlan, id, shards, flag(split)); err != nil {
		return fmt.Errorf("progress: plan %s: %w", id, err)
	}
	return nil
}

// SplitPlan is how a channel is cut into shards: shard i holds the member
// ids from Starts[i] up to the next start, the last one open (one start:
// the whole channel).
type SplitPlan struct {
	Starts []int64
}

// Shards is how many shards the plan cuts.
func (p SplitPlan) Shards() int { return len(p.Starts) }

// Equal reports whether p and q cut the same ranges.
func (p SplitPlan) Equal(q SplitPlan) bool { return slices.Equal(p.Starts, q.Starts) }

// String is the starts, comma-separated: how the record keeps the plan.
func (p SplitPlan) String() string {
	b := make([]byte, 0, 8*len(p.Starts))
	for i, v := range p.Starts {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, v, 10)
	}
	return string(b)
}

// ParseSplitPlan reads a SplitPlan's String, or the from:width:shards of
// the equal-width cuts earlier versions recorded.
func ParseSplitPlan(s string) (SplitPlan, error) {
	if from, rest, ok := strings.Cut(s, ":"); ok {
		width, shards, _ := strings.Cut(rest, ":")
		f, err1 := strconv.ParseInt(from, 10, 64)
		w, err2 := strconv.ParseInt(width, 10, 64)
		n, err3 := strconv.Atoi(shards)
		if err := errors.Join(err1, err2, err3); err != nil {
			return SplitPlan{}, fmt.Errorf("split plan %q: want from:width:shards: %w", s, err)
		}
		if n < 1 || n > maxShards || n > 1 && (w < 1 || w > (math.MaxInt64-max(f, 0))/int64(n-1)) {
			return SplitPlan{}, fmt.Errorf("split plan %q: want one shard or more of a positive width", s)
		}
		p := SplitPlan{Starts: make([]int64, n)}
		for i := range p.Starts {
			p.Starts[i] = f + int64(i)*w
		}
		return p, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > maxShards {
		return SplitPlan{}, fmt.Errorf("split plan of %d shards: more than %d", len(parts), maxShards)
	}
	p := SplitPlan{Starts: make([]int64, len(parts))}
	for i, v := range parts {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return SplitPlan{}, fmt.Errorf("split plan %q: %w", s, err)
		}
		if i > 0 && n <= p.Starts[i-1] {
			return SplitPlan{}, fmt.Errorf("split plan %q: the starts must rise", s)
		}
		p.Starts[i] = n
	}
	return p, nil
}

// maxShards bounds a recorded plan (and what reading one may allocate).
const maxShards = 1_000_000

// Split records p as the cut of a channel announcement into shards unless
// one was recorded before, and returns the recorded one. A channel event
// resolved twice (by a worker that crashed after queuing its shard tasks,
// then by the one that took the event over) must cut the same ranges: a
// shard task is known by its index, so the tasks of one cut would pass for
// copies of the other's, and the members between their ranges be left out.
// With no record to keep the cut in, it returns ErrNotFound: a cut that is
// not kept must not be queued as tasks.
func (s *Store) Split(ctx context.Context, id string, p SplitPlan) (SplitPlan, error) {
	v, err := s.run(ctx, scriptSplit, id, p.String())
	if err != nil {
		return p, fmt.Errorf("progress: split %s: %w", id, err)
	}
	if v == nil {
		return p, fmt.Errorf("progress: split %s: %w", id, ErrNotFound)
	}
	str, ok := v.(string)
	if !ok {
		return p, fmt.Errorf("progress: split %s: unexpected %T", id, v)
	}
	got, err := ParseSplitPlan(str)
	if err != nil {
		return p, fmt.Errorf("progress: split %s: %w", id, err)
	}
	return got, nil
}

// Cancel marks the announcement cancelled unless it already ended; it
// returns the state after the call (ErrNotFound for an unknown id).
func (s *Store) Cancel(ctx context.Context, id, reason string) (string, error) {
	v, err := s.run(ctx, scriptCancel, id, reason)
	if err != nil {
		return "", fmt.Errorf("progress: cancel %s: %w", id, err)
	}
	st, ok := v.(string)
	if !ok {
		return "", ErrNotFound
	}
	return st, nil
}

// State is the announcement's state ("" when there is no record).
func (s *Store) State(ctx context.Context, id string) (string, error) {
	c, err := s.conn.Client(ctx)
	if err != nil {
		return "", err
	}
	st, err := c.HGet(ctx, s.key(id), "state").Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	return st, err
}

// Position is how far a batch was fenced before ("" digest matches any):
// the recipients before it need not be sent again.
func (s *Store) Position(ctx context.Context, id, batch, digest string) (int, error) {
	c, err := s.conn.Client(ctx)
	if err != nil {
		return 0, err
	}
	v, err := c.HGet(ctx, s.key(id), "b:"+batch).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	pos, d, ok := strings.Cut(strings.TrimPrefix(v, "!"), ":") // "!": the key ended (see scriptFenced)
	if !ok || d != digest {
		return 0, nil
	}
	n, err := strconv.Atoi(pos)
	if err != nil {
		return 0, nil
	}
	return n, nil
}

// Get reads one announcement.
func (s *Store) Get(ctx context.Context, id string) (Announcement, error) {
	c, err := s.conn.Client(ctx)
	if err != nil {
		return Announcement{}, err
	}
	h, err := pairs(scriptSummary.Run(ctx, c, []string{s.key(id)}))
	if err != nil {
		return Announcement{}, fmt.Errorf("progress: get %s: %w", id, err)
	}
	if len(h) == 0 {
		return Announcement{}, ErrNotFound
	}
	return fromRecord(id, h), nil
}

// maxScan bounds how many listed ids one List call reads while filtering by state.
const maxScan = 10000

// List returns up to limit announcements, newest first; state filters when set.
func (s *Store) List(ctx context.Context, state string, limit int) ([]Announcement, error) {
	c, err := s.conn.Client(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Announcement, 0, limit)
	page := int64(max(limit, 100))
	for off := int64(0); len(out) < limit && off < maxScan; off += page {
		ids, err := c.ZRevRange(ctx, s.indexKey(), off, off+page-1).Result()
		if err != nil {
			return nil, fmt.Errorf("progress: list: %w", err)
		}
		if len(ids) == 0 {
			break
		}
		cmds := make([]*redis.Cmd, len(ids))
		_, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				// Eval, not EvalSha: a pipeline cannot fall back on NOSCRIPT.
				cmds[i] = scriptSummary.Eval(ctx, p, []string{s.key(id)})
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("progress: list: %w", err)
		}
		var gone []any
		for i, cmd := range cmds {
			h, err := pairs(cmd)
			if err != nil {
				return nil, fmt.Errorf("progress: list: %w", err)
			}
			if len(h) == 0 {
				gone = append(gone, ids[i]) // expired: its index entry goes too
				continue
			}
			a := fromRecord(ids[i], h)
			if (state == "" || a.State == state) && len(out) < limit {
				out = append(out, a)
			}
		}
		if len(gone) > 0 {
			c.ZRem(ctx, s.indexKey(), gone...)
		}
	}
	return out, nil
}

// Claim binds an idempotency key of scope ("rest", "kafka:<topic>") to a
// request digest and the announcement the request creates. For a key seen
// within the window it returns the first request's claim: same digest, the
// same announcement; another digest, a conflict (ErrKeyReused).
func (s *Store) Claim(ctx context.Context, scope, key string, want IdempotencyClaim) (IdempotencyClaim, bool, error) {
	c, err := s.conn.Client(ctx)
	if err != nil {
		return IdempotencyClaim{}, false, err
	}
	k := s.o.Prefix + "idem:" + scope + ":" + key
	v, err := scriptClaim.Run(ctx, c, []string{k}, want.encode(), s.o.IdempotencyWindow.Milliseconds()).Result()
	if errors.Is(err, redis.Nil) {
		return want, true, nil
	}
	if err != nil {
		return IdempotencyClaim{}, false, fmt.Errorf("progress: idempotency key: %w", err)
	}
	str, _ := v.(string)
	got, err := decodeClaim(str)
	if err != nil {
		return IdempotencyClaim{}, false, fmt.Errorf("progress: idempotency key %q: %w", key, err)
	}
	if got.Digest != want.Digest {
		return got, false, ErrKeyReused
	}
	return got, false, nil
}

// ErrKeyReused is an idempotency key presented again with another request.
var ErrKeyReused = errors.New("idempotency key already used for another request")

// IdempotencyClaim is what an idempotency key stands for.
type IdempotencyClaim struct {
	Digest    string    // of the request, hex
	ID        string    // the announcement
	CreatedAt time.Time // the event's, so a retried publish writes the identical event
}

func (c IdempotencyClaim) encode() string {
	return c.Digest + " " + strconv.FormatInt(c.CreatedAt.UnixNano(), 10) + " " + c.ID
}

func decodeClaim(v string) (IdempotencyClaim, error) {
	parts := strings.SplitN(v, " ", 3)
	if len(parts) != 3 {
		return IdempotencyClaim{}, fmt.Errorf("malformed claim %q", v)
	}
	ns, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return IdempotencyClaim{}, fmt.Errorf("malformed claim %q", v)
	}
	return IdempotencyClaim{Digest: parts[0], CreatedAt: time.Unix(0, ns).UTC(), ID: parts[2]}, nil
}

// pairs reads a script's answer of field, value pairs into a map.
func pairs(cmd *redis.Cmd) (map[string]string, error) {
	vals, err := cmd.StringSlice()
	if err != nil {
		return nil, err
	}
	h := make(map[string]string, len(vals)/2)
	for i := 0; i+1 < len(vals); i += 2 {
		h[vals[i]] = vals[i+1]
	}
	return h, nil
}
