package main

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/stage"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/services/sender/internal/delivery"
	"github.com/announcer/announcer/services/sender/internal/testuser"
)

type fakeWriter struct{ msgs []kafka.Message }

func (w *fakeWriter) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	w.msgs = append(w.msgs, msgs...)
	return nil
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// A batch goes back to its node's topic and lane (the own node's when it
// names a node not read here), marked with why, passed over by the archiver,
// under a key of its own each time so the consumers' dedupe cannot take it
// for the original.
func TestRequeueWritesTheBatchBackMarked(t *testing.T) {
	w := &fakeWriter{}
	r := &requeue{w: w, own: "n1", topic: func(node string, high bool) string {
		if node != "n1" && node != "n2" {
			return ""
		}
		if high {
			return "d." + node + ".p"
		}
		return "d." + node
	}}
	b := announcement.Batch{AnnouncementID: "a1", Seq: 3, Node: "n2", Template: "<message to='%s' from='c.localhost'><body>x</body></message>",
		Recipients: []string{"u1", "u2"}, Persist: true}
	high := b
	high.Priority = announcement.PriorityHigh
	stray := b
	stray.Node = "elsewhere"
	for _, c := range []struct {
		b     announcement.Batch
		why   string
		topic string
	}{{b, delivery.AgainShutdown, "d.n2"}, {b, delivery.AgainShutdown, "d.n2"}, {high, delivery.AgainRefused, "d.n2.p"}, {stray, delivery.AgainShutdown, "d.n1"}} {
		if err := r.Requeue(context.Background(), c.b, c.why); err != nil {
			t.Fatal(err)
		}
		m := w.msgs[len(w.msgs)-1]
		got, err := (*announcement.Decoder)(nil).Batch(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		got.Version = 0
		if m.Topic != c.topic || !reflect.DeepEqual(got, c.b) {
			t.Fatalf("wrote %s %+v, want %s %+v", m.Topic, got, c.topic, c.b)
		}
		if why, ok := again(m); !ok || why != c.why || header(m, announcement.HeaderPersist) != "0" {
			t.Fatalf("headers %v: want the mark %q and persist 0", m.Headers, c.why)
		}
		if !bytes.HasPrefix(m.Key, append(c.b.Key(), '/')) {
			t.Fatalf("key %q does not start with the batch's", m.Key)
		}
	}
	if bytes.Equal(w.msgs[0].Key, w.msgs[1].Key) || bytes.Equal(w.msgs[0].Key, b.Key()) {
		t.Fatalf("keys %q, %q: the same batch written back twice must differ from each other and the original", w.msgs[0].Key, w.msgs[1].Key)
	}
}

type fakeDeliverer struct{ calls []string }

func (f *fakeDeliverer) Deliver(_ context.Context, b announcement.Batch) error {
	f.calls = append(f.calls, "deliver "+b.AnnouncementID)
	return nil
}

func (f *fakeDeliverer) Again(_ context.Context, b announcement.Batch, why string) error {
	f.calls = append(f.calls, "again "+b.AnnouncementID+" "+why)
	return nil
}

// The deliveries handler gives a marked record to Again with its mark, any
// other to Deliver; an undecodable one is rejected either way.
func TestDeliveriesHandlerRoutesMarkedRecords(t *testing.T) {
	b := announcement.Batch{AnnouncementID: "a1", Template: "<message to='%s' from='c.localhost'><body>x</body></message>", Recipients: []string{"u"}}
	v, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDeliverer{}
	h := deliveries((*announcement.Decoder)(nil).Batch, d)
	marked := []kafka.Header{{Key: headerAgain, Value: []byte(delivery.AgainRefused)}}
	for _, m := range []kafka.Message{{Value: v}, {Value: v, Headers: marked}} {
		if err := h(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(d.calls, "; "); got != "deliver a1; again a1 multicast-refused" {
		t.Fatalf("calls %q", got)
	}
	var rej stage.Rejection
	if err := h(context.Background(), kafka.Message{Value: []byte("{"), Headers: marked}); !errors.As(err, &rej) {
		t.Fatalf("undecodable marked record: %v, want a rejection", err)
	}
}

// A record written back through the bus is taken from the node's topic by
// the whole sender and delivered.
func TestSenderDeliversAMarkedRecord(t *testing.T) {
	env := stacktest.Get(t)
	cfg := testConfig(t, env)
	user := testuser.Login(t, env, "snd_again")
	s := start(t, cfg, hooks{})
	b := announcement.Batch{AnnouncementID: "again", Node: "node1", Template: "<message to='%s' from='" + cfg.Component.JID() + "' type='chat'><body>again [inc_id]</body></message>",
		FirstIncID: 7, Recipients: []string{user.JID.String()}, CreatedAt: time.Now()}
	w := kafkabus.NewWriter(kafkabus.Plaintext(env.KafkaBrokers), kafkabus.WriterOptions{WriteTimeout: 10 * time.Second})
	defer func() { _ = w.Close() }()
	r := &requeue{w: w, own: "node1", topic: func(string, bool) string { return cfg.DeliveriesTopic("node1") }}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.Requeue(ctx, b, delivery.AgainShutdown); err != nil {
		t.Fatal(err)
	}
	msgs, err := user.Wait(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(msgs[0].Bodies, ""); got != "again 7" {
		t.Fatalf("received %q", got)
	}
	testkit.Eventually(t, 10*time.Second, "the resend counted", func() bool {
		_, metrics := testkit.Get(t, s.debug+"/metrics")
		return strings.Contains(metrics, `announcer_sender_batches_total{node="node1",outcome="delivered"} 1`)
	})
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
}
