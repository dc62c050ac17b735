package audience_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/services/fanout/internal/audience"
	"github.com/announcer/announcer/services/fanout/internal/audience/audiencetest"
)

func TestFakeMemberStoreContract(t *testing.T) {
	audiencetest.MemberStoreContract(t, func(*testing.T) audiencetest.MemberFixture { return audiencetest.NewMembers() })
}

func TestFakePresenceContract(t *testing.T) {
	audiencetest.PresenceContract(t, audiencetest.NewPresence(), audiencetest.PresenceCaps{NamesServer: true, CanScan: true}, "")
	p := audiencetest.NewPresence()
	p.NoScan = true
	audiencetest.PresenceContract(t, p, audiencetest.PresenceCaps{}, "")
}

var twoNodes = []audience.Node{
	{Name: "node1", PresenceAddresses: []string{"10.0.0.1"}},
	{Name: "node2", PresenceAddresses: []string{"10.0.0.2", "10.0.0.22"}},
}

type world struct {
	members  *audiencetest.Members
	presence *audiencetest.Presence
	sink     *audiencetest.Sink
	reg      *prometheus.Registry
	r        *audience.Resolver
}

func newWorld(t *testing.T, mod func(*audience.Config)) *world {
	t.Helper()
	w := &world{
		members:  audiencetest.NewMembers(),
		presence: audiencetest.NewPresence(),
		sink:     &audiencetest.Sink{},
		reg:      prometheus.NewRegistry(),
	}
	w.r = w.resolver(t, w.reg, mod)
	return w
}

// resolver is a fanout worker over the world's stores and sink, its
// metrics on reg (another worker needs a registry of its own).
func (w *world) resolver(t *testing.T, reg prometheus.Registerer, mod func(*audience.Config)) *audience.Resolver {
	t.Helper()
	cfg := audience.Config{
		Nodes: twoNodes, BatchSize: 10, ShardSize: 50, PageSize: 7, ScanCount: 5, MaxInFlight: 3, RouteUsers: true,
		Retry: backoff.Policy{Initial: time.Millisecond, Max: 5 * time.Millisecond},
	}
	if mod != nil {
		mod(&cfg)
	}
	r, err := audience.New(cfg, w.members, w.presence, w.sink, w.sink, zerolog.Nop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func channelEvent(ref announcement.ChannelRef) announcement.Event {
	return announcement.Event{ID: "a1", Kind: announcement.KindChannel, Channel: &ref,
		Template: "<message to='%s'/>", Persist: true, CreatedAt: time.Now()}
}

// seedChannel adds n members u0..u(n-1) to channel id; i%3==0 online at node1,
// i%3==1 at node2's second address, the rest offline.
func (w *world) seedChannel(t *testing.T, id int64, state string, n int) (node1, node2 []string) {
	t.Helper()
	ctx := context.Background()
	_ = w.members.AddChannel(ctx, id, fmt.Sprintf("ch%d", id), state)
	names := audiencetest.Names("u", n)
	_ = w.members.AddMembers(ctx, id, names...)
	for i, u := range names {
		switch i % 3 {
		case 0:
			_ = w.presence.SetOnline(ctx, "10.0.0.1", u)
			node1 = append(node1, u)
		case 1:
			_ = w.presence.SetOnline(ctx, "10.0.0.22", u)
			node2 = append(node2, u)
		}
	}
	return node1, node2
}

func TestChannelOnlineMembersRoutedToTheirNode(t *testing.T) {
	w := newWorld(t, nil)
	want1, want2 := w.seedChannel(t, 1, audience.StateAccepted, 40)
	res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1}))
	if err != nil {
		t.Fatal(err)
	}
	got := w.sink.Recipients()
	if !slices.Equal(got["node1"], want1) || !slices.Equal(got["node2"], want2) {
		t.Fatalf("routing:\nnode1 %v want %v\nnode2 %v want %v", got["node1"], want1, got["node2"], want2)
	}
	if res.Outcome != audience.Delivered || res.Audience != 40 || res.Recipients != len(want1)+len(want2) {
		t.Fatalf("result %+v", res)
	}
	if res.PerNode["node1"] != len(want1) || res.PerNode["node2"] != len(want2) {
		t.Fatalf("per node %v", res.PerNode)
	}
	// Batches: full ones of BatchSize, seqs 0..n-1, [inc_id] ranges disjoint and contiguous.
	var incs []uint64
	seqs := map[int]bool{}
	for _, b := range w.sink.Batches {
		if len(b.Recipients) > 10 || b.AnnouncementID != "a1" || !b.Persist || b.Template != "<message to='%s'/>" || b.Shard != 0 {
			t.Fatalf("batch %+v", b)
		}
		seqs[b.Seq] = true
		for i := range b.Recipients {
			incs = append(incs, b.FirstIncID+uint64(i))
		}
	}
	if len(seqs) != len(w.sink.Batches) || res.Batches != len(w.sink.Batches) {
		t.Fatalf("seqs %v for %d batches (result says %d)", seqs, len(w.sink.Batches), res.Batches)
	}
	slices.Sort(incs)
	for i, v := range incs {
		if v != uint64(i+1) {
			t.Fatalf("inc ids %v: want 1..%d", incs, len(incs))
		}
	}
	if v := testkit.Gathered(t, w.reg, "node_recipients_total", "node1"); v != float64(len(want1)) {
		t.Fatalf("node1 metric %v", v)
	}
}

