package announce

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/progress"
)

// Key is an idempotency key: the REST Idempotency-Key header, or a Kafka
// input record's key. Scope keeps the sources' keys apart.
type Key struct {
	Scope  string // "rest", "kafka:<topic>"
	Value  string // "" = none
	Digest string // of the request: the same key with another request is a conflict
}

// MaxKeyLen bounds idempotency keys.
const MaxKeyLen = 255

// NewKey checks value and digests the request (what identifies it: the
// route, or the topic, and the body's bytes).
func NewKey(scope, value, what string, body []byte) (Key, error) {
	if value == "" {
		return Key{}, nil
	}
	if len(value) > MaxKeyLen {
		return Key{}, invalid("Idempotency-Key", fmt.Sprintf("%d bytes, the limit is %d", len(value), MaxKeyLen))
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; c < 0x20 || c > 0x7e {
			return Key{}, invalid("Idempotency-Key", "want printable ASCII")
		}
	}
	return Key{Scope: scope, Value: value, Digest: digest([]byte(what), body)}, nil
}

// NewBinaryKey is NewKey for a key that may be any bytes (a Kafka record's):
// the key is used by its digest. An empty key is none.
func NewBinaryKey(scope string, key []byte, what string, body []byte) (Key, error) {
	if len(key) == 0 {
		return Key{}, nil
	}
	return NewKey(scope, digest(key), what, body)
}

// digest is the hex SHA-256 of parts, each after the first preceded by a 0 byte.
func digest(parts ...[]byte) string {
	h := sha256.New()
	for i, p := range parts {
		if i > 0 {
			h.Write([]byte{0})
		}
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Outcome is what a submitted announcement came to.
type Outcome struct {
	ID string
	// Replayed: the idempotency key named an announcement already submitted;
	// this is its id.
	Replayed bool
	// NotPublished: replayed, and that announcement was already published,
	// so nothing was published this time.
	NotPublished bool
	// Preview is a dry run's count (nil otherwise).
	Preview *progress.Announcement
}

// ErrPreviewTimeout is a dry run fanout did not finish within the preview
// timeout; the id can be polled (REST: 504).
var ErrPreviewTimeout = errors.New("the preview is still being computed")

// ErrStoreDown means the progress store did not answer; retry (REST: 503).
var ErrStoreDown = errors.New("progress store unavailable")

// ErrEnded is a cancel of an announcement that already ended (REST: 409).
var ErrEnded = errors.New("the announcement already ended")

// Submit publishes ev once per idempotency key and records it as accepted.
// With a key seen before, ev takes the first request's id and time: when
// that announcement's record exists it was published, and nothing is
// published again; otherwise (the first attempt failed, or its answer was
// lost) the identical event is published again, which fanout recognises.
// A dry run then waits for fanout's count.
func (s *Service) Submit(ctx context.Context, ev *announcement.Event, key Key) (Outcome, error) {
	if ev.DryRun && s.records == nil {
		return Outcome{}, fmt.Errorf("dry_run: %w", ErrNoStore)
	}
	out := Outcome{ID: ev.ID}
	if key.Value != "" && s.records != nil {
		// A claimed key names this request for the idempotency window: an
		// event the bus can never take must not use it up, or the request
		// trimmed to fit would be a 409 though nothing was announced. (Without
		// a key Publish alone checks it, and the event is encoded once.)
		if err := s.pub.CheckSize(*ev); err != nil {
			return Outcome{}, s.publishFailed(*ev, err)
		}
		claim, fresh, err := s.records.Claim(ctx, key.Scope, key.Value,
			progress.IdempotencyClaim{Digest: key.Digest, ID: ev.ID, CreatedAt: ev.CreatedAt})
		switch {
		case errors.Is(err, progress.ErrKeyReused):
			return out, ErrKeyReused
		case err != nil:
			return out, fmt.Errorf("%w: idempotency keys: %w", ErrStoreDown, err)
		}
		if !fresh {
			ev.ID, ev.CreatedAt = claim.ID, claim.CreatedAt
			out.ID, out.Replayed = claim.ID, true
			if _, err := s.records.Get(ctx, ev.ID); err == nil {
				s.m.replays.Inc()
				out.NotPublished = true
				return s.preview(ctx, ev, out)
			}
		}
	}
	if err := s.Publish(ctx, *ev); err != nil {
		return Outcome{Replayed: out.Replayed}, err
	}
	s.record(ctx, ev)
	return s.preview(ctx, ev, out)
}

const (
	// recordTimeout bounds writing the accepted record in the request: the
	// announcement is already durable, and fanout writes the record when it
	// starts anyway.
	recordTimeout = time.Second
	// recordRetryFor is how long Run tries again a record the request could
	// not write. Until the record is written, or fanout starts on the
	// announcement (which may wait behind a backlog), GET and DELETE of its
	// id answer 404.
	recordRetryFor = 2 * time.Minute
	// maxUnrecorded bounds the records waiting for Run.
	maxUnrecorded = 1024
)

type unrecorded struct {
	ev    announcement.Event
	since time.Time
}

func (s *Service) record(ctx context.Context, ev *announcement.Event) {
	if s.records == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	if err := s.records.Accept(ctx, ev); err != nil {
		s.m.recordErrors.Inc()
		select {
		case s.unrecorded <- unrecorded{ev: *ev, since: time.Now()}:
		default:
			s.m.recordLate.WithLabelValues("given_up").Inc()
		}
	}
}

// Run writes again, with backoff, the records of accepted announcements
// that their request could not write, each for up to recordRetryFor, until
// ctx ends. Writing a record is idempotent: one fanout wrote meanwhile is
// left as it is.
func (s *Service) Run(ctx context.Context) error {
	policy := backoff.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second}
	for {
		var u unrecorded
		select {
		case <-ctx.Done():
			return nil
		case u = <-s.unrecorded:
		}
		rctx, cancel := context.WithDeadline(ctx, u.since.Add(recordRetryFor))
		err := backoff.Retry(rctx, policy, func() error {
			wctx, cancel := context.WithTimeout(rctx, recordTimeout)
			defer cancel()
			return s.records.Accept(wctx, &u.ev)
		}, nil)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			s.m.recordLate.WithLabelValues("written").Inc()
		default:
			s.m.recordLate.WithLabelValues("given_up").Inc()
		}
	}
}

