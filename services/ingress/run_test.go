package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/pkg/testkit/tcpproxy"
)

const token = "integration-token-0123456789"

var tpl = `<message to='%s' from='announcer.localhost' type='chat'><body>hello [inc_id]</body></message>`

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func baseConfig(brokers []string) config.Config {
	cfg := config.Default()
	cfg.RestAPIPort = "127.0.0.1:0"
	cfg.DebugPort = "127.0.0.1:0"
	cfg.Bus.Brokers = strings.Join(brokers, ",")
	cfg.Bus.Partitions = 2
	cfg.Bus.AnnouncementsTopic = stacktest.Name("ingress_ann")
	cfg.Bus.DeadLetterTopic = stacktest.Name("ingress_dlq")
	cfg.Component.Name = "announcer.localhost"
	cfg.Component.Domain = "localhost"
	cfg.Auth.Tokens = []config.Secret{token}
	cfg.Ingress.PublishTimeout = config.Duration(3 * time.Second)
	cfg.Ingress.ShutdownTimeout = config.Duration(10 * time.Second)
	return cfg
}

type running struct {
	api, debug string
	stop       func() error
}

// start runs the service as the binary does and stops it when the test ends.
func start(t *testing.T, cfg config.Config) *running {
	t.Helper()
	if err := cfg.Validate(config.RoleIngress); err != nil {
		t.Fatalf("test config: %v", err)
	}
	addrs, stop := testkit.Start(t, "service", func(ctx context.Context, started func([2]string)) error {
		return run(ctx, testkit.Log(t, zerolog.WarnLevel), cfg, hooks{
			listening: func(api, debug string) { started([2]string{api, debug}) },
		})
	})
	return &running{api: "http://" + addrs[0], debug: "http://" + addrs[1], stop: stop}
}

// waitReady waits until /readyz says ready (topics exist, Kafka answers).
func (r *running) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		a := do(t, mustGet(t, r.debug+"/readyz"))
		if a.code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %s", a.raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type answer struct {
	code   int
	header http.Header
	body   map[string]any
	raw    string
}

func post(t *testing.T, url, body string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	return do(t, req)
}

func do(t *testing.T, req *http.Request) answer {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{code: resp.StatusCode, header: resp.Header, raw: string(b)}
	if err := json.Unmarshal(b, &a.body); err != nil {
		t.Errorf("answer %q is not JSON: %v", b, err)
	}
	return a
}

