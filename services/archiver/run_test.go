package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/stage"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/pkg/testkit/tcpproxy"
	"github.com/announcer/announcer/services/archiver/internal/storage"
)

const tmpl = "<message to='%s' from='announcer.localhost' type='chat'><body>n=[inc_id]</body></message>"

func rendered(jid string, n int) string {
	return fmt.Sprintf("<message to='%s' from='announcer.localhost' type='chat'><body>n=%d</body></message>", jid, n)
}

type rig struct {
	env     stacktest.Env
	cfg     config.Config
	proxy   *tcpproxy.Proxy
	storage string
}

// newRig configures an archiver whose storage cluster is the stack's Kafka
// seen through a proxy the test controls: every storage connection, to the
// bootstrap address and to the broker the metadata names, goes through it.
func newRig(t *testing.T) *rig {
	t.Helper()
	env := stacktest.Get(t)
	p := stacktest.Name("arc")
	r := &rig{env: env, storage: p + "_storage"}
	r.proxy = tcpproxy.New(t, env.KafkaBrokers[0], tcpproxy.Forward)
	cfg := config.Default()
	cfg.DebugPort = "127.0.0.1:0"
	cfg.Bus.Brokers = strings.Join(env.KafkaBrokers, ",")
	cfg.Bus.DeliveriesPrefix = p + "_deliveries."
	cfg.Bus.DeadLetterTopic = p + "_dlq"
	cfg.Bus.Partitions = 2
	cfg.Nodes = []config.Node{{Name: "node1", Address: "127.0.0.1:1"}, {Name: "node2", Address: "127.0.0.1:2"}}
	cfg.Component.Name = "announcer.localhost"
	cfg.Component.Domain = "localhost"
	cfg.KafkaProducer.Brokers = r.proxy.Addr()
	cfg.KafkaProducer.Topics = r.storage
	cfg.KafkaProducer.FlushFrequency = 0
	cfg.KafkaProducer.MaxRetry = 1
	cfg.Bus.WriteTimeout = config.Duration(2 * time.Second)
	cfg.Archiver.GroupName = p + "_archiver"
	if err := cfg.Validate(config.RoleArchiver); err != nil {
		t.Fatal(err)
	}
	r.cfg = cfg
	kafkatest.DeletePrefixedAtEnd(t, env.KafkaBrokers, p+"_")
	r.createStorage(t, env.KafkaBrokers)
	return r
}

// createStorage creates the storage topic, as the storage cluster's owner
// does: the archiver does not create topics on a cluster other than the bus.
func (r *rig) createStorage(t *testing.T, brokers []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kafkabus.EnsureTopics(ctx, kafkabus.Plaintext(brokers), kafkabus.Topic{Name: r.storage, Partitions: 2, ReplicationFactor: 1}); err != nil {
		t.Fatal(err)
	}
}

// archiver is a running archiver as the tests see it.
type archiver struct{ debug string }

// metrics is the archiver's /metrics page.
func (a *archiver) metrics(t *testing.T) string {
	_, body := testkit.Get(t, a.debug+"/metrics")
	return body
}

func (r *rig) start(t *testing.T) (*archiver, func() error) {
	t.Helper()
	proxied := func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, r.proxy.Addr())
	}
	rt, stop := testkit.Start(t, "archiver", func(ctx context.Context, started func(*stage.Runtime)) error {
		return run(ctx, testkit.Log(t, zerolog.ErrorLevel), r.cfg, hooks{storageDial: proxied, runtime: started})
	})
	a := &archiver{debug: "http://" + rt.DebugAddr()}
	testkit.Eventually(t, 30*time.Second, "ready", func() bool { c, _ := testkit.Get(t, a.debug+"/readyz"); return c == http.StatusOK })
	return a, stop
}

