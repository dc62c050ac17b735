package kafkaio

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/services/fanout/internal/audience"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// kafkabus.EnsureTopics and the test readers use kafka-go's shared default
	// transport; its idle connections are not a leak of ours.
	kafka.DefaultTransport.(*kafka.Transport).CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// fakeReader serves queued records and records commits, like a group reader.
type fakeReader struct {
	mu      sync.Mutex
	queue   chan kafka.Message
	commits []kafka.Message
	failN   int // fail this many commits first
}

func (r *fakeReader) FetchMessage(ctx context.Context) (kafka.Message, error) {
	select {
	case m := <-r.queue:
		return m, nil
	case <-ctx.Done():
		return kafka.Message{}, ctx.Err()
	}
}

func (r *fakeReader) CommitMessages(_ context.Context, msgs ...kafka.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failN > 0 {
		r.failN--
		return errors.New("coordinator not available")
	}
	r.commits = append(r.commits, msgs...)
	return nil
}

func (r *fakeReader) committed() []kafka.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.commits)
}

// fakeResolver records what it resolved; gate, when set, holds each Resolve.
type fakeResolver struct {
	mu       sync.Mutex
	seen     []string
	inFly    int
	maxInFly int
	gate     chan struct{}
}

func (f *fakeResolver) Resolve(ctx context.Context, ev announcement.Event) (audience.Result, error) {
	f.mu.Lock()
	f.inFly++
	f.maxInFly = max(f.maxInFly, f.inFly)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFly--
		f.mu.Unlock()
	}()
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return audience.Result{}, ctx.Err()
		}
	}
	f.mu.Lock()
	f.seen = append(f.seen, ev.ID)
	f.mu.Unlock()
	return audience.Result{Outcome: audience.Delivered}, nil
}

type fakeDLQ struct {
	mu      sync.Mutex
	letters []string
}

func (d *fakeDLQ) DeadLetter(_ context.Context, m kafka.Message, reason string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.letters = append(d.letters, string(m.Value)+" | "+reason)
	return nil
}

func record(partition int, offset int64, id string) kafka.Message {
	ev := announcement.Event{ID: id, Kind: announcement.KindUsers, Usernames: []string{"a"}, Template: "<message to='%s'/>"}
	v, _ := ev.Encode()
	return kafka.Message{Topic: "ann", Partition: partition, Offset: offset, Value: v}
}

