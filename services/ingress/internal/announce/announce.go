// Package announce is the ingress use case: it validates an announcement
// request at the door and publishes it as an event for fanout. Both
// transports (REST and the Kafka input) decode their bodies with this
// package and call the same Service, so the contract is enforced once.
package announce

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/metric"
	"github.com/announcer/announcer/pkg/progress"
	"github.com/announcer/announcer/pkg/stanza"
)

// Publisher makes an event durable. It returns nil only once the event is
// acknowledged by every in-sync replica; errors wrap ErrUnavailable or ErrTooLarge.
type Publisher interface {
	Publish(ctx context.Context, e announcement.Event) error
	// CheckSize returns an error wrapping ErrTooLarge when e is more than the
	// bus takes; it writes nothing. Publish checks the same.
	CheckSize(e announcement.Event) error
}

var (
	// ErrUnavailable means the event could not be made durable now; the
	// request may be retried (REST: 503).
	ErrUnavailable = errors.New("announcements topic unavailable")
	// ErrTooLarge means the encoded event exceeds what the bus accepts; a
	// retry cannot succeed (REST: 413).
	ErrTooLarge = errors.New("announcement too large for the bus")
	// ErrKeyReused is an idempotency key presented with another request (REST: 409).
	ErrKeyReused = errors.New("this Idempotency-Key was already used for another request")
	// ErrNoStore means the feature needs the progress store, and none is
	// configured (REST: 501).
	ErrNoStore = errors.New("no progress store is configured ([progress] or [user-activity-redis])")
)

// ValidationError is a rejection of the request itself; Field names the body
// field ("message", "usernames", "channel_id", "persist", "body", ...).
type ValidationError struct {
	Field, Reason string
}

func (e *ValidationError) Error() string { return "invalid " + e.Field + ": " + e.Reason }

func invalid(field, reason string) error { return &ValidationError{Field: field, Reason: reason} }

// Sources of events.
const (
	SourceREST        = "rest"
	SourceKafkaPrefix = "kafka:"
)

// maxChannelStringID is the VARCHAR width of ws_channel_data.channel_channelid.
const maxChannelStringID = 255

// Limits are the door's checks, from [ingress] and the XMPP settings.
type Limits struct {
	MaxBodyBytes int64  // payload limit of the Kafka input (REST enforces it while reading)
	MaxUsernames int    // per users request
	UserDomain   string // completes bare usernames
	// Template are the rules of the connection mode (config.TemplateRules):
	// the same ones the sender and archiver apply, so a template that would
	// close ejabberd's stream is a 400 here, never a poison batch later.
	Template       stanza.Options
	PublishTimeout time.Duration
	PreviewTimeout time.Duration // how long a dry run waits for fanout's count
}

// Records is the progress store as the ingress uses it (a *progress.Store).
type Records interface {
	Accept(ctx context.Context, ev *announcement.Event) error
	Claim(ctx context.Context, scope, key string, want progress.IdempotencyClaim) (progress.IdempotencyClaim, bool, error)
	Get(ctx context.Context, id string) (progress.Announcement, error)
	List(ctx context.Context, state string, limit int) ([]progress.Announcement, error)
	Cancel(ctx context.Context, id, reason string) (string, error)
}

// Service validates and publishes announcements. It is safe for concurrent use.
type Service struct {
	pub     Publisher
	records Records // nil: no progress store
	lim     Limits
	newID   func() (string, error)
	now     func() time.Time
	m       metrics
	// unrecorded holds accepted announcements whose record the request
	// could not write, for Run to write again.
	unrecorded chan unrecorded
}

type metrics struct {
	accepted     *prometheus.CounterVec // source, kind
	rejected     *prometheus.CounterVec // source, field
	failed       *prometheus.CounterVec // source, reason
	replays      prometheus.Counter
	recordErrors prometheus.Counter
	recordLate   *prometheus.CounterVec // outcome
	ignored      prometheus.Counter
}