func TestChannelByStringID(t *testing.T) {
	w := newWorld(t, nil)
	want1, _ := w.seedChannel(t, 5, audience.StateAccepted, 9)
	res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{StringID: "ch5", IsString: true}))
	if err != nil || res.Outcome != audience.Delivered {
		t.Fatal(res, err)
	}
	if got := w.sink.Recipients()["node1"]; !slices.Equal(got, want1) {
		t.Fatalf("node1 %v want %v", got, want1)
	}
}

func TestChannelRejected(t *testing.T) {
	w := newWorld(t, nil)
	w.seedChannel(t, 2, "PENDING", 5)
	for _, tc := range []struct {
		ref    announcement.ChannelRef
		reason string
	}{
		{announcement.ChannelRef{ID: 2}, audience.ReasonChannelNotAccepted},
		{announcement.ChannelRef{ID: 3}, audience.ReasonChannelNotFound},
		{announcement.ChannelRef{StringID: "nope", IsString: true}, audience.ReasonChannelNotFound},
	} {
		res, err := w.r.Resolve(context.Background(), channelEvent(tc.ref))
		if err != nil || res.Outcome != audience.Rejected || res.Reason != tc.reason {
			t.Errorf("%v: %+v %v; want rejected %s", tc.ref, res, err, tc.reason)
		}
	}
	if len(w.sink.Batches) != 0 {
		t.Fatalf("batches for rejected channels: %d", len(w.sink.Batches))
	}
	if v := testkit.Gathered(t, w.reg, "rejected_total", audience.ReasonChannelNotFound); v != 2 {
		t.Fatalf("rejected metric %v", v)
	}
}

// A channel is accepted as the first generation's WHERE channel_state =
// 'ACCEPTED' accepted it under MariaDB's default collations: whatever the
// case, trailing spaces ignored.
func TestChannelStateMatchedAsTheDatabaseDoes(t *testing.T) {
	for _, tc := range []struct {
		state string
		want  audience.Outcome
	}{
		{"accepted", audience.Delivered},
		{"ACCEPTED ", audience.Delivered},
		{"PENDING", audience.Rejected},
	} {
		w := newWorld(t, nil)
		want1, want2 := w.seedChannel(t, 1, tc.state, 10)
		res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1}))
		if err != nil || res.Outcome != tc.want {
			t.Errorf("state %q: %+v %v, want %s", tc.state, res, err, tc.want)
			continue
		}
		if n := len(w.sink.Recipients()["node1"]) + len(w.sink.Recipients()["node2"]); tc.want == audience.Delivered && n != len(want1)+len(want2) {
			t.Errorf("state %q: %d recipients, want %d", tc.state, n, len(want1)+len(want2))
		}
	}
}

