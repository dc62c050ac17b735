package stage

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
)

// A consumer runs again after a run that abandoned a record: the record is
// handled again (not taken for a duplicate of itself), and what finished is
// not handled twice.
func TestConsumerRunsAgainAfterAnAbandonedRecord(t *testing.T) {
	b := newFakeBroker("a", "b", "stuck")
	var stuck atomic.Bool
	stuck.Store(true)
	var calls counting
	h := func(ctx context.Context, m kafka.Message) error {
		if string(m.Value) == "stuck" && stuck.Load() {
			<-ctx.Done() // a batch whose node is gone: only the drain timeout ends it
			return ctx.Err()
		}
		return calls.handle(ctx, m)
	}
	c := NewConsumer(nopDLQ{}, h, ConsumerOptions{MaxInFlight: 4, Dedupe: 16}, testkit.Log(t, zerolog.ErrorLevel), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.run(ctx, b, func() time.Duration { return 50 * time.Millisecond }) }()
	testkit.Eventually(t, 5*time.Second, "a and b handled and committed", func() bool {
		_, committed := b.state()
		return committed == 2
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, committed := b.state(); committed != 2 {
		t.Fatalf("committed up to %d, want 2 (the abandoned record stays uncommitted)", committed)
	}

	stuck.Store(false)
	b.restart()
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- c.Run(ctx, b) }()
	testkit.Eventually(t, 5*time.Second, "the abandoned record handled by the next run", func() bool {
		_, committed := b.state()
		return committed == 3
	})
	cancel()
	<-done
	calls.mu.Lock()
	defer calls.mu.Unlock()
	if calls.seen["stuck"] != 1 || calls.seen["a"] != 1 || calls.seen["b"] != 1 {
		t.Fatalf("handled %v", calls.seen)
	}
}

// A gated input reads nothing while closed (and the stage is ready), joins
// its group when opened, and leaves it when closed again: its partitions go
// to the group's other member, which then gets the records.
func TestGatedInputJoinsAndLeavesItsGroup(t *testing.T) {
	env := stacktest.Get(t)
	cfg := config.Default()
	cfg.DebugPort = "127.0.0.1:0"
	cfg.Bus.Brokers = strings.Join(env.KafkaBrokers, ",")
	cfg.Bus.Partitions = 2
	cfg.Bus.DeadLetterTopic = stacktest.Name("gate_dlq")
	in, group := stacktest.Name("gate_in"), stacktest.Name("gate_group")
	kafkatest.DeleteAtEnd(t, env.KafkaBrokers, in, cfg.Bus.DeadLetterTopic)
	kafkatest.DeleteGroupsAtEnd(t, env.KafkaBrokers, group)

	rt, err := New("test", cfg, testkit.Log(t, zerolog.WarnLevel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close) // after Run returned
	rt.Topics(rt.Bus(), in, cfg.Bus.DeadLetterTopic)
	gate := NewGate(false)
	var handled atomic.Int64
	rt.Consume(Input{
		Name: "in", Group: group, Topics: []string{in}, Gate: gate, GateDrain: time.Second, ClientID: "gate-test",
		Handle: func(context.Context, kafka.Message) error {
			handled.Add(1)
			return nil
		},
		ConsumerOptions: ConsumerOptions{MaxInFlight: 2},
	})
	testkit.Background(t, "Run", rt.Run)
	debug := "http://" + rt.DebugAddr()
	testkit.Eventually(t, 30*time.Second, "ready with the gate closed", func() bool {
		code, _ := testkit.Get(t, debug+"/readyz")
		return code == http.StatusOK
	})
	kafkatest.Produce(t, env.KafkaBrokers, in, kafka.Message{Key: []byte("1"), Value: []byte("one")})
	time.Sleep(time.Second)
	if n := handled.Load(); n != 0 {
		t.Fatalf("a closed input handled %d records", n)
	}

	gate.Set(true)
	testkit.Eventually(t, 30*time.Second, "the record handled once the gate opened", func() bool { return handled.Load() == 1 })
	client := kafkabus.NewClient(kafkabus.Plaintext(env.KafkaBrokers), 5*time.Second)
	defer client.Close()
	members := func() []string {
		ids, err := client.Members(context.Background(), group)
		if err != nil {
			t.Log(err)
		}
		return ids
	}
	testkit.Eventually(t, 30*time.Second, "a member named gate-test", func() bool {
		ids := members()
		return len(ids) == 1 && ids[0] == "gate-test"
	})

	gate.Set(false)
	testkit.Eventually(t, 30*time.Second, "the group left once the gate closed", func() bool { return len(members()) == 0 })
	if code, body := testkit.Get(t, debug+"/readyz"); code != http.StatusOK {
		t.Fatalf("a closed input made the stage unready: %s", body)
	}
	// The other member of the group gets what arrives now.
	kafkatest.Produce(t, env.KafkaBrokers, in, kafka.Message{Key: []byte("2"), Value: []byte("two")})
	other := kafkabus.NewReader(kafkabus.Plaintext(env.KafkaBrokers), group, []string{in}, kafkabus.ReaderOptions{})
	defer other.Close()
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	m, err := other.FetchMessage(rctx)
	if err != nil || string(m.Value) != "two" {
		t.Fatalf("the other member read %q, %v; want the record after the first's commit", m.Value, err)
	}
	if n := handled.Load(); n != 1 {
		t.Fatalf("the closed input handled %d records", n)
	}
}