// New builds the use case; records may be nil (no progress store: no
// idempotency, previews or progress). Its counters are registered on reg.
func New(pub Publisher, records Records, lim Limits, reg prometheus.Registerer) (*Service, error) {
	if lim.PublishTimeout <= 0 {
		return nil, errors.New("announce: publish timeout must be > 0")
	}
	if lim.PreviewTimeout <= 0 {
		lim.PreviewTimeout = 30 * time.Second
	}
	ms := metric.New(reg)
	m := metrics{
		accepted: ms.CounterVec("announcements_accepted_total", "Announcements durably published to the announcements topic.", "source", "kind"),
		rejected: ms.CounterVec("announcements_rejected_total", "Requests rejected by validation, by the field at fault.", "source", "field"),
		failed:   ms.CounterVec("announcements_publish_failed_total", "Valid announcements that could not be published.", "source", "reason"),
		replays: ms.Counter("idempotent_replays_total",
			"Requests whose idempotency key named an announcement already accepted: answered with its id, not published again."),
		recordErrors: ms.Counter("progress_record_errors_total",
			"Accepted announcements whose progress record the request could not write; they are written again in the background."),
		recordLate: ms.CounterVec("progress_records_rewritten_total",
			"Progress records written again after the request's write failed, by outcome (written; given_up: the queue was full or the store stayed down for 2 minutes; fanout writes the record when it starts).", "outcome"),
		ignored: ms.Counter("unknown_fields_total",
			"Fields of Kafka input bodies that no body has, ignored as the first generation ignored them (a producer's typo shows here)."),
	}
	if err := ms.Err(); err != nil {
		return nil, fmt.Errorf("announce: metrics: %w", err)
	}
	metric.Zero(m.recordLate, "written", "given_up")
	return &Service{pub: pub, records: records, lim: lim, newID: newID, now: time.Now, m: m,
		unrecorded: make(chan unrecorded, maxUnrecorded)}, nil
}

// newID is time-ordered so ids sort by acceptance and index well downstream.
func newID() (string, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", err
	}
	return id.String(), nil
}

// Announce validates req and submits it (see Submit).
func (s *Service) Announce(ctx context.Context, req Request, source string, key Key) (Outcome, error) {
	ev, err := s.Prepare(req, source)
	if err != nil {
		return Outcome{}, err
	}
	return s.Submit(ctx, &ev, key)
}

// DecodeChannel decodes a REST channel body, counting a rejection.
func (s *Service) DecodeChannel(body []byte) (Request, error) {
	req, err := DecodeChannel(body)
	s.countRejection(SourceREST, err)
	return req, err
}

// DecodeUsers decodes a REST users body, counting a rejection.
func (s *Service) DecodeUsers(body []byte) (Request, error) {
	req, err := DecodeUsers(body)
	s.countRejection(SourceREST, err)
	return req, err
}

// PrepareJSON is Prepare for a raw body of either kind, as the Kafka input
// receives it.
func (s *Service) PrepareJSON(body []byte, source string) (announcement.Event, error) {
	if s.lim.MaxBodyBytes > 0 && int64(len(body)) > s.lim.MaxBodyBytes {
		s.reject(source, "body")
		return announcement.Event{}, invalid("body", fmt.Sprintf("%d bytes, the limit is %d", len(body), s.lim.MaxBodyBytes))
	}
	req, err := Decode(body)
	s.m.ignored.Add(float64(req.Ignored))
	if err != nil {
		s.countRejection(source, err)
		return announcement.Event{}, err
	}
	return s.Prepare(req, source)
}

// Prepare validates req and builds its event with a fresh id. Publishing the
// same event again (a retry) keeps the id, so downstream sees one announcement.
func (s *Service) Prepare(req Request, source string) (announcement.Event, error) {
	ev, err := s.build(req, source)
	if err != nil {
		s.countRejection(source, err)
		return announcement.Event{}, err
	}
	return ev, nil
}

func (s *Service) build(req Request, source string) (announcement.Event, error) {
	ev := announcement.Event{Source: source}
	switch {
	case req.Channel != nil && req.Usernames != nil:
		return ev, invalid("body", "has both channel_id and usernames; send one of them")
	case req.Channel != nil:
		ch := *req.Channel
		switch {
		case ch.IsString:
			if err := checkChannelString(ch.StringID); err != nil {
				return ev, err
			}
			ev.Kind, ev.Channel = announcement.KindChannel, &ch
		case ch.ID < 0:
			ev.Kind = announcement.KindAllOnline
		default:
			ev.Kind, ev.Channel = announcement.KindChannel, &ch
		}
		ev.Persist = req.Persist != nil && *req.Persist
	case req.Usernames != nil:
		jids, err := s.normalizeUsers(req.Usernames)
		if err != nil {
			return ev, err
		}
		ev.Kind, ev.Usernames = announcement.KindUsers, jids
		ev.Persist = req.Persist == nil || *req.Persist
	default:
		return ev, invalid("body", "has neither channel_id nor usernames")
	}

	raw, err := stanza.DecodeBase64(req.Message)
	if err != nil {
		return ev, fromStanza(err)
	}
	tpl, err := stanza.Parse(raw, s.lim.Template)
	if err != nil {
		return ev, fromStanza(err)
	}
	ev.Template = string(tpl.Raw())

	switch {
	case req.Priority == nil:
		// A users list is addressed to people, not to a crowd: it never
		// waits behind a giant channel's batches.
		if ev.Kind == announcement.KindUsers {
			ev.Priority = announcement.PriorityHigh
		}
	case *req.Priority == announcement.PriorityHigh:
		ev.Priority = announcement.PriorityHigh
	case *req.Priority != announcement.PriorityNormal:
		return ev, invalid("priority", fmt.Sprintf("%q: want normal or high", stanza.Clip(*req.Priority)))
	}
	if req.DryRun {
		ev.DryRun = true
		// A preview answers a waiting client: it takes the priority lane.
		ev.Priority = announcement.PriorityHigh
	}

	id, err := s.newID()
	if err != nil {
		return ev, fmt.Errorf("announce: new id: %w", err)
	}
	ev.ID = id
	ev.CreatedAt = s.now().UTC()
	return ev, nil
}