// Member ids may cross zero (a schema may start them anywhere): a shard
// whose range ends at 0 ends there, and every member is reached once.
func TestMemberIDsAcrossZero(t *testing.T) {
	w := newWorld(t, func(c *audience.Config) { c.ShardSize = 100 })
	ctx := context.Background()
	_ = w.members.AddChannel(ctx, 1, "one", audience.StateAccepted)
	names := audiencetest.Names("u", 200)
	if err := w.members.AddMembersAt(ctx, 1, -100, names...); err != nil { // ids -100..99
		t.Fatal(err)
	}
	_ = w.presence.SetOnline(ctx, "10.0.0.1", names...)
	res, err := w.r.Resolve(ctx, channelEvent(announcement.ChannelRef{ID: 1}))
	if err != nil || res.Outcome != audience.Split || res.Shards != 2 {
		t.Fatalf("%+v %v, want 2 shards", res, err)
	}
	if s := *w.sink.Tasks[0].Shard; s.FromMemberID != -100 || s.ToMemberID != 0 {
		t.Fatalf("first shard %+v, want [-100, 0)", s)
	}
	read := 0
	for _, task := range w.sink.Tasks {
		if err := task.Check(); err != nil {
			t.Fatal(err)
		}
		r, err := w.r.Resolve(ctx, task)
		if err != nil || r.Outcome != audience.Delivered {
			t.Fatal(r, err)
		}
		read += r.Audience
	}
	got := slices.Sorted(slices.Values(w.sink.Recipients()["node1"]))
	if read != 200 || !slices.Equal(got, slices.Sorted(slices.Values(names))) {
		t.Fatalf("the shards read %d members and sent %d, want each of the 200 once", read, len(got))
	}
}

func TestGiantChannelSplitsIntoShards(t *testing.T) {
	w := newWorld(t, nil) // ShardSize 50
	want1, want2 := w.seedChannel(t, 1, audience.StateAccepted, 173)
	ev := channelEvent(announcement.ChannelRef{ID: 1})
	res, err := w.r.Resolve(context.Background(), ev)
	if err != nil || res.Outcome != audience.Split || res.Shards != 4 {
		t.Fatalf("%+v %v", res, err)
	}
	if len(w.sink.Batches) != 0 || len(w.sink.Tasks) != 4 {
		t.Fatalf("%d batches, %d tasks", len(w.sink.Batches), len(w.sink.Tasks))
	}
	// Run the shard tasks (as other workers would, in any order) and check the union.
	tasks := slices.Clone(w.sink.Tasks)
	slices.Reverse(tasks)
	total := 0
	for _, task := range tasks {
		if err := task.Check(); err != nil {
			t.Fatal(err)
		}
		if task.ID != ev.ID || task.Template != ev.Template || !task.Persist || task.Shard.Count != 4 {
			t.Fatalf("task %+v", task)
		}
		res, err := w.r.Resolve(context.Background(), task)
		if err != nil || res.Outcome != audience.Delivered {
			t.Fatal(res, err)
		}
		total += res.Audience
	}
	if total != 173 {
		t.Fatalf("shards read %d members, want 173", total)
	}
	got := w.sink.Recipients()
	for node, want := range map[string][]string{"node1": want1, "node2": want2} {
		g := slices.Clone(got[node])
		slices.Sort(g)
		w := slices.Clone(want)
		slices.Sort(w)
		if !slices.Equal(g, w) {
			t.Fatalf("%s: %d recipients, want %d", node, len(g), len(w))
		}
	}
	// [inc_id]s stay unique across shards, and each batch key is unique.
	incs := map[uint64]bool{}
	keys := map[string]bool{}
	for _, b := range w.sink.Batches {
		keys[string(b.Key())] = true
		for i := range b.Recipients {
			id := b.FirstIncID + uint64(i)
			if incs[id] {
				t.Fatalf("inc id %d twice", id)
			}
			incs[id] = true
		}
	}
	if len(keys) != len(w.sink.Batches) {
		t.Fatalf("duplicate batch keys")
	}
}

// A write of shard tasks that Kafka acknowledged in part writes only the
// rest again: a task written twice would send its whole shard twice.
func TestPartlyWrittenShardTasksAreNotWrittenTwice(t *testing.T) {
	w := newWorld(t, nil) // ShardSize 50
	w.seedChannel(t, 1, audience.StateAccepted, 173)
	first := true
	w.sink.PartialTasks = func(tasks []announcement.Event) []int {
		if !first {
			return nil
		}
		first = false
		return []int{1, 3}
	}
	res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1}))
	if err != nil || res.Outcome != audience.Split || res.Shards != 4 {
		t.Fatalf("%+v %v", res, err)
	}
	var got []int
	for _, task := range w.sink.Tasks {
		got = append(got, task.Shard.Index)
	}
	if !slices.Equal(got, []int{0, 2, 1, 3}) {
		t.Fatalf("tasks written: shards %v, want 0 and 2, then only 1 and 3 again", got)
	}
}

