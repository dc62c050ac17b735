// Package archive is the archiver's use case: for a persisted delivery batch,
// render one stanza per recipient and store them all before the batch counts
// as done; a storage outage pauses the batch (retried with backoff), it never
// drops it. A stanza too large for the storage is the batch's own fault: the
// batch is dead-lettered, its other stanzas stored.
package archive

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/metric"
	"github.com/announcer/announcer/pkg/progress"
	"github.com/announcer/announcer/pkg/stanza"
)

// Record is one stored message.
type Record struct {
	Topic string // one of the Store's Topics; each record is stored on all of them
	Key   []byte // the recipient's JID
	Value []byte // the stanza rendered for that recipient
}

// Store writes records durably (acknowledged by the storage).
type Store interface {
	// Topics are where the storage keeps records, a copy on each.
	Topics() []string
	// Store writes each record to its topic; nil once all are acknowledged.
	// When only some were, it returns a *kafkabus.PartialWriteError naming
	// the others. A write refused for its size says so as Kafka does (see
	// refusedForSize).
	Store(ctx context.Context, announcementID string, recs []Record) error
}

// Templates parses a batch's template at most once per announcement under
// the connection mode's rules, the sender's (a *stanza.Cache).
type Templates interface {
	Get(announcementID, raw string) (*stanza.Template, error)
}

// Progress is the announcements' progress store as the archiver uses it (a
// *progress.Tracker). Its failures never stop archiving.
type Progress interface {
	Persisted(id, batch string, n int)
	Cancelled(ctx context.Context, id string) bool
}

type noProgress struct{}

func (noProgress) Persisted(string, string, int)          {}
func (noProgress) Cancelled(context.Context, string) bool { return false }

// Options configure the use case.
type Options struct {
	UserDomain string // completes bare usernames into JIDs
	Templates  Templates
	RetryMin   time.Duration
	RetryMax   time.Duration
	// Progress records what was persisted (nil: nothing is recorded).
	Progress Progress
	// MaxRecordBytes is the largest record the store's writer takes (its
	// BatchBytes): a stanza whose key and value are longer is refused
	// unwritten. 0: only the storage's answers refuse a stanza for its size.
	MaxRecordBytes int
}

// Archiver archives batches.
type Archiver struct {
	opt  Options
	sink Store
	log  zerolog.Logger
	m    *Metrics
	// writes is held shared by every storage write, and alone by a write
	// whose answer must be about its own records (see writeAlone).
	writes sync.RWMutex
}

// New builds the use case.
func New(opt Options, store Store, log zerolog.Logger, m *Metrics) *Archiver {
	if opt.RetryMin <= 0 {
		opt.RetryMin = 100 * time.Millisecond
	}
	if opt.RetryMax < opt.RetryMin {
		opt.RetryMax = max(opt.RetryMin, 30*time.Second)
	}
	if opt.Progress == nil {
		opt.Progress = noProgress{}
	}
	return &Archiver{opt: opt, sink: store, log: log.With().Str("component", "archive").Logger(), m: m}
}

// NotPersisted counts a batch passed over without being decoded (its
// record header says it is not to be persisted).
func (a *Archiver) NotPersisted() { a.m.batches.WithLabelValues("not_persisted").Inc() }

// Archive stores b's rendered stanzas if b is to be persisted. It returns nil
// once they are stored (or there is nothing to store), a
// *announcement.BadRecordError when they never can be, or ctx's error.
func (a *Archiver) Archive(ctx context.Context, b announcement.Batch) error {
	if !b.Persist {
		a.m.batches.WithLabelValues("not_persisted").Inc()
		return nil
	}
	// A cancelled announcement's batches not stored yet are skipped, as the
	// senders skip those not sent yet.
	if a.opt.Progress.Cancelled(ctx, b.AnnouncementID) {
		a.m.batches.WithLabelValues("cancelled").Inc()
		return nil
	}
	tmpl, err := a.opt.Templates.Get(b.AnnouncementID, b.Template)
	if err != nil {
		return &announcement.BadRecordError{Reason: "template: " + err.Error(), Label: "template"}
	}
	policy := backoff.Policy{Initial: a.opt.RetryMin, Max: a.opt.RetryMax}
	stored, invalid := 0, 0
	big := &oversize{limit: a.opt.MaxRecordBytes}
	// A batch is rendered and stored a chunk at a time: a large template
	// times a thousand recipients, times the batches in flight, would
	// otherwise be hundreds of MiB at once.
	for next := 0; next < len(b.Recipients); {
		var recs []Record
		recs, next = a.render(tmpl, &b, next, &invalid)
		if len(recs) == 0 {
			continue
		}
		n, err := a.store(ctx, policy, &b, recs, big)
		if err != nil {
			return err
		}
		stored += n
	}
	if invalid > 0 {
		a.m.invalid.Add(float64(invalid))
	}
	if big.records > 0 {
		// The stanzas that fit are stored all the same, and the batch is
		// dead-lettered for the others: the dead letter keeps the whole
		// batch, for an operator to replay once the limit is raised (what was
		// stored is then stored twice, as after a retried write), and the
		// recipients whose stanzas fit are archived meanwhile. Refusing the
		// batch whole would archive none of them until then, and knowing
		// every size before the first write would take rendering it twice.
		if stored > 0 {
			a.opt.Progress.Persisted(b.AnnouncementID, progress.BatchKey(&b), stored)
		}
		return &announcement.BadRecordError{Reason: big.reason(&b, stored), Label: "too_large"}
	}
	if stored == 0 {
		a.m.batches.WithLabelValues("empty").Inc()
		return nil
	}
	a.m.batches.WithLabelValues("persisted").Inc()
	a.opt.Progress.Persisted(b.AnnouncementID, progress.BatchKey(&b), stored)
	return nil
}

