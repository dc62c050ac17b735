package stage

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"

	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
)

type payload struct {
	N int `json:"n"`
}

func decodePayload(b []byte) (payload, error) {
	var p payload
	if err := json.Unmarshal(b, &p); err != nil {
		return p, err
	}
	if p.N < 0 {
		return p, errors.New("n: negative")
	}
	return p, nil
}

// One stage on the runtime, as a service wires it: the debug listener serves
// from the start and says what start-up waits for, topics appear at Run, a
// record is decoded and handled, a bad one is dead-lettered with its reason,
// metrics carry the service's name, and Close releases the port.
func TestRuntimeRunsAStage(t *testing.T) {
	env := stacktest.Get(t)
	cfg := config.Default()
	cfg.DebugPort = "127.0.0.1:0"
	cfg.Bus.Brokers = strings.Join(env.KafkaBrokers, ",")
	cfg.Bus.Partitions = 2
	cfg.Bus.DeadLetterTopic = stacktest.Name("stage_dlq")
	in := stacktest.Name("stage_in")
	kafkatest.DeleteAtEnd(t, env.KafkaBrokers, in, cfg.Bus.DeadLetterTopic)

	rt, err := New("test", cfg, testkit.Log(t, zerolog.WarnLevel))
	if err != nil {
		t.Fatal(err)
	}
	debug := "http://" + rt.DebugAddr()
	if code, body := testkit.Get(t, debug+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "starting") {
		t.Fatalf("/readyz before Run: %d %s", code, body)
	}
	if code, _ := testkit.Get(t, debug+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz before Run: %d", code)
	}

	rt.Topics(rt.Bus(), in, cfg.Bus.DeadLetterTopic)
	handled := make(chan payload, 10)
	rt.Consume(Input{
		Name: "in", Group: stacktest.Name("stage_group"), Topics: []string{in},
		Handle: Decoded(decodePayload, func(_ context.Context, p payload) error {
			handled <- p
			return nil
		}),
		ConsumerOptions: ConsumerOptions{MaxInFlight: 2},
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(ctx) }()

	deadline := time.Now().Add(30 * time.Second)
	for code, body := testkit.Get(t, debug+"/readyz"); code != http.StatusOK; code, body = testkit.Get(t, debug+"/readyz") {
		if time.Now().After(deadline) {
			t.Fatalf("never ready: %s", body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	kafkatest.Produce(t, env.KafkaBrokers, in,
		kafka.Message{Key: []byte("a"), Value: []byte(`{"n": 7}`)},
		kafka.Message{Key: []byte("b"), Value: []byte(`{"n": -1}`)})
	select {
	case p := <-handled:
		if p.N != 7 {
			t.Fatalf("handled %+v", p)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nothing handled")
	}
	dl := kafkatest.ReadAll(t, env.KafkaBrokers, cfg.Bus.DeadLetterTopic, 1, 20*time.Second)
	if len(dl) != 1 || string(dl[0].Key) != "b" || !strings.Contains(dl[0].Headers[kafkabus.HeaderReason], "negative") {
		t.Fatalf("dead letters %+v", dl)
	}
	// The counters move just after the writes they count: the dead letter
	// can be read before its counter is up.
	for _, want := range []string{
		"announcer_test_messages_handled_total 1",
		`announcer_test_dead_letters_total{reason="undecodable"} 1`,
		"go_goroutines", "process_resident_memory_bytes",
	} {
		testkit.Eventually(t, 5*time.Second, "metrics with "+want, func() bool {
			_, metrics := testkit.Get(t, debug+"/metrics")
			return strings.Contains(metrics, want)
		})
	}

	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	rt.Close()
	if code, _ := testkit.Get(t, debug+"/healthz"); code != 0 {
		t.Fatalf("the debug listener still answers after Close (%d)", code)
	}
}

// runtimeWithoutKafka is a runtime whose broker address nothing listens on,
// with the topic "never" declared.
func runtimeWithoutKafka(t *testing.T) *Runtime {
	t.Helper()
	cfg := config.Default()
	cfg.DebugPort = "127.0.0.1:0"
	cfg.Bus.Brokers = testkit.FreeAddr(t)
	rt, err := New("test", cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close) // after Run returned
	rt.Topics(rt.Bus(), "never")
	return rt
}

// With Kafka unreachable, start-up waits (it does not fail) and says why;
// ending ctx ends the wait without an error.
func TestRuntimeWaitsForKafkaAtStart(t *testing.T) {
	rt := runtimeWithoutKafka(t)
	rt.Consume(Input{Name: "in", Group: "g", Topics: []string{"never"},
		Handle: func(context.Context, kafka.Message) error { return nil }})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := testkit.Get(t, "http://"+rt.DebugAddr()+"/readyz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "creating topics never") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz while Kafka is down: %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case err := <-errc:
		t.Fatalf("Run ended while waiting: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// A service is not ready before its topics exist, even in the moment between
// Run's start and its topic part saying what it waits for: the ingress, with
// no consumer to hold readiness back, said ready then, and a publish at once
// left kafka-go's metadata cache without the topics for seconds.
func TestNotReadyBeforeTheTopicsExist(t *testing.T) {
	rt := runtimeWithoutKafka(t)
	rt.mu.Lock()
	rt.running = true // Run's first step; its topic part has not begun
	rt.mu.Unlock()
	if err := rt.started(context.Background()); err == nil || rt.TopicsReady() {
		t.Fatalf("ready (%v) with its topics not set up (TopicsReady %v)", err, rt.TopicsReady())
	}
}

// listCounter counts the offset lists a client asks for.
type listCounter struct {
	kafka.RoundTripper
	listed atomic.Int64
}

func (c *listCounter) RoundTrip(ctx context.Context, addr net.Addr, req kafka.Request) (kafka.Response, error) {
	if req.ApiKey() == protocol.ListOffsets {
		c.listed.Add(1)
	}
	return c.RoundTripper.RoundTrip(ctx, addr, req)
}

// The lag of a group is what it has not committed, partition by partition;
// a group that never committed is behind by everything retained. Log starts
// are asked for only where no commit says where the group is.
func TestDepthMeasuresLagPerPartition(t *testing.T) {
	env := stacktest.Get(t)
	topic := kafkatest.Topics(t, env.KafkaBrokers, 2, "depth")[0]
	w := kafkabus.NewWriter(kafkabus.Plaintext(env.KafkaBrokers), kafkabus.WriterOptions{RoundRobin: true})
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, kafka.Message{Topic: topic, Value: []byte("a")}, kafka.Message{Topic: topic, Value: []byte("b")},
		kafka.Message{Topic: topic, Value: []byte("c")}, kafka.Message{Topic: topic, Value: []byte("d")}); err != nil {
		t.Fatal(err)
	}
	transport := &kafka.Transport{}
	defer transport.CloseIdleConnections()
	counter := &listCounter{RoundTripper: transport}
	client := &kafkabus.Client{Client: &kafka.Client{Addr: kafka.TCP(env.KafkaBrokers...), Timeout: 10 * time.Second, Transport: counter}}
	group := stacktest.Name("depth_group")
	kafkatest.DeleteGroupsAtEnd(t, env.KafkaBrokers, group)
	d := &depth{group: group, topics: []string{topic}, client: client}
	lags := func(wantListed int64) map[int]int64 {
		t.Helper()
		counter.listed.Store(0)
		parts, err := d.measure(ctx)
		if n := counter.listed.Load(); n != wantListed {
			t.Errorf("a measure asked for %d offset lists, want %d", n, wantListed)
		}
		if err != nil {
			t.Fatal(err)
		}
		out := map[int]int64{}
		for _, p := range parts {
			out[p.partition] = p.lag
		}
		return out
	}
	if got := lags(2); got[0] != 2 || got[1] != 2 {
		t.Fatalf("lag of a new group %v, want 2 and 2", got)
	}
	// A group that starts at the end (the ingress's input by default) is not
	// behind by the topic's history; only by what its consumer holds.
	d.startAtEnd = true
	if got := lags(1); got[0] != 0 || got[1] != 0 {
		t.Fatalf("lag of a new group starting at the end %v, want 0 and 0", got)
	}
	d.held = func(k topicPartition) (int64, bool) { return 1, k.partition == 0 }
	if got := lags(1); got[0] != 1 || got[1] != 0 {
		t.Fatalf("lag of a new group starting at the end, holding offset 1 of partition 0: %v, want 1 and 0", got)
	}
	d.startAtEnd, d.held = false, nil
	resp, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{topic: {{Partition: 0, Offset: 2}, {Partition: 1, Offset: 1}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				t.Fatal(p.Error)
			}
		}
	}
	if got := lags(1); got[0] != 0 || got[1] != 1 {
		t.Fatalf("lag after committing 2 and 1: %v, want 0 and 1", got)
	}

	// A consumer's report: the gauges by partition, and one info line while
	// the group is behind (the first generation's queue report).
	var logged strings.Builder
	reg := prometheus.NewRegistry()
	c := NewConsumer(nil, nil, ConsumerOptions{}, zerolog.New(&logged), reg)
	c.refreshDepth(ctx, d)
	if v := testutil.ToFloat64(c.m.lag.WithLabelValues(topic, "1")); v != 1 {
		t.Fatalf("consumer_lag of partition 1: %v, want 1", v)
	}
	if !strings.Contains(logged.String(), `"message":"consumer lag"`) || !strings.Contains(logged.String(), `"lag":1`) {
		t.Fatalf("no consumer lag line with the total: %q", logged.String())
	}
}

// An idle stage is ready again once the broker is back: its fetch waits for
// a record rather than succeeding, so readiness must not wait for traffic.
func TestIdleStageIsReadyAfterABrokerRestart(t *testing.T) {
	env := stacktest.Get(t)
	broker := stacktest.PrivateKafka(t, env)
	cfg := config.Default()
	cfg.DebugPort = "127.0.0.1:0"
	cfg.Bus.Brokers = strings.Join(broker.Brokers(), ",")
	cfg.Bus.Partitions = 1
	in := stacktest.Name("stage_idle")
	rt, err := New("test", cfg, testkit.Log(t, zerolog.ErrorLevel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close) // after Run returned
	rt.Topics(rt.Bus(), in)
	rt.Consume(Input{Name: "in", Group: stacktest.Name("stage_idle"), Topics: []string{in},
		Handle: func(context.Context, kafka.Message) error { return nil }})
	testkit.Background(t, "Run", rt.Run)
	readyz := func() (int, string) { return testkit.Get(t, "http://"+rt.DebugAddr()+"/readyz") }
	testkit.Eventually(t, 60*time.Second, "ready", func() bool { code, _ := readyz(); return code == http.StatusOK })
	dials := func() float64 { return testkit.Gathered(t, rt.Registry(), "announcer_test_kafka_dials_total") }
	testkit.Eventually(t, 10*time.Second, "the partition's connection counted", func() bool { return dials() >= 1 })
	before := dials()
	broker.Kill()
	testkit.Eventually(t, 30*time.Second, "not ready while the broker is down", func() bool {
		code, _ := readyz()
		return code == http.StatusServiceUnavailable
	})
	broker.Start()
	testkit.Eventually(t, 60*time.Second, "ready again with no record produced", func() bool {
		code, _ := readyz()
		return code == http.StatusOK
	})
	testkit.Eventually(t, 10*time.Second, "the reconnection counted", func() bool { return dials() > before })
}

// An input that can wait asks the broker for fuller fetches; the others keep
// fetches answered at once.
func TestInputFetchOptionsReachTheReader(t *testing.T) {
	for _, in := range []Input{
		{Group: "g", Topics: []string{"t"}, ConsumerOptions: ConsumerOptions{MaxInFlight: 4}},
		{Group: "g", Topics: []string{"t"}, ConsumerOptions: ConsumerOptions{MaxInFlight: 64}, FetchMinBytes: 1 << 20, FetchMaxWait: 2 * time.Second},
	} {
		r := kafkabus.NewReader(kafkabus.Plaintext([]string{"127.0.0.1:1"}), in.Group, in.Topics, in.readerOptions())
		got := r.Config()
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		wantMin, wantWait := 1, 500*time.Millisecond
		if in.FetchMinBytes > 0 {
			wantMin, wantWait = in.FetchMinBytes, in.FetchMaxWait
		}
		// kafkabus leaves the broker a second beyond the wait it asks for.
		if got.MinBytes != wantMin || got.MaxWait != wantWait+time.Second || got.QueueCapacity != max(in.MaxInFlight, 16) {
			t.Errorf("input %+v: reader MinBytes %d, MaxWait %s, QueueCapacity %d; want %d, %s, %d",
				in, got.MinBytes, got.MaxWait, got.QueueCapacity, wantMin, wantWait+time.Second, max(in.MaxInFlight, 16))
		}
	}
}

// Two lanes of one service read alike topics: their consumers share the
// metric names and tell themselves apart by lane, so one rule or panel on a
// name sees both (a prefixed name per lane left the priority lane unwatched).
func TestLanesShareMetricNames(t *testing.T) {
	cfg := config.Default()
	cfg.DebugPort = "127.0.0.1:0"
	rt, err := New("test", cfg, testkit.Log(t, zerolog.WarnLevel))
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	handle := func(context.Context, kafka.Message) error { return nil }
	for _, lane := range []string{"bulk", "priority"} {
		rt.Consume(Input{
			Name: lane, Group: "g-" + lane, Topics: []string{"t-" + lane}, Handle: handle,
			Labels: prometheus.Labels{"node": "node1"}, Lane: lane,
		})
	}
	_, metrics := testkit.Get(t, "http://"+rt.DebugAddr()+"/metrics")
	for _, want := range []string{
		`announcer_test_messages_fetched_total{lane="bulk",node="node1"} 0`,
		`announcer_test_messages_fetched_total{lane="priority",node="node1"} 0`,
		`announcer_test_kafka_errors_total{lane="priority",node="node1",op="fetch"} 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("no %s in\n%s", want, metrics)
		}
	}
}