// A giant channel's cut serves its next announcements for CountMaxAge:
// they read nothing to cut it, and the shards still cover members added
// since. A channel of one shard is cut every time.
func TestChannelCutIsRememberedForItsMaxAge(t *testing.T) {
	for _, tc := range []struct {
		name       string
		maxAge     time.Duration
		members    int
		wantStarts int
	}{
		{"remembered", time.Hour, 173, 1},
		{"off", 0, 173, 2},
		{"one shard", time.Hour, 30, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, func(c *audience.Config) { c.CountMaxAge = tc.maxAge }) // ShardSize 50
			var startsReads atomic.Int32
			w.members.Fail = func(op string) error {
				if op == "starts" {
					startsReads.Add(1)
				}
				return nil
			}
			ctx := context.Background()
			w.seedChannel(t, 1, audience.StateAccepted, tc.members)
			first := channelEvent(announcement.ChannelRef{ID: 1})
			if _, err := w.r.Resolve(ctx, first); err != nil {
				t.Fatal(err)
			}
			added := audiencetest.Names("late", 60)
			_ = w.members.AddMembers(ctx, 1, added...)
			second := channelEvent(announcement.ChannelRef{ID: 1})
			second.ID = "a2"
			tasks := len(w.sink.Tasks)
			res, err := w.r.Resolve(ctx, second)
			if err != nil {
				t.Fatal(err)
			}
			if n := int(startsReads.Load()); n != tc.wantStarts {
				t.Fatalf("shard starts read %d times, want %d", n, tc.wantStarts)
			}
			audienceSize := res.Audience
			if res.Outcome == audience.Split {
				if tc.wantStarts == 1 && res.Shards != (tc.members+49)/50 {
					t.Fatalf("%d shards, want %d from the remembered cut", res.Shards, (tc.members+49)/50)
				}
				for _, task := range w.sink.Tasks[tasks:] {
					r, err := w.r.Resolve(ctx, task)
					if err != nil {
						t.Fatal(err)
					}
					audienceSize += r.Audience
				}
			}
			if audienceSize != tc.members+len(added) {
				t.Fatalf("the second announcement reached %d members, want %d", audienceSize, tc.members+len(added))
			}
		})
	}
}

// Shards are cut by member id: with ids spread unevenly (other channels'
// members in between, most of the channel joined at once) the ranges still
// cover every member exactly once, and each holds ShardSize members, not
// an equal share of the ids (which put all 150 late members in one shard).
func TestShardsOfUnevenlySpreadMembers(t *testing.T) {
	w := newWorld(t, nil) // ShardSize 50
	ctx := context.Background()
	_ = w.members.AddChannel(ctx, 1, "one", audience.StateAccepted)
	a := audiencetest.Names("early", 10)
	b := audiencetest.Names("late", 150)
	_ = w.members.AddMembers(ctx, 1, a...)
	_ = w.members.AddMembers(ctx, 2, audiencetest.Names("other", 500)...)
	_ = w.members.AddMembers(ctx, 1, b...)
	all := append(slices.Clone(a), b...)
	_ = w.presence.SetOnline(ctx, "10.0.0.1", all...)
	res, err := w.r.Resolve(ctx, channelEvent(announcement.ChannelRef{ID: 1}))
	if err != nil || res.Outcome != audience.Split || res.Shards != 4 {
		t.Fatalf("%+v %v", res, err)
	}
	var sizes []int
	for _, task := range w.sink.Tasks {
		res, err := w.r.Resolve(ctx, task)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, res.Audience)
	}
	if !slices.Equal(sizes, []int{50, 50, 50, 10}) {
		t.Errorf("shards of %v members, want 50, 50, 50 and 10", sizes)
	}
	got := slices.Sorted(slices.Values(w.sink.Recipients()["node1"]))
	if !slices.Equal(got, slices.Sorted(slices.Values(all))) {
		t.Fatalf("%d recipients, want %d", len(got), len(all))
	}
}

