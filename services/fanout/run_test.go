package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
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
	"github.com/announcer/announcer/services/fanout/internal/audience"
	"github.com/announcer/announcer/services/fanout/internal/audience/audiencetest"
	"github.com/announcer/announcer/services/fanout/internal/mysqlstore"
	"github.com/announcer/announcer/services/fanout/internal/mysqlstore/mysqltest"
)

const template = "<message from='announcer.localhost' to='%s' type='chat'><body>hi [inc_id]</body></message>"

// harness runs the whole service (Run) against the real stack with topics,
// group, database and presence keys of its own.
type harness struct {
	t      *testing.T
	env    stacktest.Env
	cfg    config.Config
	reg    *prometheus.Registry
	seed   mysqltest.Seed
	rdb    *redis.Client
	prefix string // of usernames and presence addresses in the shared Redis db

	mu   sync.Mutex
	done map[string][]audience.Result
	cond chan struct{}
}

func newHarness(t *testing.T, mod func(*config.Config)) *harness {
	t.Helper()
	env := stacktest.Get(t)
	h := &harness{t: t, env: env, done: map[string][]audience.Result{},
		cond: make(chan struct{}), prefix: stacktest.Name("ft") + ":"}
	cfg := config.Default()
	cfg.DebugPort = "127.0.0.1:0"
	cfg.LogicProcessNumber = 2
	cfg.UserActivityAskBuffer = 7
	cfg.MySQL = mysqltest.New(t, env)
	cfg.MySQL.PaginationLength = 10
	cfg.UserActivityRedis.ClusterNodes = env.RedisAddr
	cfg.Progress.KeyPrefix = h.prefix + "progress:" // ids repeat across runs
	cfg.Bus.Brokers = strings.Join(env.KafkaBrokers, ",")
	cfg.Bus.AnnouncementsTopic = stacktest.Name("fanout_ann")
	cfg.Bus.DeliveriesPrefix = stacktest.Name("fanout_del") + "."
	cfg.Bus.DeadLetterTopic = stacktest.Name("fanout_dlq")
	cfg.Bus.Partitions = 3
	cfg.Fanout.GroupName = stacktest.Name("fanout_group")
	cfg.Fanout.BatchSize = 5
	cfg.Fanout.ShardSize = 40
	cfg.Fanout.RetryMax = config.Duration(200 * time.Millisecond)
	cfg.Component.Name, cfg.Component.Domain = "announcer.localhost", "localhost"
	cfg.Nodes = []config.Node{
		{Name: "node1", Address: "127.0.0.1:8889", PresenceAddresses: []string{h.prefix + "10.0.0.1"}},
		{Name: "node2", Address: "127.0.0.1:8890", PresenceAddresses: []string{h.prefix + "10.0.0.2"}},
	}
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(config.RoleFanout); err != nil {
		t.Fatal(err)
	}
	h.cfg = cfg

	st, err := mysqlstore.Open(cfg.MySQL, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	h.seed = mysqltest.Seed{DB: st.DB()}
	h.rdb = redis.NewClient(&redis.Options{Addr: env.RedisAddr})
	t.Cleanup(func() {
		if err := stacktest.DeleteKeys(context.Background(), h.rdb, h.prefix+"*"); err != nil {
			t.Logf("redis keys %s*: %v", h.prefix, err)
		}
		_ = h.rdb.Close()
	})
	_, topics := topicsOf(cfg)
	kafkatest.DeleteAtEnd(t, env.KafkaBrokers, topics...)
	kafkatest.DeleteGroupsAtEnd(t, env.KafkaBrokers, cfg.Fanout.GroupName, cfg.Fanout.GroupName+cfg.Bus.PrioritySuffix)
	return h
}

// start runs the service until the test ends.
func (h *harness) start() {
	h.t.Helper()
	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	rt, stop := testkit.Start(h.t, "fanout", func(ctx context.Context, started func(*stage.Runtime)) error {
		return run(ctx, log, h.cfg, hooks{
			resolved: func(ev announcement.Event, res audience.Result) {
				h.mu.Lock()
				h.done[ev.ID] = append(h.done[ev.ID], res)
				close(h.cond)
				h.cond = make(chan struct{})
				h.mu.Unlock()
			},
			runtime: started,
		})
	})
	h.reg = rt.Registry()
	h.t.Cleanup(func() {
		if err := stop(); err != nil {
			h.t.Errorf("Run: %v", err)
		}
	})
}

func (h *harness) publish(v []byte, key string) {
	h.t.Helper()
	// The topic may not exist until Run created it: Produce waits for it.
	kafkatest.Produce(h.t, h.env.KafkaBrokers, h.cfg.Bus.AnnouncementsTopic, kafka.Message{Key: []byte(key), Value: v})
}

func (h *harness) announce(ev announcement.Event) {
	h.t.Helper()
	if ev.Template == "" {
		ev.Template = template
	}
	ev.CreatedAt = time.Now().UTC()
	ev.Source = "test"
	v, err := ev.Encode()
	if err != nil {
		h.t.Fatal(err)
	}
	h.publish(v, ev.ID)
}

// results waits until id has n committed results (or fails after timeout).
func (h *harness) results(id string, n int, timeout time.Duration) []audience.Result {
	h.t.Helper()
	deadline := time.After(timeout)
	for {
		h.mu.Lock()
		got := slices.Clone(h.done[id])
		cond := h.cond
		h.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-cond:
		case <-deadline:
			h.t.Fatalf("announcement %s: %d of %d tasks committed after %s", id, len(got), n, timeout)
		}
	}
}