func (r *rig) produce(t *testing.T, node string, batches ...any) {
	t.Helper()
	w := kafkabus.NewWriter(kafkabus.Plaintext(r.env.KafkaBrokers), kafkabus.WriterOptions{WriteTimeout: 10 * time.Second})
	defer w.Close()
	var msgs []kafka.Message
	for _, b := range batches {
		var v []byte
		switch b := b.(type) {
		case *announcement.Batch:
			var err error
			if v, err = b.Encode(); err != nil {
				t.Fatal(err)
			}
		case string:
			v = []byte(b)
		case kafka.Message: // as it is, headers included
			b.Topic = r.cfg.DeliveriesTopic(node)
			msgs = append(msgs, b)
			continue
		}
		msgs = append(msgs, kafka.Message{Topic: r.cfg.DeliveriesTopic(node), Key: []byte(node), Value: v})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

// committed sums the group's committed offsets on a node's topic.
func (r *rig) committed(t *testing.T, node string) int64 {
	t.Helper()
	total := int64(0)
	for _, off := range kafkatest.Committed(t, r.env.KafkaBrokers, r.cfg.Archiver.GroupName, r.cfg.DeliveriesTopic(node), 2) {
		total += max(off, 0)
	}
	return total
}

// storageReader reads the storage topic directly (not through the proxy).
type storageReader struct {
	r   *kafka.Reader
	got map[string][]string // key -> values
	ids map[string]string   // key -> announcement id header
	n   int
}

func (r *rig) storageReader(t *testing.T) *storageReader {
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: r.env.KafkaBrokers, GroupID: stacktest.Name("arc_check"),
		Topic: r.storage, StartOffset: kafka.FirstOffset, MaxWait: 50 * time.Millisecond})
	t.Cleanup(func() { _ = rd.Close() })
	return &storageReader{r: rd, got: map[string][]string{}, ids: map[string]string{}}
}

// readFor reads what arrives during d.
func (s *storageReader) readFor(t *testing.T, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		// FetchMessage, not ReadMessage: the latter drops the message when its
		// commit hits the deadline. This throwaway group never commits.
		m, err := s.r.FetchMessage(ctx)
		if err != nil {
			return
		}
		s.n++
		s.got[string(m.Key)] = append(s.got[string(m.Key)], string(m.Value))
		for _, h := range m.Headers {
			if h.Key == storage.HeaderAnnouncementID {
				s.ids[string(m.Key)] = string(h.Value)
			}
		}
	}
}

func (s *storageReader) readUntil(t *testing.T, keys int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for len(s.got) < keys {
		if time.Now().After(deadline) {
			t.Fatalf("storage has %d distinct recipients, want %d: %v", len(s.got), keys, s.got)
		}
		s.readFor(t, 200*time.Millisecond)
	}
}