func TestChannelOfExactlyOneShardIsNotSplit(t *testing.T) {
	w := newWorld(t, nil)
	w.seedChannel(t, 1, audience.StateAccepted, 50)
	res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1}))
	if err != nil || res.Outcome != audience.Delivered || res.Audience != 50 || len(w.sink.Tasks) != 0 {
		t.Fatalf("%+v %v, %d tasks", res, err, len(w.sink.Tasks))
	}
}

func TestAllOnline(t *testing.T) {
	w := newWorld(t, nil)
	want1, want2 := w.seedChannel(t, 1, audience.StateAccepted, 60)
	_ = w.presence.SetOnline(context.Background(), "10.9.9.9", "stranger") // not a configured node's address
	res, err := w.r.Resolve(context.Background(), announcement.Event{ID: "all", Kind: announcement.KindAllOnline, Template: "x"})
	if err != nil || res.Outcome != audience.Delivered {
		t.Fatal(res, err)
	}
	got := w.sink.Recipients()
	slices.Sort(want1)
	slices.Sort(want2)
	g1, g2 := slices.Sorted(slices.Values(got["node1"])), slices.Sorted(slices.Values(got["node2"]))
	if !slices.Equal(g1, want1) || !slices.Equal(g2, want2) {
		t.Fatalf("node1 %v\nnode2 %v", g1, g2)
	}
	if res.Audience != len(want1)+len(want2) {
		t.Fatalf("audience %d", res.Audience)
	}
}

func TestAllOnlineWithoutScanIsRejected(t *testing.T) {
	w := newWorld(t, nil)
	w.presence.NoScan = true
	res, err := w.r.Resolve(context.Background(), announcement.Event{ID: "all", Kind: announcement.KindAllOnline, Template: "x"})
	if err != nil || res.Outcome != audience.Rejected || res.Reason != audience.ReasonScanUnsupported {
		t.Fatal(res, err)
	}
}

func TestUsersListDeliversOfflineToo(t *testing.T) {
	w := newWorld(t, nil)
	ctx := context.Background()
	_ = w.presence.SetOnline(ctx, "10.0.0.2", "bob")
	users := append([]string{"bob", "", "carol@other/res"}, audiencetest.Names("x", 30)...)
	res, err := w.r.Resolve(ctx, announcement.Event{ID: "u", Kind: announcement.KindUsers, Usernames: users, Template: "x", Persist: true})
	if err != nil || res.Outcome != audience.Delivered {
		t.Fatal(res, err)
	}
	got := w.sink.Recipients()
	all := append(slices.Clone(got["node1"]), got["node2"]...)
	if len(all) != len(users)-1 { // the empty one is skipped
		t.Fatalf("%d recipients, want %d", len(all), len(users)-1)
	}
	if !slices.Contains(got["node2"], "bob") {
		t.Fatalf("bob not routed by presence to node2: %v", got)
	}
	if !slices.Contains(all, "carol@other/res") {
		t.Fatalf("JID-like username not carried as is")
	}
	for _, b := range w.sink.Batches {
		if !b.Persist {
			t.Fatal("persist flag lost")
		}
	}
	// Hash routing is stable: the same list routes the same way.
	w2 := newWorld(t, nil)
	_ = w2.presence.SetOnline(ctx, "10.0.0.2", "bob")
	if _, err := w2.r.Resolve(ctx, announcement.Event{ID: "u", Kind: announcement.KindUsers, Usernames: users, Template: "x"}); err != nil {
		t.Fatal(err)
	}
	if g2 := w2.sink.Recipients(); !slices.Equal(g2["node1"], got["node1"]) {
		t.Fatal("hash routing differs between runs")
	}
}