// deliveries reads node's topic and returns the batches of announcement id.
func (h *harness) deliveries(node, id string) []announcement.Batch {
	h.t.Helper()
	var out []announcement.Batch
	for _, m := range kafkatest.ReadToEnd(h.t, h.env.KafkaBrokers, h.cfg.DeliveriesTopic(node)) {
		b, err := announcement.DecodeBatch(m.Value)
		if err != nil {
			h.t.Fatal(err)
		}
		if b.Node != node {
			h.t.Fatalf("batch for %s on %s's topic", b.Node, node)
		}
		if b.AnnouncementID == id {
			out = append(out, b)
		}
	}
	return out
}

func recipients(bs []announcement.Batch) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.Recipients...)
	}
	slices.Sort(out)
	return out
}

func (h *harness) online(addr string, users ...string) {
	h.t.Helper()
	ctx := context.Background()
	pipe := h.rdb.Pipeline()
	for _, u := range users {
		pipe.Set(ctx, u, addr, 0)
		pipe.SAdd(ctx, addr, u)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		h.t.Fatal(err)
	}
}

// population adds channel id with n members (prefixed names): i%3 == 0 online
// at node1, 1 at node2, 2 offline. It returns the expected recipients per node.
func (h *harness) population(id int64, strID, state string, n int) map[string][]string {
	h.t.Helper()
	ctx := context.Background()
	if err := h.seed.AddChannel(ctx, id, strID, state); err != nil {
		h.t.Fatal(err)
	}
	names := audiencetest.Names(fmt.Sprintf("%sc%d-", h.prefix, id), n)
	if err := h.seed.AddMembers(ctx, id, names...); err != nil {
		h.t.Fatal(err)
	}
	want := map[string][]string{}
	for i, u := range names {
		switch i % 3 {
		case 0:
			want["node1"] = append(want["node1"], u)
		case 1:
			want["node2"] = append(want["node2"], u)
		}
	}
	h.online(h.cfg.Nodes[0].PresenceAddresses[0], want["node1"]...)
	h.online(h.cfg.Nodes[1].PresenceAddresses[0], want["node2"]...)
	slices.Sort(want["node1"])
	slices.Sort(want["node2"])
	return want
}

func checkBatches(t *testing.T, bs []announcement.Batch, batchSize int) {
	t.Helper()
	keys := map[string]bool{}
	for _, b := range bs {
		if b.Template != template || len(b.Recipients) > batchSize || len(b.Recipients) == 0 {
			t.Fatalf("batch %+v", b)
		}
		if keys[string(b.Key())] {
			t.Fatalf("batch key %s twice", b.Key())
		}
		keys[string(b.Key())] = true
	}
}

