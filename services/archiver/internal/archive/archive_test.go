package archive

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/stanza"
)

// fakeStore fails the first failures calls, then keeps what it is given.
type fakeStore struct {
	mu       sync.Mutex
	failures int
	calls    int
	got      map[string]string
	ids      []string
}

func (*fakeStore) Topics() []string { return []string{"archive"} }

func (f *fakeStore) Store(ctx context.Context, id string, recs []Record) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls <= f.failures {
		return errors.New("storage down")
	}
	if f.got == nil {
		f.got = map[string]string{}
	}
	for _, r := range recs {
		f.got[string(r.Key)] = string(r.Value)
	}
	f.ids = append(f.ids, id)
	return nil
}

const tmpl = "<message to='%s' from='announcer.localhost' type='chat'><body>n=[inc_id]</body></message>"

func newArchiver(s Store) (*Archiver, *Metrics) {
	m := NewMetrics(prometheus.NewRegistry())
	return New(Options{UserDomain: "localhost", Templates: stanza.NewCache(stanza.Options{ComponentDomain: "announcer.localhost"}, 16),
		RetryMin: time.Millisecond, RetryMax: 2 * time.Millisecond}, s, zerolog.Nop(), m), m
}

func rendered(jid string, n int) string {
	return fmt.Sprintf("<message to='%s' from='announcer.localhost' type='chat'><body>n=%d</body></message>", jid, n)
}

func TestArchiveRendersOneRecordPerValidRecipient(t *testing.T) {
	s := &fakeStore{}
	a, m := newArchiver(s)
	b := announcement.Batch{AnnouncementID: "a1", Persist: true, Template: tmpl, FirstIncID: 7,
		Recipients: []string{"alice", "bad user", "bob@example.org/phone"}}
	if err := a.Archive(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"alice@localhost":       rendered("alice@localhost", 7),
		"bob@example.org/phone": rendered("bob@example.org/phone", 9),
	}
	if fmt.Sprint(s.got) != fmt.Sprint(want) {
		t.Fatalf("stored %v, want %v", s.got, want)
	}
	if s.ids[0] != "a1" {
		t.Fatalf("announcement id %q", s.ids[0])
	}
	if testutil.ToFloat64(m.invalid) != 1 || testutil.ToFloat64(m.records) != 2 {
		t.Fatalf("invalid %v records %v", testutil.ToFloat64(m.invalid), testutil.ToFloat64(m.records))
	}
}

func TestArchiveSkipsNonPersisted(t *testing.T) {
	s := &fakeStore{}
	a, m := newArchiver(s)
	if err := a.Archive(context.Background(), announcement.Batch{Template: tmpl, Recipients: []string{"alice"}}); err != nil {
		t.Fatal(err)
	}
	if s.calls != 0 || testutil.ToFloat64(m.batches.WithLabelValues("not_persisted")) != 1 {
		t.Fatalf("calls %d", s.calls)
	}
}