// Users-list recipients arrive as usernames or JIDs; presence is keyed by
// username: a JID of the users' domain (with a resource, too) is looked up
// by its local part, one of another domain is not looked up at all.
func TestUsersListLooksUpPresenceByUsername(t *testing.T) {
	w := newWorld(t, func(c *audience.Config) { c.UserDomain = "localhost" })
	ctx := context.Background()
	_ = w.presence.SetOnline(ctx, "10.0.0.2", "dave", "erin")
	_ = w.presence.SetOnline(ctx, "10.0.0.1", "frank")
	users := []string{"dave@localhost/phone", "erin", "frank@LocalHost/tab"}
	if _, err := w.r.Resolve(ctx, announcement.Event{ID: "u", Kind: announcement.KindUsers, Usernames: users, Template: "x"}); err != nil {
		t.Fatal(err)
	}
	got := w.sink.Recipients()
	if !slices.Equal(got["node2"], []string{"dave@localhost/phone", "erin"}) || !slices.Equal(got["node1"], []string{"frank@LocalHost/tab"}) {
		t.Fatalf("routed %v; want dave and erin on node2 and frank on node1, as given", got)
	}
	var asked []string
	w.presence.Fail = func(op string) error { asked = append(asked, op); return nil }
	res, err := w.r.Resolve(ctx, announcement.Event{ID: "v", Kind: announcement.KindUsers, Usernames: []string{"zed@other.example"}, Template: "x"})
	if err != nil || res.Recipients != 1 {
		t.Fatal(res, err)
	}
	if len(asked) != 0 {
		t.Fatalf("presence asked %v for a JID of another domain", asked)
	}
}

func TestUsersListWithoutPresenceRouting(t *testing.T) {
	w := newWorld(t, func(c *audience.Config) { c.RouteUsers = false })
	var lookups atomic.Int32
	w.presence.Fail = func(op string) error { lookups.Add(1); return nil }
	res, err := w.r.Resolve(context.Background(), announcement.Event{ID: "u", Kind: announcement.KindUsers, Usernames: []string{"a", "b"}, Template: "x"})
	if err != nil || res.Recipients != 2 || lookups.Load() != 0 {
		t.Fatal(res, err, lookups.Load())
	}
}

var errDown = errors.New("connection refused")

func TestTransientFailuresAreRetriedNotTreatedAsOffline(t *testing.T) {
	for _, op := range []string{"channel", "starts", "members", "lookup", "batches", "tasks"} {
		t.Run(op, func(t *testing.T) {
			w := newWorld(t, nil)
			want1, want2 := w.seedChannel(t, 1, audience.StateAccepted, 40)
			var fails atomic.Int32
			fail := func(got string) error {
				if got == op && fails.Add(1) <= 3 {
					return errDown
				}
				return nil
			}
			w.members.Fail, w.presence.Fail, w.sink.Fail = fail, fail, fail
			ev := channelEvent(announcement.ChannelRef{ID: 1})
			if op == "tasks" {
				_ = w.members.AddMembers(context.Background(), 1, audiencetest.Names("v", 30)...)
			}
			res, err := w.r.Resolve(context.Background(), ev)
			if err != nil {
				t.Fatal(err)
			}
			if fails.Load() < 4 {
				t.Fatalf("%s failed %d times, want 3 failures then success", op, fails.Load())
			}
			if op == "tasks" {
				if res.Outcome != audience.Split || len(w.sink.Tasks) != res.Shards {
					t.Fatalf("%+v, %d tasks", res, len(w.sink.Tasks))
				}
				return
			}
			got := w.sink.Recipients()
			if !slices.Equal(got["node1"], want1) || !slices.Equal(got["node2"], want2) {
				t.Fatalf("recipients lost or changed after retries: %v", got)
			}
			dep := map[string]string{"channel": "mysql", "starts": "mysql", "members": "mysql", "lookup": "presence", "batches": "kafka"}[op]
			if v := testkit.Gathered(t, w.reg, "retries_total", dep); v != 3 {
				t.Fatalf("retries metric %v", v)
			}
		})
	}
}

func TestCancelWhileDependencyDownReturnsError(t *testing.T) {
	w := newWorld(t, nil)
	w.seedChannel(t, 1, audience.StateAccepted, 10)
	w.presence.Fail = func(string) error { return errDown }
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := w.r.Resolve(ctx, channelEvent(announcement.ChannelRef{ID: 1}))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the context's", err)
	}
	if len(w.sink.Batches) != 0 {
		t.Fatal("batches written although presence never answered")
	}
}