func TestFanoutWithRedisPresence(t *testing.T) {
	h := newHarness(t, nil)
	h.start()
	const timeout = 30 * time.Second

	t.Run("ChannelOnlineMembersRoutedToTheirNode", func(t *testing.T) {
		if got := testkit.Gathered(t, h.reg, "announcer_fanout_mysql_member_index"); got != -1 {
			t.Fatalf("member index gauge %v before the first channel, want -1", got)
		}
		want := h.population(1, "one", audience.StateAccepted, 32)
		h.population(9, "nine", audience.StateAccepted, 12) // another channel's members are interleaved in nothing
		// One member online on a server no node names: routed by hash, delivered exactly once.
		stray := h.prefix + "stray"
		if err := h.seed.AddMembers(context.Background(), 1, stray); err != nil {
			t.Fatal(err)
		}
		h.online(h.prefix+"10.9.9.9", stray)
		h.announce(announcement.Event{ID: "num", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{ID: 1}, Persist: true})
		res := h.results("num", 1, timeout)[0]
		if res.Outcome != audience.Delivered || res.Audience != 33 || res.Recipients != 23 {
			t.Fatalf("result %+v", res)
		}
		n1, n2 := h.deliveries("node1", "num"), h.deliveries("node2", "num")
		checkBatches(t, append(slices.Clone(n1), n2...), h.cfg.Fanout.BatchSize)
		got1, got2 := recipients(n1), recipients(n2)
		got1 = slices.DeleteFunc(got1, func(s string) bool { return s == stray })
		got2 = slices.DeleteFunc(got2, func(s string) bool { return s == stray })
		if !slices.Equal(got1, want["node1"]) || !slices.Equal(got2, want["node2"]) {
			t.Fatalf("node1 %v\nwant  %v\nnode2 %v\nwant  %v", got1, want["node1"], got2, want["node2"])
		}
		if len(recipients(n1))+len(recipients(n2)) != 23 {
			t.Fatal("stray member not delivered exactly once")
		}
		if got := testkit.Gathered(t, h.reg, "announcer_fanout_mysql_member_index"); got != 2 {
			t.Fatalf("member index gauge %v, want 2 (the schema's covering index)", got)
		}
		for _, b := range append(n1, n2...) {
			if !b.Persist {
				t.Fatal("persist flag lost")
			}
		}
	})

	t.Run("StringChannelID", func(t *testing.T) {
		want := h.population(2, "two-str", audience.StateAccepted, 8)
		h.announce(announcement.Event{ID: "str", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{StringID: "two-str", IsString: true}})
		if res := h.results("str", 1, timeout)[0]; res.Outcome != audience.Delivered {
			t.Fatalf("%+v", res)
		}
		if got := recipients(h.deliveries("node1", "str")); !slices.Equal(got, want["node1"]) {
			t.Fatalf("node1 %v want %v", got, want["node1"])
		}
		if got := recipients(h.deliveries("node2", "str")); !slices.Equal(got, want["node2"]) {
			t.Fatalf("node2 %v want %v", got, want["node2"])
		}
	})

	t.Run("PendingAndUnknownChannelsRejected", func(t *testing.T) {
		h.population(3, "pending", "PENDING", 6)
		h.announce(announcement.Event{ID: "pend", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{ID: 3}})
		h.announce(announcement.Event{ID: "unk", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{StringID: "no-such", IsString: true}})
		if res := h.results("pend", 1, timeout)[0]; res.Outcome != audience.Rejected || res.Reason != audience.ReasonChannelNotAccepted {
			t.Fatalf("pending: %+v", res)
		}
		if res := h.results("unk", 1, timeout)[0]; res.Outcome != audience.Rejected || res.Reason != audience.ReasonChannelNotFound {
			t.Fatalf("unknown: %+v", res)
		}
		if n := len(h.deliveries("node1", "pend")) + len(h.deliveries("node2", "pend")); n != 0 {
			t.Fatalf("%d batches for a pending channel", n)
		}
		if testkit.Gathered(t, h.reg, "announcer_fanout_rejected_total", audience.ReasonChannelNotAccepted) != 1 || testkit.Gathered(t, h.reg, "announcer_fanout_rejected_total", audience.ReasonChannelNotFound) != 1 {
			t.Fatal("rejections not counted")
		}
	})

	t.Run("GiantChannelSharedAsShardTasks", func(t *testing.T) {
		want := h.population(4, "giant", audience.StateAccepted, 130) // ShardSize 40 → 4 shards
		h.announce(announcement.Event{ID: "giant", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{ID: 4}})
		// The shard tasks run on both logic processes: one may finish before the
		// split that wrote it is recorded, so results come in any order.
		res := h.results("giant", 5, timeout)
		splits, members := 0, 0
		for _, r := range res {
			if r.Outcome == audience.Split {
				splits++
				if r.Shards != 4 {
					t.Fatalf("split into %d shards, want 4: %+v", r.Shards, r)
				}
				continue
			}
			members += r.Audience
		}
		if splits != 1 {
			t.Fatalf("%d split results in %+v", splits, res)
		}
		if members != 130 {
			t.Fatalf("shards read %d members, want 130", members)
		}
		n1, n2 := h.deliveries("node1", "giant"), h.deliveries("node2", "giant")
		checkBatches(t, append(slices.Clone(n1), n2...), h.cfg.Fanout.BatchSize)
		if !slices.Equal(recipients(n1), want["node1"]) || !slices.Equal(recipients(n2), want["node2"]) {
			t.Fatal("giant channel: recipients differ")
		}
		shards := map[int]bool{}
		incs := map[uint64]bool{}
		for _, b := range append(n1, n2...) {
			shards[b.Shard] = true
			for i := range b.Recipients {
				if incs[b.FirstIncID+uint64(i)] {
					t.Fatal("inc id reused across shards")
				}
				incs[b.FirstIncID+uint64(i)] = true
			}
		}
		if len(shards) != 4 {
			t.Fatalf("batches from shards %v", shards)
		}
	})

	t.Run("AllOnline", func(t *testing.T) {
		a := h.prefix + "all-"
		h.online(h.cfg.Nodes[0].PresenceAddresses[0], a+"x", a+"y")
		h.online(h.cfg.Nodes[1].PresenceAddresses[0], a+"z")
		h.announce(announcement.Event{ID: "all", Kind: announcement.KindAllOnline})
		res := h.results("all", 1, timeout)[0]
		if res.Outcome != audience.Delivered {
			t.Fatalf("%+v", res)
		}
		// Everyone online on node1's address (the channel tests put users there too).
		wantN1, _ := h.rdb.SMembers(context.Background(), h.cfg.Nodes[0].PresenceAddresses[0]).Result()
		wantN2, _ := h.rdb.SMembers(context.Background(), h.cfg.Nodes[1].PresenceAddresses[0]).Result()
		slices.Sort(wantN1)
		slices.Sort(wantN2)
		if got := recipients(h.deliveries("node1", "all")); !slices.Equal(got, wantN1) {
			t.Fatalf("node1: %d recipients, want %d", len(got), len(wantN1))
		}
		if got := recipients(h.deliveries("node2", "all")); !slices.Equal(got, wantN2) {
			t.Fatalf("node2: %d recipients, want %d", len(got), len(wantN2))
		}
	})

	t.Run("UsersList", func(t *testing.T) {
		on := h.prefix + "listed-online"
		h.online(h.cfg.Nodes[1].PresenceAddresses[0], on)
		users := []string{on, h.prefix + "listed-offline", "someone@elsewhere.example/r"}
		h.announce(announcement.Event{ID: "users", Kind: announcement.KindUsers, Usernames: users, Persist: true})
		if res := h.results("users", 1, timeout)[0]; res.Outcome != audience.Delivered || res.Recipients != 3 {
			t.Fatalf("%+v", res)
		}
		n2 := h.deliveries("node2", "users")
		all := append(recipients(h.deliveries("node1", "users")), recipients(n2)...)
		slices.Sort(all)
		want := slices.Sorted(slices.Values(users))
		if !slices.Equal(all, want) {
			t.Fatalf("users %v want %v", all, want)
		}
		if !slices.Contains(recipients(n2), on) {
			t.Fatal("online user not routed to its node")
		}
		for _, b := range n2 {
			if !b.Persist {
				t.Fatal("persist lost")
			}
		}
	})

	t.Run("BadRecordDeadLettered", func(t *testing.T) {
		h.publish([]byte(`{"id":"bad","kind":"channel"`), "bad")
		bad := announcement.Event{ID: "badtmpl", Kind: announcement.KindAllOnline, Template: "<message to='%s'>", CreatedAt: time.Now()}
		v, _ := bad.Encode()
		h.publish(v, "badtmpl")
		deadline := time.Now().Add(timeout)
		for {
			msgs := kafkatest.ReadToEnd(t, h.env.KafkaBrokers, h.cfg.Bus.DeadLetterTopic)
			if len(msgs) == 2 {
				for _, m := range msgs {
					reason := ""
					for _, hd := range m.Headers {
						if hd.Key == kafkabus.HeaderReason {
							reason = string(hd.Value)
						}
					}
					if reason == "" {
						t.Fatalf("dead letter without reason: %s", m.Value)
					}
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d dead letters", len(msgs))
			}
			time.Sleep(100 * time.Millisecond)
		}
		// The partition moves on after a dead letter.
		h.announce(announcement.Event{ID: "after-bad", Kind: announcement.KindUsers, Usernames: []string{"x"}})
		h.results("after-bad", 1, timeout)
	})
}

// MySQL and Redis are down when the announcement arrives: fanout waits and
// retries instead of treating the members as absent or offline.
func TestDependenciesDownAreWaitedFor(t *testing.T) {
	// Both behind proxies that refuse every connection until the test lets them through.
	var mysqlProxy, redisProxy *tcpproxy.Proxy
	var realMySQL string
	h := newHarness(t, func(c *config.Config) {
		realMySQL = c.MySQL.Address
		mysqlProxy = tcpproxy.New(t, realMySQL, tcpproxy.Refuse)
		redisProxy = tcpproxy.New(t, c.UserActivityRedis.ClusterNodes, tcpproxy.Refuse)
		c.MySQL.Address = mysqlProxy.Addr()
		c.UserActivityRedis.ClusterNodes = redisProxy.Addr()
	})
	// Seed through the real server (the harness's seed pool dials the proxy address).
	cfg := h.cfg.MySQL
	cfg.Address = realMySQL
	st, err := mysqlstore.Open(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h.seed = mysqltest.Seed{DB: st.DB()}
	want := h.population(1, "one", audience.StateAccepted, 15)

	h.start()
	h.announce(announcement.Event{ID: "wait", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{ID: 1}})
	waitMetric := func(dep string) {
		deadline := time.Now().Add(20 * time.Second)
		for testkit.Gathered(t, h.reg, "announcer_fanout_retries_total", dep) < 2 {
			if time.Now().After(deadline) {
				t.Fatalf("no %s retries counted", dep)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitMetric("mysql")
	mysqlProxy.Set(tcpproxy.Forward)
	waitMetric("presence")
	h.mu.Lock()
	early := len(h.done["wait"])
	h.mu.Unlock()
	if early != 0 {
		t.Fatal("announcement finished while Redis was down")
	}
	redisProxy.Set(tcpproxy.Forward)
	if res := h.results("wait", 1, 30*time.Second)[0]; res.Outcome != audience.Delivered || res.Recipients != 10 {
		t.Fatalf("%+v", res)
	}
	if got := recipients(h.deliveries("node1", "wait")); !slices.Equal(got, want["node1"]) {
		t.Fatalf("node1 %v want %v", got, want["node1"])
	}
	if got := recipients(h.deliveries("node2", "wait")); !slices.Equal(got, want["node2"]) {
		t.Fatalf("node2 %v want %v", got, want["node2"])
	}
}

// The user-activity REST API as presence source: online subset, routed by hash.
func TestFanoutWithRESTPresence(t *testing.T) {
	online := map[string]bool{}
	var mu sync.Mutex
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/users/online" || r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		var names []string
		if err := json.NewDecoder(r.Body).Decode(&names); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		out := []string{}
		mu.Lock()
		for _, n := range names {
			if online[n] {
				out = append(out, n)
			}
		}
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(out)
	}))
	defer api.Close()
	h := newHarness(t, func(c *config.Config) {
		c.Fanout.Presence = "rest"
		c.UserActivityREST.Address = strings.TrimPrefix(api.URL, "http://")
		c.UserActivityREST.RequestTimeout = 2000
	})
	want := h.population(1, "one", audience.StateAccepted, 20)
	mu.Lock()
	for _, u := range append(slices.Clone(want["node1"]), want["node2"]...) {
		online[u] = true
	}
	mu.Unlock()
	h.start()
	h.announce(announcement.Event{ID: "rest", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{ID: 1}})
	h.announce(announcement.Event{ID: "rest-all", Kind: announcement.KindAllOnline})
	if res := h.results("rest", 1, 30*time.Second)[0]; res.Outcome != audience.Delivered {
		t.Fatalf("%+v", res)
	}
	all := append(recipients(h.deliveries("node1", "rest")), recipients(h.deliveries("node2", "rest"))...)
	slices.Sort(all)
	wantAll := slices.Sorted(slices.Values(append(slices.Clone(want["node1"]), want["node2"]...)))
	if !slices.Equal(all, wantAll) {
		t.Fatalf("recipients %v want %v", all, wantAll)
	}
	if res := h.results("rest-all", 1, 30*time.Second)[0]; res.Outcome != audience.Rejected || res.Reason != audience.ReasonScanUnsupported {
		t.Fatalf("all-online with REST presence: %+v", res)
	}
}

// A production schema that allows a NULL username: the channel with such a
// row is announced to its other members (the NULL one skipped and counted),
// and a healthy announcement posted after it is not held back, even with a
// single fanout worker.
func TestNullMemberRowHoldsNothingBack(t *testing.T) {
	h := newHarness(t, func(c *config.Config) { c.LogicProcessNumber = 1 })
	ctx := context.Background()
	if _, err := h.seed.DB.ExecContext(ctx, "ALTER TABLE ws_channel_members MODIFY member_username VARCHAR(191) NULL"); err != nil {
		t.Fatal(err)
	}
	want := h.population(1, "with-null", audience.StateAccepted, 6)
	if _, err := h.seed.DB.ExecContext(ctx, "INSERT INTO ws_channel_members (member_channelid, member_username) VALUES (1, NULL)"); err != nil {
		t.Fatal(err)
	}
	healthy := h.population(2, "healthy", audience.StateAccepted, 6)
	h.start()
	start := time.Now()
	h.announce(announcement.Event{ID: "null-row", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{ID: 1}})
	h.announce(announcement.Event{ID: "after-it", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{ID: 2}})
	if res := h.results("null-row", 1, 30*time.Second)[0]; res.Outcome != audience.Delivered || res.Recipients != len(want["node1"])+len(want["node2"]) {
		t.Fatalf("the channel with a NULL row: %+v", res)
	}
	if res := h.results("after-it", 1, 30*time.Second)[0]; res.Outcome != audience.Delivered || res.Recipients != len(healthy["node1"])+len(healthy["node2"]) {
		t.Fatalf("the announcement after it: %+v", res)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("both took %s", d)
	}
	if n := testkit.Gathered(t, h.reg, "announcer_fanout_skipped_empty_usernames_total"); n != 1 {
		t.Fatalf("skipped %v empty usernames, want the NULL one", n)
	}
}