func TestAccepted202MeansTheEventIsInTheTopic(t *testing.T) {
	env := stacktest.Get(t)
	cfg := baseConfig(env.KafkaBrokers)
	kafkatest.DeleteAtEnd(t, env.KafkaBrokers, lanes(cfg)[0], lanes(cfg)[1], cfg.Bus.DeadLetterTopic)
	svc := start(t, cfg)
	svc.waitReady(t)

	type want struct {
		kind      announcement.Kind
		channel   string
		usernames []string
		persist   bool
	}
	requests := []struct {
		path, body string
		want       want
	}{
		{"/v1/announce/channel", `{"channel_id": 22, "message": "` + b64(tpl) + `"}`, want{kind: announcement.KindChannel, channel: "22"}},
		{"/v1/announce/channel", `{"channel_id": "news", "message": "` + b64(tpl) + `", "persist": true}`, want{kind: announcement.KindChannel, channel: `"news"`, persist: true}},
		{"/v1/announce/channel", `{"channel_id": -1, "message": "` + b64(tpl) + `"}`, want{kind: announcement.KindAllOnline}},
		{"/v1/announce/users", `{"usernames": ["alice", "bob@localhost", "carol@localhost/phone"], "message": "` + b64(tpl) + `"}`,
			want{kind: announcement.KindUsers, usernames: []string{"alice", "bob", "carol@localhost/phone"}, persist: true}},
	}
	ids := map[string]want{}
	for _, r := range requests {
		a := post(t, svc.api+r.path, r.body)
		if a.code != http.StatusAccepted {
			t.Fatalf("POST %s: %d %s", r.path, a.code, a.raw)
		}
		id, _ := a.body["id"].(string)
		ids[id] = r.want
	}
	// Rejected requests must leave nothing behind.
	if a := post(t, svc.api+"/v1/announce/users", `{"usernames": ["x"], "message": "`+b64("<message/>")+`"}`); a.code != http.StatusBadRequest {
		t.Fatalf("invalid template: %d %s", a.code, a.raw)
	}

	// Every 202 is already durable: the records are there without waiting for more.
	recs := kafkatest.ReadTopics(t, env.KafkaBrokers, lanes(cfg), len(ids), 5*time.Second)
	if len(recs) != len(ids) {
		t.Fatalf("topic holds %d records, want exactly the %d accepted", len(recs), len(ids))
	}
	for _, rec := range recs {
		ev, err := announcement.DecodeEvent(rec.Value)
		if err != nil {
			t.Fatalf("record %s is not a valid event: %v", rec.Value, err)
		}
		w, ok := ids[ev.ID]
		if !ok || string(rec.Key) != ev.ID {
			t.Fatalf("record with key %q id %q was not answered with a 202", rec.Key, ev.ID)
		}
		if ev.Kind != w.kind || ev.Persist != w.persist || ev.Source != "rest" || ev.Template != tpl {
			t.Errorf("event %+v, want %+v and the decoded template", ev, w)
		}
		if (ev.Channel == nil) != (w.channel == "") || (ev.Channel != nil && ev.Channel.String() != w.channel) {
			t.Errorf("event %s: channel %v, want %s", ev.ID, ev.Channel, w.channel)
		}
		if strings.Join(ev.Usernames, ",") != strings.Join(w.usernames, ",") {
			t.Errorf("event %s: usernames %q, want %q", ev.ID, ev.Usernames, w.usernames)
		}
		delete(ids, ev.ID)
	}

	ready := do(t, mustGet(t, svc.debug+"/readyz"))
	if ready.code != http.StatusOK {
		t.Errorf("/readyz with the broker up: %d %s", ready.code, ready.raw)
	}
	if err := svc.stop(); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

func mustGet(t *testing.T, url string) *http.Request {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// refusing is a broker that accepts connections and closes them at once.
func refusing(t testing.TB) string { return tcpproxy.New(t, "127.0.0.1:1", tcpproxy.Refuse).Addr() }

func TestKafkaDownAnswers503(t *testing.T) {
	for name, addr := range map[string]func(testing.TB) string{
		"closed port":      testkit.FreeAddr,
		"accept and close": refusing,
	} {
		t.Run(name, func(t *testing.T) {
			cfg := baseConfig([]string{addr(t)})
			cfg.Bus.CreateTopics = false
			svc := start(t, cfg)

			a := post(t, svc.api+"/v1/announce/users", `{"usernames": ["alice"], "message": "`+b64(tpl)+`"}`)
			if a.code != http.StatusServiceUnavailable {
				t.Fatalf("status %d %s, want 503", a.code, a.raw)
			}
			if msg, _ := a.body["error"].(string); msg == "" || a.header.Get("Retry-After") == "" {
				t.Errorf("503 without a reason or Retry-After: %v %s", a.header, a.raw)
			}
			// Validation still answers 400 without Kafka.
			if b := post(t, svc.api+"/v1/announce/users", `{"usernames": [], "message": "`+b64(tpl)+`"}`); b.code != http.StatusBadRequest {
				t.Errorf("invalid request with Kafka down: %d, want 400", b.code)
			}
			if r := do(t, mustGet(t, svc.debug+"/readyz")); r.code != http.StatusServiceUnavailable {
				t.Errorf("/readyz with Kafka down: %d %s", r.code, r.raw)
			}
			if err := svc.stop(); err != nil {
				t.Errorf("shutdown: %v", err)
			}
		})
	}
}

func TestKafkaInput(t *testing.T) {
	env := stacktest.Get(t)
	inputs := kafkatest.Topics(t, env.KafkaBrokers, 2, "ingress_in_a", "ingress_in_b")
	cfg := baseConfig(env.KafkaBrokers)
	kafkatest.DeleteAtEnd(t, env.KafkaBrokers, lanes(cfg)[0], lanes(cfg)[1], cfg.Bus.DeadLetterTopic)
	cfg.KafkaConsumer.Topics = strings.Join(inputs, ", ")
	cfg.KafkaConsumer.Brokers = strings.Join(env.KafkaBrokers, ",")
	cfg.KafkaConsumer.GroupName = stacktest.Name("ingress_group")
	cfg.KafkaConsumer.Buffer = 16
	cfg.KafkaConsumer.StartOffset = "earliest"

	// Records produced before the service starts: with start_offset earliest a new group starts at the oldest record.
	kafkatest.Produce(t, env.KafkaBrokers, inputs[0],
		kafka.Message{Key: []byte("a"), Value: []byte(`{"channel_id": 7, "message": "` + b64(tpl) + `"}`)},
		kafka.Message{Key: []byte("b"), Value: []byte(`{"usernames": ["alice"], "message": "` + b64(tpl) + `", "persist": false}`)},
		kafka.Message{Key: []byte("c"), Value: []byte(`this is not JSON`)},
		kafka.Message{Key: []byte("d"), Value: []byte(`{"channel_id": 7, "message": "` + b64("<message to='%s' from='evil@localhost'/>") + `"}`)},
	)
	svc := start(t, cfg)
	kafkatest.Produce(t, env.KafkaBrokers, inputs[1],
		kafka.Message{Key: []byte("e"), Value: []byte(`{"channel_id": "news", "message": "` + b64(tpl) + `"}`)},
		kafka.Message{Key: []byte("f"), Value: []byte(`{"usernames": ["bob"], "channel_id": 1, "message": "` + b64(tpl) + `"}`)},
	)

	events := kafkatest.ReadTopics(t, env.KafkaBrokers, lanes(cfg), 3, 40*time.Second)
	dead := kafkatest.ReadAll(t, env.KafkaBrokers, cfg.Bus.DeadLetterTopic, 3, 20*time.Second)
	if len(events) != 3 || len(dead) != 3 {
		t.Fatalf("%d events and %d dead letters, want 3 and 3", len(events), len(dead))
	}
	sources := map[string]int{}
	for _, rec := range events {
		ev, err := announcement.DecodeEvent(rec.Value)
		if err != nil {
			t.Fatal(err)
		}
		sources[ev.Source]++
		if ev.Kind == announcement.KindUsers && (ev.Persist || ev.Usernames[0] != "alice") {
			t.Errorf("users event %+v: want alice, persist false as sent", ev)
		}
	}
	if sources["kafka:"+inputs[0]] != 2 || sources["kafka:"+inputs[1]] != 1 {
		t.Errorf("event sources %v", sources)
	}
	reasons := map[string]string{}
	for _, rec := range dead {
		reasons[string(rec.Key)] = rec.Headers[kafkabus.HeaderReason]
		if !strings.HasPrefix(rec.Headers[kafkabus.HeaderSource], inputs[0]+"/") && !strings.HasPrefix(rec.Headers[kafkabus.HeaderSource], inputs[1]+"/") {
			t.Errorf("dead letter %q: source header %q", rec.Key, rec.Headers[kafkabus.HeaderSource])
		}
	}
	for key, field := range map[string]string{"c": "invalid body", "d": "invalid message", "f": "invalid body"} {
		if !strings.Contains(reasons[key], field) {
			t.Errorf("dead letter %q: reason %q, want %q", key, reasons[key], field)
		}
	}

	// Every input offset gets committed once its event or dead letter is acked.
	want := map[string]int64{inputs[0]: 4, inputs[1]: 2}
	deadline := time.Now().Add(20 * time.Second)
	for {
		done := true
		for topic, n := range want {
			var sum int64
			for _, off := range kafkatest.Committed(t, env.KafkaBrokers, cfg.KafkaConsumer.GroupName, topic, 2) {
				if off > 0 {
					sum += off
				}
			}
			if sum != n {
				done = false
			}
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("committed offsets never covered all input records")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := svc.stop(); err != nil {
		t.Errorf("shutdown: %v", err)
	}

	// Nothing is announced twice by this run.
	if again := kafkatest.ReadTopics(t, env.KafkaBrokers, lanes(cfg), 4, time.Second); len(again) != 3 {
		t.Errorf("%d events after shutdown, want still 3", len(again))
	}
}

// A first-generation producer's record, without a key and with the audience
// it does not use written as "" (a struct without omitempty), is announced;
// read again by an ingress that did not see its offset committed (here: a
// new group from the oldest record), it keeps its announcement and nothing
// is published twice.
func TestKafkaInputRecordReadAgainIsAnnouncedOnce(t *testing.T) {
	env, cfg, input := inputRig(t, "ingress_in_again")
	cfg.KafkaConsumer.StartOffset = "earliest"
	cfg.Progress.RedisNodes = env.RedisAddr
	cfg.Progress.KeyPrefix = stacktest.Name("ingress_again") + ":"
	kafkatest.Produce(t, env.KafkaBrokers, input, kafka.Message{
		Value: []byte(`{"channel_id": "", "usernames": ["alice"], "message": "` + b64(tpl) + `", "persist": true, "Type": "chat"}`)})

	svc := start(t, cfg)
	first := kafkatest.ReadTopics(t, env.KafkaBrokers, lanes(cfg), 1, 30*time.Second)
	if len(first) != 1 {
		t.Fatalf("%d events, want 1", len(first))
	}
	ev, err := announcement.DecodeEvent(first[0].Value)
	if err != nil || ev.Kind != announcement.KindUsers || !slices.Equal(ev.Usernames, []string{"alice"}) || !ev.Persist {
		t.Fatalf("event %+v, %v: want alice, persisted", ev, err)
	}
	if err := svc.stop(); err != nil {
		t.Errorf("shutdown: %v", err)
	}

	cfg.KafkaConsumer.GroupName = stacktest.Name("ingress_group_again")
	kafkatest.DeleteGroupsAtEnd(t, env.KafkaBrokers, cfg.KafkaConsumer.GroupName)
	svc = start(t, cfg)
	testkit.Eventually(t, 30*time.Second, "the record read again", func() bool {
		_, body := testkit.Get(t, svc.debug+"/metrics")
		return testkit.SumMetric(body, "announcer_ingress_idempotent_replays_total") >= 1
	})
	if again := kafkatest.ReadTopics(t, env.KafkaBrokers, lanes(cfg), 2, time.Second); len(again) != 1 {
		t.Fatalf("%d events after the record was read again, want still 1", len(again))
	}
	// The consumer's own replay is not a producer's repeat.
	_, body := testkit.Get(t, svc.debug+"/metrics")
	if n := testkit.SumMetric(body, "announcer_ingress_kafka_input_key_repeats_total"); n != 0 {
		t.Errorf("%v key repeats counted for an unkeyed record read again", n)
	}
	if err := svc.stop(); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// Two records of one key and one body (a producer keyed by channel sent the
// same text twice, or retried a write) are one announcement, as the key
// says; the second is counted, so it does not pass unseen.
func TestKafkaInputKeyedRepeatIsCounted(t *testing.T) {
	env, cfg, input := inputRig(t, "ingress_in_repeat")
	cfg.KafkaConsumer.StartOffset = "earliest"
	cfg.Progress.RedisNodes = env.RedisAddr
	cfg.Progress.KeyPrefix = stacktest.Name("ingress_repeat") + ":"
	body := []byte(`{"usernames": ["alice"], "message": "` + b64(tpl) + `"}`)
	kafkatest.Produce(t, env.KafkaBrokers, input, kafka.Message{Key: []byte("news"), Value: body})
	svc := start(t, cfg)
	if first := kafkatest.ReadTopics(t, env.KafkaBrokers, lanes(cfg), 1, 30*time.Second); len(first) != 1 {
		t.Fatalf("%d events, want 1", len(first))
	}
	kafkatest.Produce(t, env.KafkaBrokers, input, kafka.Message{Key: []byte("news"), Value: body})
	testkit.Eventually(t, 30*time.Second, "the repeat counted", func() bool {
		_, metrics := testkit.Get(t, svc.debug+"/metrics")
		return testkit.SumMetric(metrics, "announcer_ingress_kafka_input_key_repeats_total") == 1
	})
	if again := kafkatest.ReadTopics(t, env.KafkaBrokers, lanes(cfg), 2, time.Second); len(again) != 1 {
		t.Fatalf("%d events after the repeat, want still 1", len(again))
	}
	if err := svc.stop(); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// inputRig is an ingress reading a new input topic of 2 partitions with a
// new group at the default start (latest); both go when the test ends.
func inputRig(t *testing.T, prefix string) (stacktest.Env, config.Config, string) {
	t.Helper()
	env := stacktest.Get(t)
	input := kafkatest.Topics(t, env.KafkaBrokers, 2, prefix)[0]
	cfg := baseConfig(env.KafkaBrokers)
	kafkatest.DeleteAtEnd(t, env.KafkaBrokers, lanes(cfg)[0], lanes(cfg)[1], cfg.Bus.DeadLetterTopic)
	cfg.KafkaConsumer.Topics = input
	cfg.KafkaConsumer.GroupName = stacktest.Name("ingress_group")
	kafkatest.DeleteGroupsAtEnd(t, env.KafkaBrokers, cfg.KafkaConsumer.GroupName)
	return env, cfg, input
}

// By default a new input group starts at the end of its topics: pointing the
// ingress at a topic with history (the first generation's input, say) does
// not announce that history again.
func TestKafkaInputNewGroupStartsAtTheEnd(t *testing.T) {
	env, cfg, input := inputRig(t, "ingress_in_latest")
	old := `{"usernames": ["history"], "message": "` + b64(tpl) + `"}`
	kafkatest.Produce(t, env.KafkaBrokers, input, kafka.Message{Value: []byte(old)}, kafka.Message{Value: []byte(old)})

	svc := start(t, cfg)
	svc.waitReady(t)
	time.Sleep(2 * time.Second) // the group's partition readers resolve "the end" after the join
	kafkatest.Produce(t, env.KafkaBrokers, input, kafka.Message{Value: []byte(`{"usernames": ["fresh"], "message": "` + b64(tpl) + `"}`)})

	events := kafkatest.ReadTopics(t, env.KafkaBrokers, lanes(cfg), 3, 15*time.Second)
	if len(events) != 1 {
		t.Fatalf("%d events, want only the one produced after the start", len(events))
	}
	if ev, err := announcement.DecodeEvent(events[0].Value); err != nil || ev.Usernames[0] != "fresh" {
		t.Fatalf("event %+v %v, want the fresh one", ev, err)
	}
}

// keyFor returns a record key that the writers' hash balancer puts on
// partition p of n.
func keyFor(t *testing.T, p, n int) []byte {
	t.Helper()
	for i := range 1000 {
		k := []byte(fmt.Sprintf("k%d", i))
		if (&kafka.Hash{}).Balance(kafka.Message{Key: k}, make([]int, n)...) == p {
			return k
		}
	}
	t.Fatalf("no key for partition %d of %d", p, n)
	return nil
}

// With start_offset latest, a partition of the input that had no record
// while the service ran is not skipped after a restart: a record written
// to it while the service was down is announced.
func TestKafkaInputIdlePartitionKeepsRecordsAcrossARestart(t *testing.T) {
	env, cfg, input := inputRig(t, "ingress_in_idle")
	body := func(user string) []byte {
		return []byte(`{"usernames": ["` + user + `"], "message": "` + b64(tpl) + `"}`)
	}
	// History before the group exists stays unannounced (latest).
	kafkatest.Produce(t, env.KafkaBrokers, input, kafka.Message{Key: keyFor(t, 1, 2), Value: body("history")})

	svc := start(t, cfg)
	svc.waitReady(t)
	time.Sleep(2 * time.Second) // the group's partition readers resolve "the end" after the join
	kafkatest.Produce(t, env.KafkaBrokers, input, kafka.Message{Key: keyFor(t, 0, 2), Value: body("first")})
	if got := kafkatest.ReadTopics(t, env.KafkaBrokers, lanes(cfg), 1, 15*time.Second); len(got) != 1 {
		t.Fatalf("%d events, want the first one", len(got))
	}
	testkit.Eventually(t, 15*time.Second, "partition 0 committed", func() bool {
		return kafkatest.Committed(t, env.KafkaBrokers, cfg.KafkaConsumer.GroupName, input, 2)[0] == 1
	})
	if err := svc.stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}

	// Partition 1 has had no record since the group was made.
	kafkatest.Produce(t, env.KafkaBrokers, input, kafka.Message{Key: keyFor(t, 1, 2), Value: body("while-down")})
	svc = start(t, cfg)
	svc.waitReady(t)
	events := kafkatest.ReadTopics(t, env.KafkaBrokers, lanes(cfg), 3, 15*time.Second)
	var users []string
	for _, rec := range events {
		ev, err := announcement.DecodeEvent(rec.Value)
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, ev.Usernames...)
	}
	slices.Sort(users)
	if !slices.Equal(users, []string{"first", "while-down"}) {
		t.Fatalf("announced %q, want first and while-down (and not the history)", users)
	}
}

func TestStartFailsOnTakenPort(t *testing.T) {
	env := stacktest.Get(t)
	cfg := baseConfig(env.KafkaBrokers)
	kafkatest.DeleteAtEnd(t, env.KafkaBrokers, lanes(cfg)[0], lanes(cfg)[1], cfg.Bus.DeadLetterTopic)
	first := start(t, cfg)
	cfg.RestAPIPort = strings.TrimPrefix(first.api, "http://")
	err := run(context.Background(), zerolog.Nop(), cfg, hooks{})
	if err == nil || !strings.Contains(err.Error(), "rest_api_port") {
		t.Errorf("second instance on the same port: %v, want a rest_api_port error", err)
	}
}

func TestLimitsFollowTheMode(t *testing.T) {
	cfg := config.Default()
	cfg.Component.Name, cfg.Component.Domain = "announcer.example.org", "example.org"
	cfg.Client = config.Client{Username: "admin", Domain: "client.example.org"}
	if l := limits(cfg); l.Template.ComponentDomain != "announcer.example.org" || l.Template.ClientJID != "" || l.UserDomain != "example.org" {
		t.Errorf("component mode: %+v", l)
	}
	cfg.Sender.Mode = config.ModeClient
	if l := limits(cfg); l.Template.ComponentDomain != "" || l.Template.ClientJID != "admin@client.example.org" || l.UserDomain != "client.example.org" {
		t.Errorf("client mode: %+v", l)
	}
}

// lanes are the announcements topic and its priority lane (users
// announcements take the latter).
func lanes(cfg config.Config) []string {
	return []string{cfg.Bus.AnnouncementsTopic, cfg.PriorityTopic(cfg.Bus.AnnouncementsTopic)}
}

// The first generation's documented sample template sends from a user's
// address, outside the component domain. Over HTTP, through the service as
// it runs: [component] check_from = false (an ejabberd listener with
// check_from: false) accepts it with a 202; without it, the 400 names the
// option that allows it.
func TestCheckFromFalseAcceptsAFromOutsideTheComponentDomain(t *testing.T) {
	env := stacktest.Get(t)
	// Verbatim from the first generation's README ("announce channel message").
	sample := `<message xml:lang='en' to='%s' from="USERNAME@s/announcer" type='chat' id='ID_NUMBER' xmlns='jabber:client'><body>MESSAGE_CONTENT</body><body xml:lang='REPLY_ON_THREAD_ID'>989198872580</body><body xml:lang='MAJOR_TYPE'>SIMPLE_CHAT</body><body xml:lang='MINOR_TYPE'>TEXT</body><body xml:lang='REPLY_ON_MESSAGE_ID'>15219732781131af24fc1zwf</body><body xml:lang='SEND_TIME_IN_GMT'>1521973339583</body></message>`
	body := `{"channel_id": 22, "message": "` + b64(sample) + `"}`

	for _, tc := range []struct {
		name, file string
		want       int
	}{
		{"check_from = false", "[component]\nname = \"announcer\"\ncheck_from = false\n", http.StatusAccepted},
		{"default", "[component]\nname = \"announcer\"\n", http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parsed, err := config.Parse([]byte(tc.file))
			if err != nil {
				t.Fatal(err)
			}
			cfg := baseConfig(env.KafkaBrokers)
			cfg.Component.CheckFrom = parsed.Component.CheckFrom
			kafkatest.DeleteAtEnd(t, env.KafkaBrokers, lanes(cfg)[0], lanes(cfg)[1], cfg.Bus.DeadLetterTopic)
			svc := start(t, cfg)
			svc.waitReady(t)
			a := post(t, svc.api+"/v1/announce/channel", body)
			if a.code != tc.want {
				t.Fatalf("%d %s, want %d", a.code, a.raw, tc.want)
			}
			if tc.want == http.StatusBadRequest {
				for _, s := range []string{"USERNAME@s/announcer", "check_from = false"} {
					if !strings.Contains(a.raw, s) {
						t.Errorf("the 400 does not name %q: %s", s, a.raw)
					}
				}
				return
			}
			recs := kafkatest.ReadTopics(t, env.KafkaBrokers, lanes(cfg), 1, 5*time.Second)
			if len(recs) != 1 {
				t.Fatalf("%d records, want the accepted one", len(recs))
			}
			if ev, err := announcement.DecodeEvent(recs[0].Value); err != nil || ev.Template != sample {
				t.Fatalf("event %+v (%v), want the sample template unchanged", ev, err)
			}
		})
	}
}

// The ingress on a cluster that wants TLS and SASL ([bus] tls and sasl_*): it creates its
// topics and says ready, a 202 is in the topic, and the Kafka input (no brokers of its own, so
// [bus]'s, with [bus]'s security) is read. The test reads and writes through the broker's
// PLAINTEXT port; the service has only the SASL_SSL one.
func TestSecureBus(t *testing.T) {
	env := stacktest.Get(t)
	broker, l := stacktest.PrivateKafkaSecure(t, env)
	cfg := baseConfig([]string{l.Addr})
	cfg.Bus.KafkaSecurity = config.KafkaSecurity{TLS: true, TLSCAFile: l.CAFile, SASLMechanism: "PLAIN",
		SASLUsername: l.User, SASLPassword: config.Secret(l.Password)}
	input := kafkatest.Topics(t, broker.Brokers(), 1, "ingress_in_secure")[0]
	cfg.KafkaConsumer.Topics = input
	cfg.KafkaConsumer.GroupName = stacktest.Name("ingress_group")
	cfg.KafkaConsumer.StartOffset = "earliest"
	kafkatest.Produce(t, broker.Brokers(), input, kafka.Message{Key: []byte("in"), Value: []byte(`{"channel_id": 9, "message": "` + b64(tpl) + `"}`)})

	svc := start(t, cfg)
	svc.waitReady(t)
	a := post(t, svc.api+"/v1/announce/channel", `{"channel_id": 8, "message": "`+b64(tpl)+`"}`)
	if a.code != http.StatusAccepted {
		t.Fatalf("POST: %d %s", a.code, a.raw)
	}
	channels := map[string]string{}
	for _, rec := range kafkatest.ReadTopics(t, broker.Brokers(), lanes(cfg), 2, 30*time.Second) {
		ev, err := announcement.DecodeEvent(rec.Value)
		if err != nil {
			t.Fatal(err)
		}
		channels[ev.Source] = ev.Channel.String()
	}
	if channels["rest"] != "8" || channels["kafka:"+input] != "9" {
		t.Fatalf("events by source %v; want the POST's channel 8 and the input's channel 9", channels)
	}
	if err := svc.stop(); err != nil {
		t.Errorf("shutdown: %v", err)
	}

	// A wrong password: the service runs, is not ready, and /readyz says why.
	cfg.Bus.SASLPassword = "not-the-password"
	cfg.KafkaConsumer.Topics = ""
	svc = start(t, cfg)
	testkit.Eventually(t, 20*time.Second, "/readyz naming the refused authentication", func() bool {
		r := do(t, mustGet(t, svc.debug+"/readyz"))
		return r.code == http.StatusServiceUnavailable && strings.Contains(r.raw, "SASL Authentication Failed")
	})
	if a := post(t, svc.api+"/v1/announce/channel", `{"channel_id": 8, "message": "`+b64(tpl)+`"}`); a.code != http.StatusServiceUnavailable {
		t.Errorf("POST while Kafka refuses the service: %d %s, want 503", a.code, a.raw)
	}
}