// Persisted batches of every node become one record per valid recipient;
// non-persisted ones are committed without output; bad input is
// dead-lettered. When the storage cluster is unreachable the batch waits
// uncommitted and nothing is lost: once it is back, the records appear and
// the offset is committed.
func TestArchiverPersistsAcrossStorageOutage(t *testing.T) {
	r := newRig(t)
	a, stop := r.start(t)
	sr := r.storageReader(t)

	r.produce(t, "node1",
		&announcement.Batch{AnnouncementID: "a1", Persist: true, Template: tmpl, FirstIncID: 0,
			Recipients: []string{"u1", "not valid", "u3@example.org/r"}},
		"{not json")
	r.produce(t, "node2",
		&announcement.Batch{AnnouncementID: "a2", Persist: false, Template: tmpl, Recipients: []string{"nobody"}},
		// A batch whose header says "not persisted" is passed over without being decoded.
		kafka.Message{Key: []byte("node2"), Value: []byte("{not decoded"),
			Headers: []kafka.Header{{Key: announcement.HeaderPersist, Value: []byte("0")}}})
	sr.readUntil(t, 2, 20*time.Second)
	testkit.Eventually(t, 20*time.Second, "node1 and node2 committed", func() bool {
		return r.committed(t, "node1") == 2 && r.committed(t, "node2") == 2
	})

	// Outage: no storage connection can be made, existing ones are cut.
	r.proxy.Set(tcpproxy.Refuse)
	r.proxy.KillAll()
	r.produce(t, "node2",
		&announcement.Batch{AnnouncementID: "a3", Persist: true, Template: tmpl, FirstIncID: 100, Recipients: []string{"v1", "v2", "v3"}})
	testkit.Eventually(t, 20*time.Second, "storage errors", func() bool {
		return testkit.SumMetric(a.metrics(t), "announcer_archiver_store_errors_total") >= 2
	})
	sr.readFor(t, 300*time.Millisecond)
	if len(sr.got) != 2 {
		t.Fatalf("records appeared during the outage: %v", sr.got)
	}
	if got := r.committed(t, "node2"); got != 2 {
		t.Fatalf("node2 committed %d during the outage, want 2 (the batch must wait)", got)
	}

	r.proxy.Set(tcpproxy.Forward)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("committed node1 %d node2 %d; metrics:\n%s", r.committed(t, "node1"), r.committed(t, "node2"),
				grep(a.metrics(t), "announcer_archiver"))
		}
	})
	sr.readUntil(t, 5, 30*time.Second)
	testkit.Eventually(t, 20*time.Second, "node2 committed after the outage", func() bool { return r.committed(t, "node2") == 3 })

	want := map[string]string{
		"u1@localhost":     rendered("u1@localhost", 0),
		"u3@example.org/r": rendered("u3@example.org/r", 2),
		"v1@localhost":     rendered("v1@localhost", 100),
		"v2@localhost":     rendered("v2@localhost", 101),
		"v3@localhost":     rendered("v3@localhost", 102),
	}
	for k, v := range want {
		vals := sr.got[k]
		if len(vals) == 0 {
			t.Errorf("no record for %s", k)
			continue
		}
		for _, got := range vals {
			if got != v {
				t.Errorf("record for %s = %q, want %q", k, got, v)
			}
		}
	}
	if len(sr.got) != len(want) {
		t.Errorf("records for %d recipients, want %d: %v", len(sr.got), len(want), sr.got)
	}
	if sr.ids["u1@localhost"] != "a1" || sr.ids["v1@localhost"] != "a3" {
		t.Errorf("announcement id headers %v", sr.ids)
	}
	t.Logf("%d records for %d recipients (duplicates from retried writes are allowed)", sr.n, len(want))

	code, body := testkit.Get(t, a.debug+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, `announcer_archiver_batches_total{outcome="not_persisted"} 2`) ||
		!strings.Contains(body, `announcer_archiver_dead_letters_total{reason="undecodable"} 1`) {
		t.Errorf("metrics:\n%s", grep(body, "announcer_archiver"))
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}