// store writes a copy of recs on every storage topic, retrying with backoff
// until the storage has acknowledged each copy or ctx ends, and returns how
// many of recs it stored. A retry writes only the copies not acknowledged
// yet: the others are durable, and written again they would be archived
// twice. A copy too large for the storage is never written again: big
// keeps it, and its record is not stored.
func (a *Archiver) store(ctx context.Context, policy backoff.Policy, b *announcement.Batch, recs []Record, big *oversize) (int, error) {
	pending := copies(recs, a.sink.Topics())
	refused := map[int]bool{} // the indices in recs of the records big kept
	for attempt := 0; ; {
		if pending = big.sift(pending, refused); len(pending) == 0 {
			break
		}
		err := a.write(ctx, b.AnnouncementID, pending)
		pending = kafkabus.Unacknowledged(pending, err)
		if len(pending) > 0 && refusedForSize(err) {
			if !big.warned {
				big.warned = true
				a.log.Warn().Err(err).Str("announcement", b.AnnouncementID).Int("seq", b.Seq).
					Msg("the storage refused a write as too large; writing its records one at a time")
			}
			// What writeAlone leaves is not known too large: written together
			// again without waiting (it stored or refused at least one copy,
			// so this ends).
			if pending, err = a.writeAlone(ctx, b.AnnouncementID, pending, big, refused); err == nil {
				continue
			}
		}
		if len(pending) == 0 {
			break
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		a.m.storeErrors.Inc()
		d := policy.Delay(attempt)
		a.log.Warn().Err(err).Str("announcement", b.AnnouncementID).Int("seq", b.Seq).Int("unacknowledged", len(pending)).
			Int("attempt", attempt+1).Dur("retry_in", d).Msg("storage write failed; the batch waits")
		if err := backoff.Sleep(ctx, d); err != nil {
			return 0, err
		}
		attempt++
	}
	n := len(recs) - len(refused)
	a.m.records.Add(float64(n))
	return n, nil
}

// write hands pending to the store in one write.
func (a *Archiver) write(ctx context.Context, announcementID string, pending []copyOf) error {
	recs := make([]Record, len(pending))
	for i, c := range pending {
		recs[i] = c.Record
	}
	a.writes.RLock()
	defer a.writes.RUnlock()
	return a.sink.Store(ctx, announcementID, recs)
}

// copyOf is a copy of the record at index rec of a chunk, for one topic.
type copyOf struct {
	Record
	rec int
}

// copies returns a copy of each record for each topic, topic by topic.
func copies(recs []Record, topics []string) []copyOf {
	out := make([]copyOf, 0, len(recs)*len(topics))
	for _, t := range topics {
		for i, r := range recs {
			r.Topic = t
			out = append(out, copyOf{Record: r, rec: i})
		}
	}
	return out
}

// chunkBytes bounds the stanzas rendered for one storage write.
const chunkBytes = 1 << 20

// render builds one record per valid recipient from recipient from on, in
// one new buffer, until about chunkBytes are rendered; it returns the
// records and where the next chunk starts, and adds the invalid recipients
// it passed to *invalid. The buffer is never reused: a storage write that
// timed out may still be sent from it.
func (a *Archiver) render(tmpl *stanza.Template, b *announcement.Batch, from int, invalid *int) ([]Record, int) {
	type span struct{ key, end int }
	per := len(tmpl.Raw()) + 64
	left := len(b.Recipients) - from
	spans := make([]span, 0, min(left, chunkBytes/per+1))
	buf := make([]byte, 0, min(left*per, chunkBytes+per))
	i := from
	for ; i < len(b.Recipients) && len(buf) < chunkBytes; i++ {
		start := len(buf)
		var err error
		buf, err = stanza.AppendJID(buf, b.Recipients[i], a.opt.UserDomain)
		if err != nil || len(buf) == start {
			buf = buf[:start]
			*invalid++
			continue
		}
		keyEnd := len(buf)
		buf = tmpl.AppendRender(buf, string(buf[start:keyEnd]), b.FirstIncID+uint64(i))
		spans = append(spans, span{key: keyEnd, end: len(buf)})
	}
	recs := make([]Record, len(spans))
	start := 0
	for j, s := range spans {
		recs[j] = Record{Key: buf[start:s.key:s.key], Value: buf[s.key:s.end:s.end]}
		start = s.end
	}
	return recs, i
}

// Metrics of the use case.
type Metrics struct {
	records     prometheus.Counter
	invalid     prometheus.Counter
	storeErrors prometheus.Counter
	batches     *prometheus.CounterVec
}

// NewMetrics registers the archive metrics on reg (the service's, which names
// them announcer_archiver_…).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	s := metric.Must(reg)
	return &Metrics{
		records:     s.Counter("records_stored_total", "Rendered stanzas stored (acknowledged by the storage cluster)."),
		invalid:     s.Counter("invalid_recipients_total", "Recipients skipped because they are not valid JIDs."),
		storeErrors: s.Counter("store_errors_total", "Failed storage writes (the batch is retried)."),
		batches:     s.CounterVec("batches_total", "Batches finished, by outcome (persisted, not_persisted, empty, cancelled).", "outcome"),
	}
}
