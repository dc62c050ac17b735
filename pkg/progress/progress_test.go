package progress

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/redisconn"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/pkg/testkit/tcpproxy"
)

// fixture is a store on its own key prefix and a running tracker.
type fixture struct {
	store   *Store
	tracker *Tracker
	reg     *prometheus.Registry
}

func newFixture(t *testing.T, addr string, cluster bool) *fixture {
	t.Helper()
	conn, err := redisconn.New("progress test", redisconn.Options{Addrs: []string{addr}, Cluster: cluster, Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	store := NewStore(conn, Options{Prefix: "test:" + hex.EncodeToString(b) + ":", TTL: time.Hour, IdempotencyWindow: time.Minute})
	reg := prometheus.NewRegistry()
	tr := NewTracker(store, TrackerOptions{CancelCheck: 100 * time.Millisecond}, testkit.Log(t, zerolog.WarnLevel), reg)
	testkit.Background(t, "tracker", tr.Run)
	return &fixture{store: store, tracker: tr, reg: reg}
}

// newProxiedFixture is a fixture that reaches Redis through a proxy, so
// that the test can take Redis away (cutRedis) and give it back
// (proxy.Set(tcpproxy.Forward)).
func newProxiedFixture(t *testing.T) (*fixture, *tcpproxy.Proxy) {
	t.Helper()
	env := stacktest.Get(t)
	proxy := tcpproxy.New(t, env.RedisAddr, tcpproxy.Forward)
	return newFixture(t, proxy.Addr(), false), proxy
}

// cutRedis makes Redis unreachable: new connections are refused and the
// open ones are closed.
func cutRedis(proxy *tcpproxy.Proxy) {
	proxy.Set(tcpproxy.Refuse)
	proxy.KillAll()
}

// begin begins ev and plans it as one shard, as fanout does before its batches.
func (f *fixture) begin(t *testing.T, ev *announcement.Event) {
	t.Helper()
	ctx := context.Background()
	if _, _, err := f.store.Begin(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Plan(ctx, ev.ID, 1, false); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) get(t *testing.T, id string) Announcement {
	t.Helper()
	a, err := f.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// until polls the announcement until ok holds.
func (f *fixture) until(t *testing.T, id, what string, ok func(Announcement) bool) Announcement {
	t.Helper()
	var a Announcement
	testkit.Eventually(t, 5*time.Second, what, func() bool {
		var err error
		a, err = f.store.Get(context.Background(), id)
		return err == nil && ok(a)
	})
	return a
}

func event(id string, kind announcement.Kind) *announcement.Event {
	ev := &announcement.Event{ID: id, Kind: kind, Template: "<message to='%s'/>", Source: "rest",
		CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	if kind == announcement.KindChannel {
		ev.Channel = &announcement.ChannelRef{ID: 7}
	}
	return ev
}

func shardTask(ev *announcement.Event, i, n int) *announcement.Event {
	s := *ev
	s.Kind = announcement.KindShard
	s.Shard = &announcement.Shard{ChannelID: 7, Index: i, Count: n}
	return &s
}

func batch(id string, shard, seq int, recipients ...string) *announcement.Batch {
	return &announcement.Batch{AnnouncementID: id, Shard: shard, Seq: seq, Recipients: recipients}
}

// whole fences a batch in one step.
func whole(b *announcement.Batch) Step {
	return Step{Batch: BatchKey(b), Pos: len(b.Recipients), Len: len(b.Recipients), Confirmed: len(b.Recipients),
		Written: len(b.Recipients), Digest: Digest(b)}
}

// A channel in three shards goes accepted → resolving → sending → done, and
// done waits for the last shard and the last batch. Replays of every update
// (a redelivered task, a resent batch) count once.
func TestShardedChannelLifecycle(t *testing.T) {
	env := stacktest.Get(t)
	f := newFixture(t, env.RedisAddr, false)
	ctx := context.Background()
	ev := event("sharded", announcement.KindChannel)
	if err := f.store.Accept(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if a := f.get(t, ev.ID); a.State != StateAccepted || a.Kind != "channel" || string(a.ChannelID) != "7" || a.Times.Accepted == nil {
		t.Fatalf("after accept: %+v", a)
	}
	state, finished, err := f.store.Begin(ctx, ev)
	if err != nil || state != StateResolving || finished {
		t.Fatalf("begin: %q %v %v", state, finished, err)
	}
	if err := f.store.Plan(ctx, ev.ID, 3, true); err != nil {
		t.Fatal(err)
	}
	// A copy of the top-level event finds the split done.
	if _, finished, _ := f.store.Begin(ctx, ev); !finished {
		t.Fatal("a copy of a split event is not recognised")
	}
	batches := map[int][]*announcement.Batch{}
	for i := range 3 {
		task := shardTask(ev, i, 3)
		if _, finished, err := f.store.Begin(ctx, task); err != nil || finished {
			t.Fatalf("shard %d: %v %v", i, finished, err)
		}
		for seq := range 2 {
			batches[i] = append(batches[i], batch(ev.ID, i, seq, fmt.Sprintf("u%d-%d-a", i, seq), fmt.Sprintf("u%d-%d-b", i, seq)))
		}
		f.tracker.Emitted(ev.ID, i, 1)
		f.tracker.Emitted(ev.ID, i, 2)
		f.tracker.Emitted(ev.ID, i, 1) // late, out of order: a maximum
	}
	counts := ShardCounts{Members: 10, Online: 4, Recipients: 4, Batches: 2, PerNode: map[string]int{"node1": 3, "node2": 1}}
	f.tracker.ShardDone(ev.ID, 0, counts)
	f.tracker.ShardDone(ev.ID, 1, counts)
	f.tracker.ShardDone(ev.ID, 1, counts) // a redelivered shard task
	a := f.until(t, ev.ID, "two shards counted", func(a Announcement) bool { return a.Shards.Done == 2 })
	if a.State != StateSending || a.Audience.Members != 20 || a.Audience.Recipients != 8 || a.Batches.Emitted != 6 || a.Times.Resolved != nil {
		t.Fatalf("after two shards: %+v", a)
	}
	if _, finished, _ := f.store.Begin(ctx, shardTask(ev, 1, 3)); !finished {
		t.Fatal("a copy of a finished shard task is not recognised")
	}

	for i := range 3 {
		for _, b := range batches[i] {
			f.tracker.Fenced(ev.ID, whole(b))
			f.tracker.Fenced(ev.ID, whole(b)) // a redelivered batch
		}
	}
	f.tracker.Resent(ev.ID, 2)
	a = f.until(t, ev.ID, "every batch fenced", func(a Announcement) bool { return a.Batches.Done == 6 })
	if a.State != StateSending {
		t.Fatalf("done before the last shard was resolved: %+v", a)
	}
	f.tracker.ShardDone(ev.ID, 2, counts)
	a = f.until(t, ev.ID, "done", func(a Announcement) bool { return a.State == StateDone })
	want := Audience{Members: 30, Online: 12, Recipients: 12, PerNode: map[string]int64{"node1": 9, "node2": 3}}
	if fmt.Sprint(a.Audience) != fmt.Sprint(want) || a.Batches != (Batches{Planned: 6, Emitted: 6, Done: 6, Resent: 1}) ||
		a.Stanzas.Confirmed != 12 || a.Stanzas.Sent != 26 || a.Shards != (Shards{Total: 3, Done: 3}) {
		t.Fatalf("final: %+v", a)
	}
	for name, tm := range map[string]*time.Time{"accepted": a.Times.Accepted, "resolving": a.Times.Resolving,
		"sending": a.Times.Sending, "resolved": a.Times.Resolved, "done": a.Times.Done} {
		if tm == nil {
			t.Errorf("no %s time", name)
		}
	}
	if a.Times.Done.Before(*a.Times.Accepted) {
		t.Errorf("done %v before accepted %v", a.Times.Done, a.Times.Accepted)
	}
}

// A slow batch fenced in steps: confirmed grows step by step, a replayed
// step counts once, and Position says where a restart resumes — only for
// the same recipients.
// The first cut of a channel recorded for an announcement is the one every
// later resolution gets back; without a record there is nothing to keep.
func TestSplitKeepsTheFirstCut(t *testing.T) {
	env := stacktest.Get(t)
	f := newFixture(t, env.RedisAddr, false)
	ctx := context.Background()
	ev := event("cut", announcement.KindChannel)
	first, second := SplitPlan{Starts: []int64{1, 45, 89, 133}}, SplitPlan{Starts: []int64{1, 43, 85, 127, 169, 211}}
	if _, err := f.store.Split(ctx, ev.ID, first); !errors.Is(err, ErrNotFound) {
		t.Fatalf("split without a record: %v, want ErrNotFound", err)
	}
	if err := f.store.Accept(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if got, err := f.store.Split(ctx, ev.ID, first); err != nil || !got.Equal(first) {
		t.Fatalf("first split: %v %v", got, err)
	}
	if got, err := f.store.Split(ctx, ev.ID, second); err != nil || !got.Equal(first) {
		t.Fatalf("second split: %v %v, want the first %v", got, err, first)
	}
	for _, bad := range []string{"1:0:3", "1:5:0", "1:x:2", "", "5,3", "1,,2", "1:9223372036854775807:3"} {
		if p, err := ParseSplitPlan(bad); err == nil {
			t.Errorf("%q parsed as %v", bad, p)
		}
	}
	// The equal-width cuts earlier versions recorded read as their starts.
	if p, err := ParseSplitPlan("1:44:4"); err != nil || !p.Equal(first) {
		t.Fatalf("from:width:shards: %v %v, want %v", p, err, first)
	}
	if p, err := ParseSplitPlan("-5:10:3"); err != nil || !p.Equal(SplitPlan{Starts: []int64{-5, 5, 15}}) {
		t.Fatalf("from:width:shards from a negative id: %v %v", p, err)
	}
}

func TestStepsAndResumePosition(t *testing.T) {
	env := stacktest.Get(t)
	f := newFixture(t, env.RedisAddr, false)
	ctx := context.Background()
	ev := event("steps", announcement.KindUsers)
	f.begin(t, ev)
	b := batch(ev.ID, 0, 0, "a", "b", "c", "d", "e")
	key, digest := BatchKey(b), Digest(b)
	f.tracker.ShardDone(ev.ID, 0, ShardCounts{Members: 5, Recipients: 5, Batches: 1})
	f.tracker.Fenced(ev.ID, Step{Batch: key, Pos: 2, Len: 5, Confirmed: 2, Written: 2, Digest: digest})
	f.tracker.Fenced(ev.ID, Step{Batch: key, Pos: 2, Len: 5, Confirmed: 2, Written: 0, Digest: digest}) // replayed
	f.until(t, ev.ID, "the first step", func(a Announcement) bool { return a.Stanzas.Confirmed == 2 })
	if pos, err := f.store.Position(ctx, ev.ID, key, digest); err != nil || pos != 2 {
		t.Fatalf("position %d, %v; want 2", pos, err)
	}
	if pos, _ := f.store.Position(ctx, ev.ID, key, Digest(batch(ev.ID, 0, 0, "other", "b", "c", "d", "e"))); pos != 0 {
		t.Fatalf("position %d for other recipients under the same key; want 0", pos)
	}
	f.tracker.Fenced(ev.ID, Step{Batch: key, Pos: 5, Len: 5, Confirmed: 2, Invalid: 1, Written: 3, Digest: digest})
	a := f.until(t, ev.ID, "done", func(a Announcement) bool { return a.State == StateDone })
	if a.Stanzas.Confirmed != 4 || a.Stanzas.Invalid != 1 || a.Batches.Done != 1 {
		t.Fatalf("final: %+v", a.Stanzas)
	}
}

// Two replicas sending one batch at once (a rebalance hands it over while
// its old owner still sends) fence overlapping steps: each step counts only
// what it adds past the recorded position, so confirmed never passes the
// recipients.
func TestOverlappingStepsCountOnce(t *testing.T) {
	env := stacktest.Get(t)
	f := newFixture(t, env.RedisAddr, false)
	ev := event("overlap", announcement.KindUsers)
	f.begin(t, ev)
	b := batch(ev.ID, 0, 0, "a", "b", "c", "d", "e", "f", "g")
	key, digest := BatchKey(b), Digest(b)
	f.tracker.ShardDone(ev.ID, 0, ShardCounts{Members: 7, Recipients: 7, Batches: 1})
	// The old owner fences 0→3 and 3→6; the new one started at 3 and fences 3→7.
	f.tracker.Fenced(ev.ID, Step{Batch: key, From: 0, Pos: 3, Len: 7, Confirmed: 3, Written: 3, Digest: digest})
	f.tracker.Fenced(ev.ID, Step{Batch: key, From: 3, Pos: 6, Len: 7, Confirmed: 3, Written: 3, Digest: digest})
	f.tracker.Fenced(ev.ID, Step{Batch: key, From: 3, Pos: 7, Len: 7, Confirmed: 3, Invalid: 1, Written: 3, Digest: digest})
	a := f.until(t, ev.ID, "done", func(a Announcement) bool { return a.State == StateDone })
	if got := a.Stanzas.Confirmed + a.Stanzas.Invalid; got != 7 || a.Stanzas.Confirmed > 7 {
		t.Fatalf("stanzas %+v: confirmed and invalid add up to %d; want the 7 recipients", a.Stanzas, got)
	}
	if a.Stanzas.Sent != 9 {
		t.Fatalf("sent %d; want 9 (every write counts)", a.Stanzas.Sent)
	}
}

// A batch key ends once even when two copies of it differ: a shard resolved
// again after a crash (presence changed between the runs) numbers its
// batches from 0 again, so one key can be fenced with other recipients.
// Counting each copy would end the announcement before its other batches.
func TestTwoCopiesOfABatchEndItOnce(t *testing.T) {
	env := stacktest.Get(t)
	f := newFixture(t, env.RedisAddr, false)
	ev := event("copies", announcement.KindAllOnline)
	f.begin(t, ev)
	f.tracker.ShardDone(ev.ID, 0, ShardCounts{Members: 4, Online: 4, Recipients: 4, Batches: 2})
	first, redo := batch(ev.ID, 0, 0, "a", "b"), batch(ev.ID, 0, 0, "a", "c")
	key := BatchKey(first)
	f.tracker.Fenced(ev.ID, whole(first))
	f.tracker.Fenced(ev.ID, whole(redo))
	// Fast batches carry no digest ("-"): copies of other lengths match.
	f.tracker.Fenced(ev.ID, Step{Batch: key, Pos: 3, Len: 3, Confirmed: 3, Written: 3, Digest: "-"})
	f.tracker.Fenced(ev.ID, Step{Batch: key, Pos: 4, Len: 4, Confirmed: 1, Written: 4, Digest: "-"})
	f.tracker.Dead(ev.ID, key, 2)
	f.tracker.Fenced(ev.ID, Step{Batch: key, Pos: 1, Len: 1, Confirmed: 1, Written: 1, Digest: "-"})
	a := f.until(t, ev.ID, "the copies counted", func(a Announcement) bool { return a.Stanzas.Sent == 12 })
	if a.State == StateDone || a.Batches.Done != 1 {
		t.Fatalf("one of two batches ended (in copies): state %s, batches %+v", a.State, a.Batches)
	}
	if pos, err := f.store.Position(context.Background(), ev.ID, key, "-"); err != nil || pos != 4 {
		t.Fatalf("position %d, %v; want 4 (the last copy fenced)", pos, err)
	}
	f.tracker.Fenced(ev.ID, whole(batch(ev.ID, 0, 1, "e", "f")))
	a = f.until(t, ev.ID, "done", func(a Announcement) bool { return a.State == StateDone })
	if a.Batches.Done != 2 {
		t.Fatalf("batches %+v; want 2 done", a.Batches)
	}
}

// A dead-lettered batch ends what it had not fenced as dead-lettered, once,
// and counts as done.
func TestDeadLetteredBatchCountsAsDone(t *testing.T) {
	env := stacktest.Get(t)
	f := newFixture(t, env.RedisAddr, false)
	ev := event("dead", announcement.KindAllOnline)
	f.begin(t, ev)
	good, bad := batch(ev.ID, 0, 0, "a", "b"), batch(ev.ID, 0, 1, "c", "d", "e")
	f.tracker.ShardDone(ev.ID, 0, ShardCounts{Members: 5, Online: 5, Recipients: 5, Batches: 2})
	f.tracker.Fenced(ev.ID, whole(good))
	f.tracker.Fenced(ev.ID, Step{Batch: BatchKey(bad), Pos: 1, Len: 3, Confirmed: 1, Written: 1, Digest: Digest(bad)})
	f.tracker.Dead(ev.ID, BatchKey(bad), 3)
	f.tracker.Dead(ev.ID, BatchKey(bad), 3)
	f.tracker.Persisted(ev.ID, BatchKey(good), 2)
	f.tracker.Persisted(ev.ID, BatchKey(good), 2)
	a := f.until(t, ev.ID, "done", func(a Announcement) bool { return a.State == StateDone })
	if a.Stanzas != (Stanzas{Sent: 3, Confirmed: 3, DeadLettered: 2, Persisted: 2}) || a.Batches.Done != 2 {
		t.Fatalf("final: %+v %+v", a.Stanzas, a.Batches)
	}
}

// A copy dead-lettered while another copy of its key is half fenced ends
// the key, once: the other copy's position is not this one's.
func TestADeadCopyEndsItsKeyOnce(t *testing.T) {
	env := stacktest.Get(t)
	f := newFixture(t, env.RedisAddr, false)
	ev := event("dead-copy", announcement.KindAllOnline)
	f.begin(t, ev)
	f.tracker.ShardDone(ev.ID, 0, ShardCounts{Members: 9, Online: 9, Recipients: 9, Batches: 2})
	key := BatchKey(batch(ev.ID, 0, 0))
	f.tracker.Fenced(ev.ID, Step{Batch: key, Pos: 50, Len: 100, Confirmed: 50, Written: 50, Digest: "a"})
	f.tracker.Dead(ev.ID, key, 40)
	f.tracker.Fenced(ev.ID, Step{Batch: key, Pos: 100, Len: 100, Confirmed: 50, Written: 50, Digest: "a"})
	a := f.until(t, ev.ID, "the copies counted", func(a Announcement) bool { return a.Stanzas.Sent == 100 })
	if a.Batches.Done != 1 || a.State == StateDone {
		t.Fatalf("state %s, batches %+v: want the key ended once, the other batch still out", a.State, a.Batches)
	}
	f.tracker.Fenced(ev.ID, whole(batch(ev.ID, 0, 1, "e", "f")))
	f.until(t, ev.ID, "done", func(a Announcement) bool { return a.State == StateDone && a.Batches.Done == 2 })
}

// A status read leaves the per-batch markers in Redis: a large announcement
// holds tens of thousands, and every poll and list would carry them.
func TestReadsLeaveTheBatchMarkers(t *testing.T) {
	env := stacktest.Get(t)
	f := newFixture(t, env.RedisAddr, false)
	ctx := context.Background()
	ev := event("large", announcement.KindAllOnline)
	f.begin(t, ev)
	const batches = 20000
	f.tracker.ShardDone(ev.ID, 0, ShardCounts{Members: 9, Online: 9, Recipients: 9, Batches: batches,
		PerNode: map[string]int{"node1": 5, "node2": 4}})
	f.until(t, ev.ID, "resolved", func(a Announcement) bool { return a.Shards.Done == 1 })
	c, err := f.store.conn.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fields := make([]any, 0, 2*batches)
	for i := range batches {
		fields = append(fields, fmt.Sprintf("b:0/%d", i), "!1:-")
	}
	if err := c.HSet(ctx, f.store.key(ev.ID), fields...).Err(); err != nil {
		t.Fatal(err)
	}
	h, err := pairs(scriptSummary.Run(ctx, c, []string{f.store.key(ev.ID)}))
	if err != nil || len(h) > 50 {
		t.Fatalf("a read returned %d fields, %v; want the record without its %d markers", len(h), err, batches)
	}
	a := f.get(t, ev.ID)
	listed, err := f.store.List(ctx, "", 10)
	if err != nil || len(listed) != 1 {
		t.Fatalf("listed %d, %v", len(listed), err)
	}
	for _, got := range []Announcement{a, listed[0]} {
		if got.Batches.Planned != batches || got.Audience.PerNode["node1"] != 5 || got.Audience.PerNode["node2"] != 4 || got.State != StateSending {
			t.Fatalf("read %+v %+v (%s)", got.Batches, got.Audience, got.State)
		}
	}
}

// Cancel: unknown is ErrNotFound, a running announcement becomes cancelled
// (and stays so whatever comes later), an ended one keeps its state; the
// tracker's cached check sees the cancel within CancelCheck.
func TestCancel(t *testing.T) {
	env := stacktest.Get(t)
	f := newFixture(t, env.RedisAddr, false)
	ctx := context.Background()
	if _, err := f.store.Cancel(ctx, "nobody", "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancel of an unknown id: %v", err)
	}
	ev := event("to-cancel", announcement.KindChannel)
	if err := f.store.Accept(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if f.tracker.Cancelled(ctx, ev.ID) {
		t.Fatal("cancelled before the cancel")
	}
	if st, err := f.store.Cancel(ctx, ev.ID, "cancelled by request"); err != nil || st != StateCancelled {
		t.Fatalf("cancel: %q %v", st, err)
	}
	testkit.Eventually(t, time.Second, "the cached check to see the cancel", func() bool { return f.tracker.Cancelled(ctx, ev.ID) })
	if st, _, _ := f.store.Begin(ctx, ev); st != StateCancelled {
		t.Fatalf("begin after a cancel: state %q", st)
	}
	if err := f.store.Plan(ctx, ev.ID, 1, false); err != nil {
		t.Fatal(err)
	}
	f.tracker.ShardDone(ev.ID, 0, ShardCounts{Members: 1, Recipients: 1, Batches: 1})
	f.tracker.Fenced(ev.ID, whole(batch(ev.ID, 0, 0, "a")))
	a := f.until(t, ev.ID, "the late fence counted", func(a Announcement) bool { return a.Stanzas.Confirmed == 1 })
	if a.State != StateCancelled || a.Reason != "cancelled by request" || a.Times.Cancelled == nil {
		t.Fatalf("after a cancel: %+v", a)
	}
	if st, _ := f.store.Cancel(ctx, ev.ID, "again"); st != StateCancelled {
		t.Fatalf("second cancel: %q", st)
	}

	done := event("finished", announcement.KindUsers)
	if _, _, err := f.store.Begin(ctx, done); err != nil {
		t.Fatal(err)
	}
	_ = f.store.Plan(ctx, done.ID, 1, false)
	f.tracker.Finish(done.ID, StateRejected, "channel_not_accepted")
	f.until(t, done.ID, "rejected", func(a Announcement) bool { return a.State == StateRejected })
	if st, err := f.store.Cancel(ctx, done.ID, "x"); err != nil || st != StateRejected {
		t.Fatalf("cancel of a rejected one: %q %v", st, err)
	}
}

// A failed shard ends its announcement failed only once the rest is done:
// its emitted batches still count, the other shards go on, and a cancel
// still stops it meanwhile. Without a plan (nothing emitted) it is failed at once.
func TestAFailedShardFailsTheAnnouncementAtTheEnd(t *testing.T) {
	env := stacktest.Get(t)
	f := newFixture(t, env.RedisAddr, false)
	ctx := context.Background()
	ev := event("shard-failed", announcement.KindChannel)
	if _, _, err := f.store.Begin(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Plan(ctx, ev.ID, 3, true); err != nil {
		t.Fatal(err)
	}
	b0, b1, b2 := batch(ev.ID, 0, 0, "a"), batch(ev.ID, 1, 0, "b"), batch(ev.ID, 2, 0, "c")
	f.tracker.ShardDone(ev.ID, 0, ShardCounts{Members: 1, Recipients: 1, Batches: 1})
	f.tracker.Emitted(ev.ID, 1, 1) // shard 1 emitted a batch, then failed
	f.tracker.ShardFailed(ev.ID, 1, "shard 1: permanent failure: Error 1142")
	f.tracker.ShardFailed(ev.ID, 1, "a copy")
	f.tracker.Fenced(ev.ID, whole(b0))
	a := f.until(t, ev.ID, "two shards counted", func(a Announcement) bool { return a.Shards.Done == 2 && a.Batches.Done == 1 })
	if Terminal(a.State) || a.Batches.Planned != 2 {
		t.Fatalf("after the failed shard: %+v; want it going on, its emitted batch planned", a)
	}
	f.tracker.ShardDone(ev.ID, 2, ShardCounts{Members: 1, Recipients: 1, Batches: 1})
	f.tracker.Fenced(ev.ID, whole(b2))
	a = f.until(t, ev.ID, "all shards", func(a Announcement) bool { return a.Shards.Done == 3 && a.Batches.Done == 2 })
	if Terminal(a.State) {
		t.Fatalf("ended before the failed shard's emitted batch was fenced: %+v", a)
	}
	f.tracker.Fenced(ev.ID, whole(b1))
	a = f.until(t, ev.ID, "failed", func(a Announcement) bool { return a.State == StateFailed })
	if a.Reason != "shard 1: permanent failure: Error 1142" || a.Batches.Done != 3 || a.Times.Done == nil {
		t.Fatalf("final: %+v", a)
	}

	// Cancelled while the others go on.
	ev = event("shard-failed-cancel", announcement.KindChannel)
	_, _, _ = f.store.Begin(ctx, ev)
	_ = f.store.Plan(ctx, ev.ID, 2, true)
	f.tracker.ShardFailed(ev.ID, 0, "shard 0: x")
	f.until(t, ev.ID, "shard 0 counted", func(a Announcement) bool { return a.Shards.Done == 1 })
	if st, err := f.store.Cancel(ctx, ev.ID, "stop"); err != nil || st != StateCancelled {
		t.Fatalf("cancel after a shard failed: %q %v", st, err)
	}

	// No plan: nothing was emitted.
	ev = event("failed-early", announcement.KindChannel)
	_, _, _ = f.store.Begin(ctx, ev)
	f.tracker.ShardFailed(ev.ID, 0, "lookup: x")
	a = f.until(t, ev.ID, "failed", func(a Announcement) bool { return a.State == StateFailed })
	if a.Reason != "lookup: x" {
		t.Fatalf("early failure: %+v", a)
	}
}

// List is newest first, filters by state and honours the limit.
func TestList(t *testing.T) {
	env := stacktest.Get(t)
	f := newFixture(t, env.RedisAddr, false)
	ctx := context.Background()
	base := time.Now().UTC().Truncate(time.Millisecond)
	for i := range 5 {
		ev := event(fmt.Sprintf("l%d", i), announcement.KindUsers)
		ev.CreatedAt = base.Add(time.Duration(i) * time.Second)
		if err := f.store.Accept(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.store.Cancel(ctx, "l1", "x"); err != nil {
		t.Fatal(err)
	}
	all, err := f.store.List(ctx, "", 3)
	if err != nil || len(all) != 3 || all[0].ID != "l4" || all[2].ID != "l2" {
		t.Fatalf("list: %v %v", ids(all), err)
	}
	cancelled, err := f.store.List(ctx, StateCancelled, 10)
	if err != nil || len(cancelled) != 1 || cancelled[0].ID != "l1" {
		t.Fatalf("cancelled: %v %v", ids(cancelled), err)
	}

	// The ingress wrote l0's record but not its listing (Redis failed in
	// between): fanout's start lists it.
	c, err := f.store.conn.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ZRem(ctx, f.store.indexKey(), "l0").Err(); err != nil {
		t.Fatal(err)
	}
	ev := event("l0", announcement.KindUsers)
	ev.CreatedAt = base
	if _, _, err := f.store.Begin(ctx, ev); err != nil {
		t.Fatal(err)
	}
	all, err = f.store.List(ctx, "", 10)
	if err != nil || len(all) != 5 || all[4].ID != "l0" {
		t.Fatalf("after fanout began l0: %v %v; want it listed again", ids(all), err)
	}
}

func ids(as []Announcement) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.ID
	}
	return out
}

// An idempotency key maps to the first request's announcement; another
// request under the same key is a conflict.
func TestIdempotencyClaims(t *testing.T) {
	env := stacktest.Get(t)
	f := newFixture(t, env.RedisAddr, false)
	ctx := context.Background()
	first := IdempotencyClaim{Digest: "d1", ID: "id-1", CreatedAt: time.Now().UTC()}
	got, fresh, err := f.store.Claim(ctx, "rest", "k", first)
	if err != nil || !fresh || got != first {
		t.Fatalf("first claim: %+v %v %v", got, fresh, err)
	}
	got, fresh, err = f.store.Claim(ctx, "rest", "k", IdempotencyClaim{Digest: "d1", ID: "id-2", CreatedAt: time.Now()})
	if err != nil || fresh || got.ID != "id-1" || !got.CreatedAt.Equal(first.CreatedAt) {
		t.Fatalf("replayed claim: %+v %v %v", got, fresh, err)
	}
	if _, _, err := f.store.Claim(ctx, "rest", "k", IdempotencyClaim{Digest: "d2", ID: "id-3"}); !errors.Is(err, ErrKeyReused) {
		t.Fatalf("another body under the key: %v", err)
	}
	if _, fresh, err := f.store.Claim(ctx, "kafka:in", "k", IdempotencyClaim{Digest: "d2", ID: "id-4"}); err != nil || !fresh {
		t.Fatalf("the same key in another scope: %v %v", fresh, err)
	}
}

// While Redis cannot be reached, updates wait in the queue (counted as
// errors), and every one lands once it is back.
func TestTrackerWaitsOutARedisOutage(t *testing.T) {
	f, proxy := newProxiedFixture(t)
	ctx := context.Background()
	ev := event("outage", announcement.KindUsers)
	f.begin(t, ev)
	cutRedis(proxy)
	f.tracker.ShardDone(ev.ID, 0, ShardCounts{Members: 3, Recipients: 3, Batches: 3})
	for i := range 3 {
		f.tracker.Fenced(ev.ID, whole(batch(ev.ID, 0, i, fmt.Sprint("u", i))))
	}
	testkit.Eventually(t, 5*time.Second, "failed updates counted", func() bool {
		return testutil.ToFloat64(f.tracker.m.errors) > 0
	})
	if f.tracker.Cancelled(ctx, ev.ID) {
		t.Fatal("an unreachable store reads as cancelled")
	}
	proxy.Set(tcpproxy.Forward)
	a := f.until(t, ev.ID, "done after the outage", func(a Announcement) bool { return a.State == StateDone })
	if a.Stanzas.Confirmed != 3 || testutil.ToFloat64(f.tracker.m.dropped) != 0 {
		t.Fatalf("after the outage: %+v, dropped %v", a.Stanzas, testutil.ToFloat64(f.tracker.m.dropped))
	}
}

// A fanout task that starts while Redis is away goes on without the store's
// answers; its begin and shard count wait in the queue, so the record is
// created, listed and reaches done once Redis is back, whatever the order in
// which the queued updates land.
func TestBeginAndPlanDuringARedisOutage(t *testing.T) {
	f, proxy := newProxiedFixture(t)
	ctx := context.Background()
	ev := event("begin-outage", announcement.KindChannel)
	cutRedis(proxy)
	if _, _, err := f.tracker.Begin(ctx, ev); err == nil {
		t.Fatal("begin succeeded with Redis away")
	}
	if err := f.tracker.Plan(ctx, ev.ID, 1, false); err == nil {
		t.Fatal("plan succeeded with Redis away")
	}
	f.tracker.ShardDone(ev.ID, 0, ShardCounts{Members: 2, Online: 2, Recipients: 2, Batches: 1})
	f.tracker.Emitted(ev.ID, 0, 1)
	f.tracker.Fenced(ev.ID, whole(batch(ev.ID, 0, 0, "u1", "u2")))
	proxy.Set(tcpproxy.Forward)
	a := f.until(t, ev.ID, "done after the outage", func(a Announcement) bool { return a.State == StateDone })
	if a.Stanzas.Confirmed != 2 || a.Times.Resolving == nil || a.Kind != "channel" {
		t.Fatalf("after the outage: %+v", a)
	}
	list, err := f.store.List(ctx, "", 10)
	if err != nil || len(list) != 1 || list[0].ID != ev.ID {
		t.Fatalf("list after the outage: %v %+v", err, list)
	}

	// The plan may land after everything else: it completes the record itself.
	late := event("plan-last", announcement.KindUsers)
	if _, _, err := f.store.Begin(ctx, late); err != nil {
		t.Fatal(err)
	}
	f.tracker.ShardDone(late.ID, 0, ShardCounts{Members: 1, Online: 1, Recipients: 1, Batches: 1})
	f.tracker.Emitted(late.ID, 0, 1)
	f.tracker.Fenced(late.ID, whole(batch(late.ID, 0, 0, "u1")))
	testkit.Eventually(t, 5*time.Second, "the updates before the plan", func() bool {
		return f.get(t, late.ID).Stanzas.Confirmed == 1
	})
	if a := f.get(t, late.ID); a.State == StateDone {
		t.Fatalf("done without a shard count: %+v", a)
	}
	if err := f.store.Plan(ctx, late.ID, 1, false); err != nil {
		t.Fatal(err)
	}
	if a := f.get(t, late.ID); a.State != StateDone {
		t.Fatalf("a late plan left the record %s", a.State)
	}
}

// Sync returns once what was queued before it is in Redis, so a stage that
// commits after it cannot lose the record of committed work in a crash; with
// Redis failing it does not wait.
func TestSyncWaitsForQueuedUpdates(t *testing.T) {
	f, proxy := newProxiedFixture(t)
	ctx := context.Background()
	ev := event("sync", announcement.KindUsers)
	if _, _, err := f.store.Begin(ctx, ev); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		f.tracker.Fenced(ev.ID, whole(batch(ev.ID, 0, i, fmt.Sprint("u", i))))
	}
	f.tracker.Sync(ctx)
	if a := f.get(t, ev.ID); a.Stanzas.Confirmed != 50 {
		t.Fatalf("after Sync: %d confirmed, want 50", a.Stanzas.Confirmed)
	}

	cutRedis(proxy)
	f.tracker.Fenced(ev.ID, whole(batch(ev.ID, 0, 99, "late")))
	testkit.Eventually(t, 5*time.Second, "the failure seen", func() bool { return f.tracker.failing.Load() })
	start := time.Now()
	f.tracker.Sync(ctx)
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Fatalf("Sync waited %s for a failing Redis", took)
	}
	proxy.Set(tcpproxy.Forward)
	f.until(t, ev.ID, "the late update after the outage", func(a Announcement) bool { return a.Stanzas.Confirmed == 51 })
}

// Every script keeps to its record's slot: the lifecycle runs on a Redis
// Cluster, which refuses a script touching keys of two slots.
func TestOnARedisCluster(t *testing.T) {
	stacktest.Get(t)
	f := newFixture(t, stacktest.RedisCluster(t), true)
	ctx := context.Background()
	ev := event("clustered", announcement.KindChannel)
	if err := f.store.Accept(ctx, ev); err != nil {
		t.Fatal(err)
	}
	f.begin(t, ev)
	b := batch(ev.ID, 0, 0, "a", "b")
	f.tracker.Emitted(ev.ID, 0, 1)
	f.tracker.ShardDone(ev.ID, 0, ShardCounts{Members: 2, Online: 2, Recipients: 2, Batches: 1, PerNode: map[string]int{"n": 2}})
	f.tracker.Fenced(ev.ID, whole(b))
	f.tracker.Persisted(ev.ID, BatchKey(b), 2)
	f.until(t, ev.ID, "done", func(a Announcement) bool { return a.State == StateDone && a.Stanzas.Persisted == 2 })
	if l, err := f.store.List(ctx, StateDone, 5); err != nil || len(l) != 1 {
		t.Fatalf("list on a cluster: %v %v", ids(l), err)
	}
	if _, fresh, err := f.store.Claim(ctx, "rest", "k", IdempotencyClaim{Digest: "d", ID: ev.ID}); err != nil || !fresh {
		t.Fatalf("claim on a cluster: %v %v", fresh, err)
	}
}

// Without a store the tracker does nothing and never reads as cancelled.
func TestTrackerWithoutAStore(t *testing.T) {
	tr := NewTracker(nil, TrackerOptions{}, zerolog.Nop(), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	tr.Fenced("x", Step{})
	if tr.Cancelled(ctx, "x") || tr.Enabled() {
		t.Fatal("a tracker without a store reads as cancelled or enabled")
	}
	if st, finished, err := tr.Begin(ctx, event("x", announcement.KindUsers)); st != "" || finished || err != nil {
		t.Fatalf("begin without a store: %q %v %v", st, finished, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Digest tells apart recipient lists that concatenate alike.
func TestDigest(t *testing.T) {
	a, b := Digest(batch("x", 0, 0, "ab", "c")), Digest(batch("x", 0, 0, "a", "bc"))
	if a == b || a != Digest(batch("y", 1, 1, "ab", "c")) {
		t.Fatalf("digests %s %s", a, b)
	}
}