// A stanza too large for the storage topic (its max.message.bytes) or for
// the writer ([bus] max_message_bytes) never blocks its deliveries
// partition: its batch is dead-lettered with the reason, the batch's other
// stanzas and the batches after it are stored, and the partition is
// committed past it.
func TestArchiverDeadLettersStanzasTooLargeForTheStorage(t *testing.T) {
	r := newRig(t)
	r.storage = strings.TrimSuffix(r.storage, "_storage") + "_small"
	r.cfg.KafkaProducer.Topics = r.storage
	r.cfg.Bus.MaxMessageBytes = config.MinMessageBytes
	r.createStorageLimited(t, 2048)
	a, stop := r.start(t)
	sr := r.storageReader(t)

	long := strings.Repeat("l", 1020)
	// 40 KiB of [inc_id], each 16 digits: a stanza of 80 KB from a batch
	// the bus takes, over the writer's 64 KiB.
	incs := "<message to='%s' from='announcer.localhost' type='chat'><body>" + strings.Repeat("[inc_id]", 5000) + "</body></message>"
	r.produce(t, "node1",
		&announcement.Batch{AnnouncementID: "mixed", Persist: true, Template: tmpl, FirstIncID: 0, Recipients: []string{"m1", long, "m2"}},
		&announcement.Batch{AnnouncementID: "incs", Persist: true, Template: incs, FirstIncID: 1e15, Recipients: []string{"i1", "i2"}},
		&announcement.Batch{AnnouncementID: "small", Persist: true, Template: tmpl, FirstIncID: 10, Recipients: []string{"s1", "s2"}})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("committed node1 %d; metrics:\n%s", r.committed(t, "node1"), grep(a.metrics(t), "announcer_archiver"))
		}
	})
	testkit.Eventually(t, 30*time.Second, "node1 committed past the batches too large to store", func() bool { return r.committed(t, "node1") == 3 })
	sr.readUntil(t, 4, 20*time.Second)
	sr.readFor(t, 300*time.Millisecond)
	want := map[string]string{
		"m1@localhost": rendered("m1@localhost", 0),
		"m2@localhost": rendered("m2@localhost", 2),
		"s1@localhost": rendered("s1@localhost", 10),
		"s2@localhost": rendered("s2@localhost", 11),
	}
	if len(sr.got) != len(want) {
		t.Errorf("storage holds records for %d recipients, want %d: %v", len(sr.got), len(want), sr.got)
	}
	for k, v := range want {
		if vals := sr.got[k]; len(vals) == 0 || vals[0] != v {
			t.Errorf("records for %s: %q, want %q", k, vals, v)
		}
	}
	dl := kafkatest.ReadAll(t, r.env.KafkaBrokers, r.cfg.Bus.DeadLetterTopic, 2, 20*time.Second)
	reasons := map[string]string{}
	for _, d := range dl {
		b, err := announcement.DecodeBatch(d.Value)
		if err != nil {
			t.Fatalf("a dead letter that is not the whole batch: %v", err)
		}
		reasons[b.AnnouncementID] = d.Headers[kafkabus.HeaderReason]
		t.Logf("dead letter's reason: %s", d.Headers[kafkabus.HeaderReason])
	}
	for id, says := range map[string]string{"mixed": "topic " + r.storage + " refused", "incs": "the writer's limit of 65536 bytes"} {
		if why := reasons[id]; len(dl) != 2 || !strings.Contains(why, "announcement "+id) || !strings.Contains(why, "too large") || !strings.Contains(why, says) {
			t.Errorf("%s's dead letter says %q, want it too large: %s", id, why, says)
		}
	}
	body := a.metrics(t)
	if !strings.Contains(body, `announcer_archiver_dead_letters_total{reason="too_large"} 2`) ||
		testkit.SumMetric(body, "announcer_archiver_records_stored_total") != 4 {
		t.Errorf("metrics:\n%s", grep(body, "announcer_archiver"))
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}

// createStorageLimited creates the storage topic, one partition, with
// max.message.bytes of limit.
func (r *rig) createStorageLimited(t *testing.T, limit int) {
	t.Helper()
	c := kafkabus.NewClient(kafkabus.Plaintext(r.env.KafkaBrokers), 10*time.Second)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: r.storage, NumPartitions: 1, ReplicationFactor: 1,
		ConfigEntries: []kafka.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: strconv.Itoa(limit)}}}}})
	if err != nil || resp.Errors[r.storage] != nil {
		t.Fatalf("create %s: %v %v", r.storage, err, resp)
	}
	if err := kafkabus.AwaitTopics(ctx, kafkabus.Plaintext(r.env.KafkaBrokers), r.storage); err != nil {
		t.Fatal(err)
	}
}

// Readiness follows the storage cluster.
func TestArchiverReadiness(t *testing.T) {
	r := newRig(t)
	a, _ := r.start(t)
	url := a.debug + "/readyz"
	testkit.Eventually(t, 20*time.Second, "ready", func() bool { c, _ := testkit.Get(t, url); return c == http.StatusOK })
	r.proxy.Set(tcpproxy.Refuse)
	testkit.Eventually(t, 20*time.Second, "not ready", func() bool { c, _ := testkit.Get(t, url); return c == http.StatusServiceUnavailable })
}

