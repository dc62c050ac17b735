package archive

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
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