// A storage outage delays the batch; it is never dropped.
func TestArchiveRetriesUntilStored(t *testing.T) {
	s := &fakeStore{failures: 5}
	a, m := newArchiver(s)
	b := announcement.Batch{AnnouncementID: "a1", Persist: true, Template: tmpl, Recipients: []string{"alice"}}
	if err := a.Archive(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if s.calls != 6 || len(s.got) != 1 || testutil.ToFloat64(m.storeErrors) != 5 {
		t.Fatalf("calls %d stored %d errors %v", s.calls, len(s.got), testutil.ToFloat64(m.storeErrors))
	}
}

func TestArchiveStopsWithContext(t *testing.T) {
	s := &fakeStore{failures: 1 << 30}
	a, _ := newArchiver(s)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := a.Archive(ctx, announcement.Batch{AnnouncementID: "a1", Persist: true, Template: tmpl, Recipients: []string{"alice"}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
}

func TestArchiveBadTemplate(t *testing.T) {
	a, _ := newArchiver(&fakeStore{})
	err := a.Archive(context.Background(), announcement.Batch{Persist: true, Template: "<message to='%s' from='evil.example'/>", Recipients: []string{"alice"}})
	var bad *announcement.BadRecordError
	if !errors.As(err, &bad) || bad.Label != "template" {
		t.Fatalf("got %v, want a template BadRecordError", err)
	}
}

// fakeProgress says which announcements are cancelled and keeps what was persisted.
type fakeProgress struct {
	mu        sync.Mutex
	cancelled map[string]bool
	persisted map[string]int
}

func (p *fakeProgress) Persisted(id, _ string, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.persisted[id] += n
}

func (p *fakeProgress) Cancelled(_ context.Context, id string) bool { return p.cancelled[id] }

// A cancelled announcement's batches are not stored (nor counted as
// persisted); another announcement's are.
func TestArchiveSkipsCancelledAnnouncements(t *testing.T) {
	s := &fakeStore{}
	p := &fakeProgress{cancelled: map[string]bool{"stopped": true}, persisted: map[string]int{}}
	m := NewMetrics(prometheus.NewRegistry())
	a := New(Options{UserDomain: "localhost", Templates: stanza.NewCache(stanza.Options{ComponentDomain: "announcer.localhost"}, 16),
		RetryMin: time.Millisecond, RetryMax: 2 * time.Millisecond, Progress: p}, s, zerolog.Nop(), m)
	for _, id := range []string{"stopped", "running"} {
		b := announcement.Batch{AnnouncementID: id, Persist: true, Template: tmpl, Recipients: []string{"alice", "bob"}}
		if err := a.Archive(context.Background(), b); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if fmt.Sprint(s.ids) != "[running]" || len(s.got) != 2 {
		t.Errorf("stored batches of %v (%d records), want only running's 2", s.ids, len(s.got))
	}
	if p.persisted["stopped"] != 0 || p.persisted["running"] != 2 {
		t.Errorf("persisted %v", p.persisted)
	}
	if c, n := testutil.ToFloat64(m.batches.WithLabelValues("cancelled")), testutil.ToFloat64(m.batches.WithLabelValues("persisted")); c != 1 || n != 1 {
		t.Errorf("batches cancelled %v persisted %v, want 1 and 1", c, n)
	}
}

// A batch whose stanzas are large is stored a chunk of about chunkBytes at
// a time, every record once and in order, and counted once as persisted.
func TestArchiveStoresALargeBatchInChunks(t *testing.T) {
	s := &chunkStore{}
	a, m := newArchiver(s)
	big := "<message to='%s' from='announcer.localhost' type='chat'><body>" + strings.Repeat("x", 60_000) + "[inc_id]</body></message>"
	users := make([]string, 100)
	for i := range users {
		users[i] = fmt.Sprintf("u%d", i)
	}
	if err := a.Archive(context.Background(), announcement.Batch{AnnouncementID: "big", Persist: true, Template: big, Recipients: users}); err != nil {
		t.Fatal(err)
	}
	if len(s.chunks) < 5 {
		t.Fatalf("%d storage writes for 6 MB of stanzas, want them in chunks of about 1 MiB", len(s.chunks))
	}
	n := 0
	for _, c := range s.chunks {
		if c.bytes > chunkBytes+70_000 {
			t.Fatalf("a write of %d bytes", c.bytes)
		}
		for _, k := range c.keys {
			if want := fmt.Sprintf("u%d@localhost", n); k != want {
				t.Fatalf("record %d is for %s, want %s", n, k, want)
			}
			n++
		}
	}
	if n != 100 || testutil.ToFloat64(m.records) != 100 || testutil.ToFloat64(m.batches.WithLabelValues("persisted")) != 1 {
		t.Fatalf("%d records stored, records_total %v, persisted batches %v", n, testutil.ToFloat64(m.records),
			testutil.ToFloat64(m.batches.WithLabelValues("persisted")))
	}
}

// chunkStore keeps each write's keys and size.
type chunkStore struct {
	chunks []struct {
		keys  []string
		bytes int
	}
}

func (*chunkStore) Topics() []string { return []string{"archive"} }

func (c *chunkStore) Store(_ context.Context, _ string, recs []Record) error {
	var w struct {
		keys  []string
		bytes int
	}
	for _, r := range recs {
		w.keys = append(w.keys, string(r.Key))
		w.bytes += len(r.Key) + len(r.Value)
	}
	c.chunks = append(c.chunks, w)
	return nil
}

// sizeStore refuses records for their size as Kafka does: a write that
// holds a record of over alone bytes (key and value), or of over together
// bytes in all, is refused whole, every record failing with the broker's
// MESSAGE_TOO_LARGE, or with kafka-go's MessageTooLargeError for the call
// when writer is set. It keeps what it takes, and the largest record it was
// handed.
type sizeStore struct {
	mu              sync.Mutex
	alone, together int
	writer          bool
	calls           int
	largest         int
	got             map[string]string
}

func (*sizeStore) Topics() []string { return []string{"archive"} }

func (s *sizeStore) Store(_ context.Context, _ string, recs []Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	total, over := 0, -1
	for i, r := range recs {
		n := len(r.Key) + len(r.Value)
		total += n
		s.largest = max(s.largest, n)
		if s.alone > 0 && n > s.alone && over < 0 {
			over = i
		}
	}
	if over >= 0 && s.writer {
		return kafka.MessageTooLargeError{Message: kafka.Message{Key: recs[over].Key, Value: recs[over].Value}}
	}
	if over >= 0 || (s.together > 0 && total > s.together) {
		errs := make(kafka.WriteErrors, len(recs))
		for i := range errs {
			errs[i] = fmt.Errorf("%w: the record batch is over max.message.bytes", kafka.MessageSizeTooLarge)
		}
		return kafkabus.Partial(errs, len(recs))
	}
	if s.got == nil {
		s.got = map[string]string{}
	}
	for _, r := range recs {
		s.got[string(r.Key)] = string(r.Value)
	}
	return nil
}

// tooLarge fails t unless err is a too_large BadRecordError whose reason
// says each of want.
func tooLarge(t *testing.T, err error, calls int, want ...string) {
	t.Helper()
	var bad *announcement.BadRecordError
	if !errors.As(err, &bad) || bad.Label != "too_large" {
		t.Fatalf("got %v after %d writes, want a too_large BadRecordError", err, calls)
	}
	t.Logf("reason: %s", bad.Reason)
	for _, w := range want {
		if !strings.Contains(bad.Reason, w) {
			t.Errorf("reason %q does not say %q", bad.Reason, w)
		}
	}
}

// A stanza the storage refuses for its size can never be stored: the batch
// is refused, to be dead-lettered, rather than retried for ever, and the
// batch's other stanzas are stored.
func TestArchiveRefusesStanzasTheStorageFindsTooLarge(t *testing.T) {
	for _, writer := range []bool{false, true} {
		name := "the broker's MESSAGE_TOO_LARGE"
		if writer {
			name = "kafka-go's MessageTooLargeError"
		}
		t.Run(name, func(t *testing.T) {
			s := &sizeStore{alone: 400, writer: writer}
			a, m := newArchiver(s)
			long := strings.Repeat("l", 300) + "@example.org"
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			err := a.Archive(ctx, announcement.Batch{AnnouncementID: "a1", Persist: true, Template: tmpl, FirstIncID: 7,
				Recipients: []string{"alice", long, "bob"}})
			tooLarge(t, err, s.calls, "a1", "3 recipients", fmt.Sprintf("%d bytes", len(long)+len(rendered(long, 8))), "2 stored")
			want := map[string]string{"alice@localhost": rendered("alice@localhost", 7), "bob@localhost": rendered("bob@localhost", 9)}
			if fmt.Sprint(s.got) != fmt.Sprint(want) {
				t.Errorf("stored %v, want %v", s.got, want)
			}
			if s.calls > 4 || testutil.ToFloat64(m.records) != 2 {
				t.Errorf("%d writes, records_stored_total %v; want at most 4 and 2", s.calls, testutil.ToFloat64(m.records))
			}
		})
	}
}

// A stanza over the writer's limit is refused before it is written.
// [inc_id] grows a stanza as the ids gain digits: in this batch the first
// two recipients' stanzas fit, the last two do not.
func TestArchiveRefusesStanzasOverTheWritersLimitUnwritten(t *testing.T) {
	many := "<message to='%s' from='announcer.localhost' type='chat'><body>" + strings.Repeat("[inc_id] ", 20) + "</body></message>"
	render := func(jid string, n int) string {
		return strings.Replace(strings.ReplaceAll(many, "[inc_id]", strconv.Itoa(n)), "%s", jid, 1)
	}
	size := func(jid string, n int) int { return len(jid) + len(render(jid, n)) }
	limit := size("u0@localhost", 8) + 10
	s := &sizeStore{}
	m := NewMetrics(prometheus.NewRegistry())
	a := New(Options{UserDomain: "localhost", Templates: stanza.NewCache(stanza.Options{ComponentDomain: "announcer.localhost"}, 16),
		RetryMin: time.Millisecond, RetryMax: 2 * time.Millisecond, MaxRecordBytes: limit}, s, zerolog.Nop(), m)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := a.Archive(ctx, announcement.Batch{AnnouncementID: "a1", Persist: true, Template: many, FirstIncID: 8,
		Recipients: []string{"u0", "u1", "u2", "u3"}})
	tooLarge(t, err, s.calls, "a1", "4 recipients", fmt.Sprintf("%d bytes", size("u3@localhost", 11)),
		fmt.Sprintf("limit of %d bytes", limit), "2 stored")
	if s.largest > limit {
		t.Errorf("the store was handed a record of %d bytes, over the writer's limit of %d", s.largest, limit)
	}
	want := map[string]string{"u0@localhost": render("u0@localhost", 8), "u1@localhost": render("u1@localhost", 9)}
	if fmt.Sprint(s.got) != fmt.Sprint(want) || s.calls != 1 || testutil.ToFloat64(m.records) != 2 {
		t.Errorf("stored %v in %d writes, records_stored_total %v; want %v in 1 write", s.got, s.calls, testutil.ToFloat64(m.records), want)
	}
}

// A write refused as too large says so of a record only when the record
// was written alone: kafka-go sends the records of concurrent writes to a
// partition in one produce request, which the broker refuses whole, so
// another batch's stanza, or stanzas that fit only one by one, can fail a
// batch's write. Such a batch is stored, not refused.
func TestArchiveStoresStanzasRefusedOnlyTogether(t *testing.T) {
	s := &sizeStore{together: 300}
	a, m := newArchiver(s)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.Archive(ctx, announcement.Batch{AnnouncementID: "a1", Persist: true, Template: tmpl,
		Recipients: []string{"alice", "bob", "carol"}}); err != nil {
		t.Fatalf("got %v after %d writes, want the batch stored", err, s.calls)
	}
	if len(s.got) != 3 || testutil.ToFloat64(m.records) != 3 || testutil.ToFloat64(m.batches.WithLabelValues("persisted")) != 1 {
		t.Errorf("stored %v, records_stored_total %v", s.got, testutil.ToFloat64(m.records))
	}
}