func TestBatchWritesAreBoundedInFlight(t *testing.T) {
	w := newWorld(t, func(c *audience.Config) { c.MaxInFlight = 2; c.ShardSize = 1000 })
	w.seedChannel(t, 1, audience.StateAccepted, 300) // 200 online → 20 batches over ~43 pages
	w.sink.Block = make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1}))
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for w.sink.InFlight() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	// Reading goes on only while fewer than MaxInFlight writes are pending: give a
	// third write every chance to start before checking that none did.
	time.Sleep(50 * time.Millisecond)
	if n := w.sink.InFlight(); n != 2 {
		t.Fatalf("%d writes in flight, want 2", n)
	}
	close(w.sink.Block)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if w.sink.MaxInFlight != 2 {
		t.Fatalf("max in flight %d, want 2", w.sink.MaxInFlight)
	}
	if got := w.sink.Recipients(); len(got["node1"])+len(got["node2"]) != 200 {
		t.Fatal("recipients lost")
	}
}

func TestBatchesAreCutBeforeTheyOutgrowAKafkaMessage(t *testing.T) {
	const limit = 2048
	w := newWorld(t, func(c *audience.Config) { c.BatchSize = 1000; c.ShardSize = 1000; c.MaxBatchBytes = limit })
	ctx := context.Background()
	long := make([]string, 200)
	for i := range long {
		long[i] = fmt.Sprintf("user-with-a-rather-long-name-<&>-%03d", i) // escaped by JSON: counts more
	}
	ev := announcement.Event{ID: "big", Kind: announcement.KindUsers, Usernames: long, Persist: true,
		Template: "<message to='%s'><body>" + strings.Repeat("&lt;x&gt; ", 40) + "</body></message>"}
	_ = w.presence.SetOnline(ctx, "10.0.0.1", long...)
	res, err := w.r.Resolve(ctx, ev)
	if err != nil || res.Recipients != 200 {
		t.Fatal(res, err)
	}
	if len(w.sink.Batches) < 5 {
		t.Fatalf("%d batches: the byte limit did not cut them", len(w.sink.Batches))
	}
	for _, b := range w.sink.Batches {
		v, err := b.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if len(v)+len(b.Key()) > limit {
			t.Fatalf("batch of %d bytes > %d", len(v)+len(b.Key()), limit)
		}
	}
}

func TestConfigRejectsAddressOnTwoNodes(t *testing.T) {
	_, err := audience.New(audience.Config{
		Nodes:     []audience.Node{{Name: "a", PresenceAddresses: []string{"x"}}, {Name: "b", PresenceAddresses: []string{"x"}}},
		BatchSize: 1, ShardSize: 1, PageSize: 1,
	}, nil, nil, nil, nil, zerolog.Nop(), prometheus.NewRegistry())
	if err == nil {
		t.Fatal("accepted")
	}
}

// templateRules is a Templates that refuses templates without "to=".
type templateRules struct{ checked atomic.Int32 }

func (c *templateRules) Get(_, raw string) (*stanza.Template, error) {
	c.checked.Add(1)
	if !strings.Contains(raw, "to=") {
		return nil, errors.New("component mode: the root element needs a to attribute")
	}
	return nil, nil
}

// A template that breaks the rules is a bad record: nothing is resolved, the
// consumer dead-letters it.
func TestBadTemplateIsABadRecord(t *testing.T) {
	rules := &templateRules{}
	w := newWorld(t, func(c *audience.Config) { c.Templates = rules })
	w.seedChannel(t, 1, audience.StateAccepted, 10)
	ev := channelEvent(announcement.ChannelRef{ID: 1})
	ev.Template = "<message from='announcer.localhost'/>"
	_, err := w.r.Resolve(context.Background(), ev)
	var bad *announcement.BadRecordError
	if !errors.As(err, &bad) || bad.Label != "template" || !strings.Contains(bad.Reason, "to attribute") {
		t.Fatalf("err = %v, want a BadRecordError about the template", err)
	}
	if n := len(w.sink.Recipients()); n != 0 {
		t.Fatalf("batches written for a bad template: %v", w.sink.Recipients())
	}
	if _, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1})); err != nil {
		t.Fatal(err)
	}
	if rules.checked.Load() != 2 {
		t.Fatalf("templates checked %d times, want once per event", rules.checked.Load())
	}
}