// normalizeUsers puts every username in the one recipient form of the
// topics (stanza.CanonicalRecipient: a bare username for an address of the
// users' domain without a resource, else the full JID) and drops repeats, so
// one user gets one copy however often, and in whatever form, the list names them.
// Repeats are found by stanza.RecipientKey, since ejabberd folds case: "Alice"
// is "alice". The first spelling listed is the one sent.
func (s *Service) normalizeUsers(names []string) ([]string, error) {
	if len(names) == 0 {
		return nil, invalid("usernames", "empty; want at least one username")
	}
	if len(names) > s.lim.MaxUsernames {
		return nil, invalid("usernames", fmt.Sprintf("%d usernames, the limit is %d per request", len(names), s.lim.MaxUsernames))
	}
	out := make([]string, 0, len(names))
	seen := make(map[string]struct{}, len(names))
	for i, u := range names {
		jid, err := stanza.CanonicalRecipient(u, s.lim.UserDomain)
		if err != nil {
			var ve *stanza.ValidationError
			if errors.As(err, &ve) {
				return nil, invalid("usernames", fmt.Sprintf("[%d] %s", i, ve.Reason))
			}
			return nil, invalid("usernames", fmt.Sprintf("[%d] %v", i, err))
		}
		key := stanza.RecipientKey(jid)
		if _, dup := seen[key]; dup {
			continue
		}
		seen[key] = struct{}{}
		out = append(out, jid)
	}
	return out, nil
}

// checkChannelString keeps what the fanout will look up bounded and printable;
// it is a bound parameter downstream, never SQL text.
func checkChannelString(s string) error {
	if len(s) > maxChannelStringID {
		return invalid("channel_id", fmt.Sprintf("string id is %d bytes, the limit is %d", len(s), maxChannelStringID))
	}
	if !utf8.ValidString(s) {
		return invalid("channel_id", "string id is not valid UTF-8")
	}
	for _, r := range s {
		if r < ' ' || r == 0x7f {
			return invalid("channel_id", "string id contains a control character")
		}
	}
	return nil
}

func fromStanza(err error) error {
	var ve *stanza.ValidationError
	if errors.As(err, &ve) {
		return &ValidationError{Field: ve.Field, Reason: ve.Reason}
	}
	return invalid("message", err.Error())
}

// Publish makes ev durable, bounded by the publish timeout and not by ctx's
// end: a write given up on may still land (kafka-go keeps writing a queued
// batch), so a client that went away must not turn a publish that succeeds
// into a failure, uncounted and unrecorded. Its error wraps ErrUnavailable
// or ErrTooLarge.
func (s *Service) Publish(ctx context.Context, ev announcement.Event) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.lim.PublishTimeout)
	defer cancel()
	err := s.pub.Publish(ctx, ev)
	if err == nil {
		s.m.accepted.WithLabelValues(sourceLabel(ev.Source), string(ev.Kind)).Inc()
		return nil
	}
	return s.publishFailed(ev, err)
}

// publishFailed counts a publish that failed and makes its error wrap
// ErrUnavailable or ErrTooLarge.
func (s *Service) publishFailed(ev announcement.Event, err error) error {
	reason := "unavailable"
	switch {
	case errors.Is(err, ErrTooLarge):
		reason = "too_large"
	case !errors.Is(err, ErrUnavailable):
		err = fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	s.m.failed.WithLabelValues(sourceLabel(ev.Source), reason).Inc()
	return err
}

func (s *Service) countRejection(source string, err error) {
	var ve *ValidationError
	if errors.As(err, &ve) {
		s.reject(source, ve.Field)
	}
}

func (s *Service) reject(source, field string) {
	s.m.rejected.WithLabelValues(sourceLabel(source), FieldLabel(field)).Inc()
}

// sourceLabel keeps the label set small: every Kafka topic counts as "kafka".
func sourceLabel(source string) string {
	if source == SourceREST {
		return SourceREST
	}
	return "kafka"
}

// FieldLabel maps a field name to a bounded metric label: unknown-field
// rejections name whatever the client sent, which must not become a label.
func FieldLabel(field string) string {
	switch field {
	case "body", "message", "channel_id", "usernames", "persist", "priority", "dry_run", "Idempotency-Key":
		return field
	}
	return "other"
}