func grep(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestStorageWriterOptions(t *testing.T) {
	cases := []struct {
		name          string
		flush         int
		bus           time.Duration
		batch         int
		linger        time.Duration
		recordsPerReq int
	}{
		{"the bus linger when flush_frequency is longer", 5, 2 * time.Millisecond, 1000, 2 * time.Millisecond, 1000},
		{"flush_frequency bounds a longer bus linger", 1, 3 * time.Second, 1000, time.Second, 1000},
		{"flush_frequency 0 leaves the bus linger", 0, 2 * time.Millisecond, 1000, 2 * time.Millisecond, 1000},
		{"never fewer records a request than kafka-go's default", 1, 2 * time.Millisecond, 10, 2 * time.Millisecond, 100},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.KafkaProducer.FlushFrequency = c.flush
			cfg.KafkaProducer.MaxRetry = 4
			cfg.Bus.BatchTimeout = config.Duration(c.bus)
			cfg.Fanout.BatchSize = c.batch
			cfg.Bus.MaxMessageBytes = 1 << 17
			o := storageWriterOptions(cfg, nil)
			if o.BatchTimeout != c.linger || o.BatchSize != c.recordsPerReq || o.MaxAttempts != 5 || o.BatchBytes != 1<<17 {
				t.Errorf("linger %s, %d records a request, %d attempts, %d bytes a record; want %s, %d, 5, %d",
					o.BatchTimeout, o.BatchSize, o.MaxAttempts, o.BatchBytes, c.linger, c.recordsPerReq, 1<<17)
			}
		})
	}
}

// A storage cluster that wants TLS and SASL ([kafka-producer] tls and sasl_*): the archiver
// says ready and stores the rendered stanzas there. The test reads them through the broker's
// PLAINTEXT port; the archiver has only the SASL_SSL one.
func TestSecureStorageCluster(t *testing.T) {
	r := newRig(t)
	broker, l := stacktest.PrivateKafkaSecure(t, r.env)
	r.createStorage(t, broker.Brokers())
	r.cfg.KafkaProducer.Brokers = l.Addr
	r.cfg.KafkaProducer.KafkaSecurity = config.KafkaSecurity{TLS: true, TLSCAFile: l.CAFile, SASLMechanism: "PLAIN",
		SASLUsername: l.User, SASLPassword: config.Secret(l.Password)}
	if err := r.cfg.Validate(config.RoleArchiver); err != nil {
		t.Fatal(err)
	}
	rt, _ := testkit.Start(t, "archiver", func(ctx context.Context, started func(*stage.Runtime)) error {
		return run(ctx, testkit.Log(t, zerolog.ErrorLevel), r.cfg, hooks{runtime: started})
	})
	testkit.Eventually(t, 30*time.Second, "ready", func() bool {
		c, _ := testkit.Get(t, "http://"+rt.DebugAddr()+"/readyz")
		return c == http.StatusOK
	})
	r.produce(t, "node1", &announcement.Batch{AnnouncementID: "s1", Persist: true, Template: tmpl, FirstIncID: 0, Recipients: []string{"u1", "u2"}})
	recs := kafkatest.ReadAll(t, broker.Brokers(), r.storage, 2, 30*time.Second)
	var got []string
	for _, rec := range recs {
		got = append(got, string(rec.Value))
	}
	slices.Sort(got)
	if want := []string{rendered("u1@localhost", 0), rendered("u2@localhost", 1)}; !slices.Equal(got, want) {
		t.Fatalf("storage topic holds %q, want %q", got, want)
	}
}

// The storage cluster is not the bus: a missing storage topic is waited
// for, never created with the bus's partitions and replication factor.
func TestStorageTopicsAreNotCreated(t *testing.T) {
	r := newRig(t)
	r.storage = strings.TrimSuffix(r.storage, "_storage") + "_absent"
	r.cfg.KafkaProducer.Topics = r.storage
	rt, _ := testkit.Start(t, "archiver", func(ctx context.Context, started func(*stage.Runtime)) error {
		return run(ctx, testkit.Log(t, zerolog.ErrorLevel), r.cfg, hooks{runtime: started})
	})
	url := "http://" + rt.DebugAddr() + "/readyz"
	testkit.Eventually(t, 20*time.Second, "waiting for the storage topic", func() bool {
		c, body := testkit.Get(t, url)
		return c == http.StatusServiceUnavailable && strings.Contains(body, "waiting for topics "+r.storage)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := kafkabus.AwaitTopics(ctx, kafkabus.Plaintext(r.env.KafkaBrokers), r.storage); err == nil {
		t.Fatal("the archiver created the storage topic")
	}
	r.createStorage(t, r.env.KafkaBrokers)
	testkit.Eventually(t, 30*time.Second, "ready once the topic exists", func() bool { c, _ := testkit.Get(t, url); return c == http.StatusOK })
}