// A "permanent" failure that cures itself within seconds (a failover to a
// replica whose grants lag, a table swapped under us) is waited out: the
// announcement is delivered, not dead-lettered after a few quick tries.
func TestPermanentFailureThatPassesIsRetried(t *testing.T) {
	for _, op := range []string{"starts", "members"} {
		t.Run(op, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, nil) // the default budget
			want1, want2 := w.seedChannel(t, 1, audience.StateAccepted, 40)
			until := time.Now().Add(1500 * time.Millisecond)
			var tries atomic.Int32
			w.members.Fail = func(got string) error {
				if got == op && time.Now().Before(until) {
					tries.Add(1)
					return fmt.Errorf("%w: Error 1142: SELECT command denied to user 'announcer'", audience.ErrPermanent)
				}
				return nil
			}
			res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1}))
			if err != nil || res.Outcome != audience.Delivered {
				t.Fatalf("%+v %v, want delivered once the grants are back", res, err)
			}
			if tries.Load() < 2 {
				t.Fatalf("%s failed %d times: the test did not exercise a retry", op, tries.Load())
			}
			got := w.sink.Recipients()
			if !slices.Equal(got["node1"], want1) || !slices.Equal(got["node2"], want2) {
				t.Fatalf("recipients %v", got)
			}
		})
	}
}

// A permanent failure that lasts past PermanentRetryFor ends the announcement
// as a bad record, instead of holding its partition (and every announcement
// behind it) forever; until then, the end of the task's ctx (a shutdown)
// stops it without a dead letter.
func TestPermanentFailureIsABadRecordAfterItsBudget(t *testing.T) {
	const budget = 300 * time.Millisecond
	w := newWorld(t, func(c *audience.Config) { c.PermanentRetryFor = budget })
	w.seedChannel(t, 1, audience.StateAccepted, 10)
	var tries atomic.Int32
	w.members.Fail = func(op string) error {
		if op == "members" {
			tries.Add(1)
			return fmt.Errorf("%w: Error 1146: Table 'announcer.ws_channel_members' doesn't exist", audience.ErrPermanent)
		}
		return nil
	}
	start := time.Now()
	_, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1}))
	var bad *announcement.BadRecordError
	if !errors.As(err, &bad) || bad.Label != "permanent" || !strings.Contains(bad.Reason, "doesn't exist") {
		t.Fatalf("err = %v, want a permanent BadRecordError", err)
	}
	if d := time.Since(start); d < budget || d > budget+5*time.Second {
		t.Fatalf("gave up after %s, want the budget of %s (and one backoff step)", d, budget)
	}
	if n := tries.Load(); n < 3 {
		t.Fatalf("tried %d times in %s", n, budget)
	}

	rec := newRecorder()
	w = newWorld(t, func(c *audience.Config) { c.Progress = rec }) // the default budget
	w.seedChannel(t, 1, audience.StateAccepted, 10)
	w.members.Fail = func(op string) error {
		if op == "members" {
			return fmt.Errorf("%w: Error 1146: Table 'announcer.ws_channel_members' doesn't exist", audience.ErrPermanent)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := w.r.Resolve(ctx, channelEvent(announcement.ChannelRef{ID: 1})); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's: a shutdown dead-letters nothing", err)
	}
	if len(rec.finish) != 0 {
		t.Fatalf("finished %v although the task only stopped", rec.finish)
	}
}

// A write of which Kafka acknowledged only some batches: only the others are
// written again, so a partial failure duplicates nothing.
func TestPartialWriteRewritesOnlyWhatFailed(t *testing.T) {
	w := newWorld(t, nil)
	w.seedChannel(t, 1, audience.StateAccepted, 40) // one shard; its last write carries both nodes' batches
	var once atomic.Bool
	w.sink.Partial = func(batches []announcement.Batch) []int {
		if len(batches) > 1 && once.CompareAndSwap(false, true) {
			return []int{1} // the second batch of the first multi-batch write is not acknowledged
		}
		return nil
	}
	res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1}))
	if err != nil || res.Outcome != audience.Delivered {
		t.Fatal(res, err)
	}
	if !once.Load() {
		t.Fatal("no write carried several batches: the test did not exercise a partial failure")
	}
	seen := map[string]int{}
	for _, b := range w.sink.Batches {
		seen[string(b.Key())]++
	}
	if len(seen) != res.Batches {
		t.Fatalf("%d distinct batches stored, %d made", len(seen), res.Batches)
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("batch %s stored %d times", k, n)
		}
	}
}