// preview waits for a dry run's count.
func (s *Service) preview(ctx context.Context, ev *announcement.Event, out Outcome) (Outcome, error) {
	if !ev.DryRun {
		return out, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.lim.PreviewTimeout)
	defer cancel()
	wait := 20 * time.Millisecond
	for {
		a, err := s.records.Get(ctx, ev.ID)
		if err == nil && progress.Terminal(a.State) {
			out.Preview = &a
			return out, nil
		}
		select {
		case <-ctx.Done():
			return out, ErrPreviewTimeout
		case <-time.After(wait):
		}
		wait = min(2*wait, 250*time.Millisecond)
	}
}

// Status reads one announcement.
func (s *Service) Status(ctx context.Context, id string) (progress.Announcement, error) {
	if s.records == nil {
		return progress.Announcement{}, ErrNoStore
	}
	a, err := s.records.Get(ctx, id)
	return a, storeError(err)
}

// MaxListLimit bounds List.
const MaxListLimit = 1000

// List returns recent announcements, newest first, in state when it is set.
func (s *Service) List(ctx context.Context, state string, limit int) ([]progress.Announcement, error) {
	if s.records == nil {
		return nil, ErrNoStore
	}
	if state != "" && !validState(state) {
		return nil, invalid("state", fmt.Sprintf("%q: want one of %v", state, progress.States))
	}
	if limit < 1 || limit > MaxListLimit {
		return nil, invalid("limit", fmt.Sprintf("%d: want 1..%d", limit, MaxListLimit))
	}
	l, err := s.records.List(ctx, state, limit)
	return l, storeError(err)
}

func validState(state string) bool {
	for _, s := range progress.States {
		if s == state {
			return true
		}
	}
	return false
}

// Cancel stops an announcement: fanout stops between pages and shards, the
// senders and the archiver skip its batches that have not started, and the
// record keeps the counts of what went out. Cancelling twice is fine; an
// announcement that already ended is ErrEnded (with its record).
func (s *Service) Cancel(ctx context.Context, id string) (progress.Announcement, error) {
	if s.records == nil {
		return progress.Announcement{}, ErrNoStore
	}
	st, err := s.records.Cancel(ctx, id, "cancelled by request")
	if err != nil {
		return progress.Announcement{}, storeError(err)
	}
	a, err := s.records.Get(ctx, id)
	if err != nil {
		return progress.Announcement{}, storeError(err)
	}
	if st != progress.StateCancelled {
		return a, ErrEnded
	}
	return a, nil
}

// storeError keeps "not found" and makes everything else a retryable outage.
func storeError(err error) error {
	if err == nil || errors.Is(err, progress.ErrNotFound) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrStoreDown, err)
}
