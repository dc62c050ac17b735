package kafkaio

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	consumer "github.com/announcer/announcer/pkg/kafkain"
	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/services/fanout/internal/audience"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// The test readers use kafka-go's shared default transport; its idle connections
	// are not a leak of ours.
	kafka.DefaultTransport.(*kafka.Transport).CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// fakeResolver fails the first failN calls, then records the events.
type fakeResolver struct {
	mu    sync.Mutex
	failN int
	seen  []string
}

func (f *fakeResolver) Resolve(_ context.Context, ev announcement.Event) (audience.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failN > 0 {
		f.failN--
		return audience.Result{}, errors.New("mysql: connection refused")
	}
	f.seen = append(f.seen, ev.ID)
	return audience.Result{Recipients: len(ev.ID)}, nil
}

func record(t *testing.T, ev announcement.Event) kafka.Message {
	t.Helper()
	v, err := ev.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return kafka.Message{Topic: "announcements", Value: v}
}

var goodEvent = announcement.Event{ID: "a1", Kind: announcement.KindAllOnline,
	Template: "<message from='announcer.localhost' to='%s'><body>hi</body></message>"}

func newTestHandler(uc Resolver, done func(announcement.Event, audience.Result)) *Handler {
	return NewHandler(uc, Decoder{Template: stanza.Options{ComponentDomain: "announcer.localhost"}},
		backoff.Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond}, zerolog.Nop(), done)
}

func TestResolvesAndReportsEachEvent(t *testing.T) {
	uc := &fakeResolver{failN: 2}
	var got []audience.Result
	h := newTestHandler(uc, func(_ announcement.Event, r audience.Result) { got = append(got, r) })
	if err := h.Handle(context.Background(), record(t, goodEvent)); err != nil {
		t.Fatal(err)
	}
	if len(uc.seen) != 1 || uc.seen[0] != "a1" || len(got) != 1 || got[0].Recipients != 2 {
		t.Fatalf("resolved %v, reported %+v", uc.seen, got)
	}
}

func TestUndecodableRecordsAreRejected(t *testing.T) {
	uc := &fakeResolver{}
	h := newTestHandler(uc, nil)
	bad := goodEvent
	bad.Template = "<message from='evil.example' to='%s'/>" // ejabberd would close the stream
	for _, m := range []kafka.Message{{Value: []byte("{not json")}, record(t, bad)} {
		err := h.Handle(context.Background(), m)
		var rej *consumer.Reject
		if !errors.As(err, &rej) || rej.Reason == "" {
			t.Fatalf("%q: err = %v, want a Reject with a reason", m.Value, err)
		}
	}
	if len(uc.seen) != 0 {
		t.Fatalf("bad records reached the use case: %v", uc.seen)
	}
}

func TestShutdownWhileWaitingIsNotARejection(t *testing.T) {
	uc := &fakeResolver{failN: 1 << 30}
	h := newTestHandler(uc, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := h.Handle(ctx, record(t, goodEvent))
	var rej *consumer.Reject
	if err == nil || errors.As(err, &rej) {
		t.Fatalf("err = %v, want the context's error (the record stays uncommitted)", err)
	}
}