func newTestConsumer(t *testing.T, r Reader, uc Resolver, dl DeadLetterer, o Options) *Consumer {
	t.Helper()
	o.Retry = backoff.Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond}
	c, err := NewConsumer(r, uc, dl, Decoder{}, o, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCommitsAfterResolveAndDeadLettersBadRecords(t *testing.T) {
	r := &fakeReader{queue: make(chan kafka.Message, 10), failN: 2}
	uc := &fakeResolver{}
	dl := &fakeDLQ{}
	var done []string
	var mu sync.Mutex
	c := newTestConsumer(t, r, uc, dl, Options{Workers: 2, Done: func(ev announcement.Event, _ audience.Result) {
		mu.Lock()
		done = append(done, ev.ID)
		mu.Unlock()
	}})
	r.queue <- record(0, 0, "a")
	r.queue <- kafka.Message{Topic: "ann", Partition: 0, Offset: 1, Value: []byte(`{"id":"x"`)}
	bad := announcement.Event{ID: "t", Kind: announcement.KindUsers, Usernames: []string{"a"}, Template: "<message>no placeholder</message>"}
	bv, _ := bad.Encode()
	r.queue <- kafka.Message{Topic: "ann", Partition: 0, Offset: 2, Value: bv}
	r.queue <- record(0, 3, "b")
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	waitFor(t, "4 commits", func() bool { return len(r.committed()) == 4 })
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	var offsets []int64
	for _, m := range r.committed() {
		offsets = append(offsets, m.Offset)
	}
	if !slices.Equal(offsets, []int64{0, 1, 2, 3}) {
		t.Fatalf("commits %v: want every offset, in order", offsets)
	}
	if !slices.Equal(uc.seen, []string{"a", "b"}) || !slices.Equal(done, []string{"a", "b"}) {
		t.Fatalf("resolved %v, done %v", uc.seen, done)
	}
	if len(dl.letters) != 2 {
		t.Fatalf("dead letters %v", dl.letters)
	}
}

func TestShutdownLeavesUnfinishedUncommitted(t *testing.T) {
	r := &fakeReader{queue: make(chan kafka.Message, 10)}
	uc := &fakeResolver{gate: make(chan struct{})} // never finishes
	c := newTestConsumer(t, r, uc, &fakeDLQ{}, Options{Workers: 1, Drain: 20 * time.Millisecond})
	r.queue <- record(0, 0, "a")
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	waitFor(t, "resolve to start", func() bool { uc.mu.Lock(); defer uc.mu.Unlock(); return uc.inFly == 1 })
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n := len(r.committed()); n != 0 {
		t.Fatalf("%d commits of an event that never finished", n)
	}
}

func TestPartitionsRunConcurrentlyUpToWorkersAndInOrderWithin(t *testing.T) {
	r := &fakeReader{queue: make(chan kafka.Message, 100)}
	uc := &fakeResolver{gate: make(chan struct{})}
	c := newTestConsumer(t, r, uc, &fakeDLQ{}, Options{Workers: 3, QueuePerPartition: 8})
	for p := range 5 {
		for o := range 4 {
			r.queue <- record(p, int64(o), fmt.Sprintf("p%d-%d", p, o))
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	waitFor(t, "3 in flight", func() bool { uc.mu.Lock(); defer uc.mu.Unlock(); return uc.inFly == 3 })
	time.Sleep(20 * time.Millisecond) // a fourth would have started by now
	uc.mu.Lock()
	if uc.inFly != 3 {
		t.Errorf("%d in flight, want Workers = 3", uc.inFly)
	}
	uc.mu.Unlock()
	close(uc.gate)
	waitFor(t, "all commits", func() bool { return len(r.committed()) == 20 })
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	last := map[int]int64{}
	for _, m := range r.committed() {
		if prev, ok := last[m.Partition]; ok && m.Offset != prev+1 {
			t.Fatalf("partition %d committed %d after %d", m.Partition, m.Offset, prev)
		}
		last[m.Partition] = m.Offset
	}
	if uc.maxInFly != 3 {
		t.Fatalf("max in flight %d", uc.maxInFly)
	}
}

func TestDecoderChecksTemplate(t *testing.T) {
	d := Decoder{Template: stanza.Options{ComponentDomain: "announcer.localhost"}}
	ok := announcement.Event{ID: "a", Kind: announcement.KindAllOnline, Template: "<message from='announcer.localhost' to='%s'><body>hi</body></message>"}
	v, _ := ok.Encode()
	if _, err := d.Decode(v); err != nil {
		t.Fatal(err)
	}
	for _, tmpl := range []string{
		"<message from='evil.example' to='%s'/>",       // outside the component domain
		"<message from='announcer.localhost' to='x'/>", // no %s
		"<message from='announcer.localhost' to='%s'>", // not well-formed
	} {
		bad := ok
		bad.Template = tmpl
		v, _ := bad.Encode()
		if _, err := d.Decode(v); err == nil {
			t.Errorf("%s: accepted", tmpl)
		}
	}
}

// The announcements record is a trust boundary: whatever Decode accepts must
// be an event the use case can act on.
func FuzzDecode(f *testing.F) {
	for _, ev := range []announcement.Event{
		{ID: "a", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{ID: 1}, Template: "<message to='%s'/>"},
		{ID: "b", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{StringID: "x", IsString: true}, Template: "<message to='%s'><body>[inc_id]</body></message>"},
		{ID: "c", Kind: announcement.KindAllOnline, Template: "<presence to='%s'/>"},
		{ID: "d", Kind: announcement.KindUsers, Usernames: []string{"u", "v@w/x"}, Template: "<message to='%s'/>", Persist: true},
		{ID: "e", Kind: announcement.KindShard, Shard: &announcement.Shard{ChannelID: 1, Count: 2, FromMemberID: 5, ToMemberID: 9}, Template: "<message to='%s'/>"},
	} {
		v, _ := ev.Encode()
		f.Add(v)
	}
	f.Add([]byte(`{"id":"x","kind":"users","usernames":[],"template":"<message to='%s'/>"}`))
	f.Add([]byte(`{"id":"x","kind":"channel_shard","shard":{"count":0},"template":"t"}`))
	d := Decoder{}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := d.Decode(b)
		if err != nil {
			return
		}
		if err := ev.Check(); err != nil {
			t.Fatalf("accepted an event that fails Check: %v", err)
		}
		switch ev.Kind {
		case announcement.KindChannel:
			if ev.Channel == nil {
				t.Fatal("channel event without channel")
			}
		case announcement.KindShard:
			if ev.Shard == nil || ev.Shard.Count < 1 {
				t.Fatal("shard event without a usable shard")
			}
		case announcement.KindUsers:
			if len(ev.Usernames) == 0 {
				t.Fatal("users event without users")
			}
		}
		if _, err := stanza.Parse([]byte(ev.Template), stanza.Options{}); err != nil {
			t.Fatalf("accepted an invalid template: %v", err)
		}
		again, err := ev.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.Decode(again); err != nil {
			t.Fatalf("re-encoded event rejected: %v", err)
		}
	})
}
