package audience_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/progress"
	"github.com/announcer/announcer/pkg/redisconn"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/services/fanout/internal/audience"
	"github.com/announcer/announcer/services/fanout/internal/audience/audiencetest"
)

// recorder is the progress store as a test sees it: what fanout recorded,
// and a cancel that lands after a number of checks.
type recorder struct {
	mu          sync.Mutex
	state       string // Begin's answer
	finished    bool
	cancelAfter int // Cancelled says true from this check on (0 = never)
	checks      int
	plans       []int
	shards      map[int]progress.ShardCounts
	finish      []string
	failed      []string // shard:reason
	emitted     map[int]int
	cut         *progress.SplitPlan // the first recorded, as the store keeps it
	splitErr    error               // Split's answer, when set
}

func newRecorder() *recorder {
	return &recorder{shards: map[int]progress.ShardCounts{}, emitted: map[int]int{}}
}

func (r *recorder) Begin(context.Context, *announcement.Event) (string, bool, error) {
	return r.state, r.finished, nil
}

func (r *recorder) Plan(_ context.Context, _ string, shards int, _ bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.plans = append(r.plans, shards)
	return nil
}

func (r *recorder) Split(_ context.Context, _ string, p progress.SplitPlan) (progress.SplitPlan, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.splitErr != nil {
		return p, r.splitErr
	}
	if r.cut == nil {
		r.cut = &p
	}
	return *r.cut, nil
}

func (r *recorder) Emitted(_ string, shard, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.emitted[shard] = max(r.emitted[shard], n)
}

func (r *recorder) ShardDone(_ string, shard int, c progress.ShardCounts) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.shards[shard] = c
}

func (r *recorder) ShardFailed(_ string, shard int, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = append(r.failed, fmt.Sprintf("%d:%s", shard, reason))
}

func (r *recorder) Finish(_, state, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.finish = append(r.finish, state+":"+reason)
}

func (r *recorder) Cancelled(context.Context, string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checks++
	return r.cancelAfter > 0 && r.checks >= r.cancelAfter
}

// What a task resolved is recorded once per shard: members read, online,
// recipients, batches and the split per node; emitted follows the acks.
func TestProgressRecordsEachShard(t *testing.T) {
	rec := newRecorder()
	w := newWorld(t, func(c *audience.Config) { c.Progress = rec })
	want1, want2 := w.seedChannel(t, 1, audience.StateAccepted, 40)
	res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1}))
	if err != nil || res.Outcome != audience.Delivered {
		t.Fatal(res, err)
	}
	got := rec.shards[0]
	if len(rec.plans) != 1 || rec.plans[0] != 1 || got.Members != 40 || got.Online != len(want1)+len(want2) ||
		got.Recipients != got.Online || got.Batches != len(w.sink.Batches) || got.PerNode["node1"] != len(want1) {
		t.Fatalf("plans %v, shard %+v", rec.plans, got)
	}
	if rec.emitted[0] != len(w.sink.Batches) {
		t.Fatalf("emitted %d of %d batches", rec.emitted[0], len(w.sink.Batches))
	}
	rej := newRecorder()
	w = newWorld(t, func(c *audience.Config) { c.Progress = rej })
	w.seedChannel(t, 2, "PENDING", 3)
	if _, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 2})); err != nil {
		t.Fatal(err)
	}
	if len(rej.finish) != 1 || rej.finish[0] != "rejected:"+audience.ReasonChannelNotAccepted {
		t.Fatalf("finish %v", rej.finish)
	}
}

// A cancel stops a task between pages: nothing more is read or written.
func TestCancelStopsBetweenPages(t *testing.T) {
	rec := newRecorder()
	rec.cancelAfter = 2 // the second page finds the announcement cancelled
	w := newWorld(t, func(c *audience.Config) { c.Progress = rec; c.BatchSize = 2 })
	w.seedChannel(t, 1, audience.StateAccepted, 49) // 7 pages of 7
	res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1}))
	if err != nil || res.Outcome != audience.Cancelled {
		t.Fatalf("%+v %v, want cancelled", res, err)
	}
	sent := 0
	for _, b := range w.sink.Batches {
		sent += len(b.Recipients)
	}
	if sent > 7 || res.Audience > 7 {
		t.Fatalf("%d recipients written, %d members read after a cancel on the second page: want at most the first page", sent, res.Audience)
	}
	if len(rec.shards) != 0 {
		t.Fatalf("a cancelled shard was recorded as resolved: %v", rec.shards)
	}

	// Cancelled before it started: nothing is read at all.
	before := newRecorder()
	before.state = progress.StateCancelled
	w = newWorld(t, func(c *audience.Config) { c.Progress = before })
	w.seedChannel(t, 1, audience.StateAccepted, 20)
	if res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1})); err != nil ||
		res.Outcome != audience.Cancelled || len(w.sink.Batches) != 0 {
		t.Fatalf("%+v %v, %d batches", res, err, len(w.sink.Batches))
	}
	if n := testkit.Gathered(t, w.reg, "task_audience"); n != 0 {
		t.Fatalf("a task cancelled before it started observed as %v task sizes", n)
	}
}

// A dry run counts what a send would reach and writes nothing; a copy of a
// task already finished does nothing.
func TestDryRunAndCopies(t *testing.T) {
	rec := newRecorder()
	w := newWorld(t, func(c *audience.Config) { c.Progress = rec })
	want1, want2 := w.seedChannel(t, 1, audience.StateAccepted, 30)
	ev := channelEvent(announcement.ChannelRef{ID: 1})
	ev.DryRun = true
	res, err := w.r.Resolve(context.Background(), ev)
	if err != nil || res.Outcome != audience.Counted || len(w.sink.Batches) != 0 {
		t.Fatalf("%+v %v, %d batches written", res, err, len(w.sink.Batches))
	}
	if c := rec.shards[0]; c.Recipients != len(want1)+len(want2) || c.PerNode["node2"] != len(want2) || c.Batches == 0 {
		t.Fatalf("dry-run counts %+v", c)
	}

	dup := newRecorder()
	dup.finished = true
	w = newWorld(t, func(c *audience.Config) { c.Progress = dup })
	w.seedChannel(t, 1, audience.StateAccepted, 30)
	if res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1})); err != nil ||
		res.Outcome != audience.Duplicate || len(w.sink.Batches) != 0 {
		t.Fatalf("%+v %v, %d batches", res, err, len(w.sink.Batches))
	}
}

// A dry run, recorded by the real progress store, shows the batches a send
// would make as planned and none as emitted: emitted means acknowledged by
// Kafka, and a preview writes nothing.
func TestDryRunEmitsNothingInTheProgressStore(t *testing.T) {
	env := stacktest.Get(t)
	conn, err := redisconn.New("progress", redisconn.Options{Addrs: []string{env.RedisAddr}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	store := progress.NewStore(conn, progress.Options{Prefix: stacktest.Name("fanout-progress") + ":", TTL: time.Minute})
	tracker := progress.NewTracker(store, progress.TrackerOptions{}, testkit.Log(t, zerolog.WarnLevel), prometheus.NewRegistry())
	testkit.Background(t, "tracker", tracker.Run)

	w := newWorld(t, func(c *audience.Config) { c.Progress = tracker })
	want1, want2 := w.seedChannel(t, 1, audience.StateAccepted, 30)
	ev := channelEvent(announcement.ChannelRef{ID: 1})
	ev.ID, ev.DryRun = stacktest.Name("dry"), true
	ctx := context.Background()
	if err := store.Accept(ctx, &ev); err != nil { // as ingress does
		t.Fatal(err)
	}
	res, err := w.r.Resolve(ctx, ev)
	if err != nil || res.Outcome != audience.Counted || res.Batches == 0 || len(w.sink.Batches) != 0 {
		t.Fatalf("%+v %v, %d batches written", res, err, len(w.sink.Batches))
	}
	var a progress.Announcement
	testkit.Eventually(t, 5*time.Second, "the dry run done", func() bool {
		a, err = store.Get(ctx, ev.ID)
		return err == nil && a.State == progress.StateDone
	})
	if a.Batches.Emitted != 0 || a.Batches.Planned != int64(res.Batches) || a.Audience.Recipients != int64(len(want1)+len(want2)) {
		t.Fatalf("batches %+v, audience %+v: want %d planned, none emitted, %d recipients",
			a.Batches, a.Audience, res.Batches, len(want1)+len(want2))
	}
}

// A channel event resolved a second time (its first worker crashed after
// queuing the shard tasks), after members joined, cuts the channel as the
// first time: shard tasks known by their index then agree, and whichever
// copy of each index runs, every member is reached.
func TestAChannelCutTwiceKeepsTheFirstCut(t *testing.T) {
	rec := newRecorder()
	first := newWorld(t, func(c *audience.Config) { c.Progress = rec }) // ShardSize 50
	first.seedChannel(t, 1, audience.StateAccepted, 173)
	ev := channelEvent(announcement.ChannelRef{ID: 1})
	ctx := context.Background()
	if res, err := first.r.Resolve(ctx, ev); err != nil || res.Outcome != audience.Split || res.Shards != 4 {
		t.Fatalf("%+v %v", res, err)
	}
	late := audiencetest.Names("late", 80)
	_ = first.members.AddMembers(ctx, 1, late...)
	_ = first.presence.SetOnline(ctx, "10.0.0.1", late...)

	// The worker that takes the event over: same stores, a count of its own.
	second := first.resolver(t, prometheus.NewRegistry(), func(c *audience.Config) { c.Progress = rec })
	if res, err := second.Resolve(ctx, ev); err != nil || res.Outcome != audience.Split || res.Shards != 4 {
		t.Fatalf("the second cut: %+v %v, want the first cut's 4 shards", res, err)
	}
	tasks := first.sink.Tasks
	if len(tasks) != 8 {
		t.Fatalf("%d tasks, want 4 from each resolution", len(tasks))
	}
	for i := range 4 {
		if *tasks[i].Shard != *tasks[4+i].Shard {
			t.Fatalf("shard %d: %+v, then %+v", i, *tasks[i].Shard, *tasks[4+i].Shard)
		}
	}
	// Copies are skipped by index: the first cut's 0 and 2, the second's 1 and 3.
	reached := 0
	for _, task := range []announcement.Event{tasks[0], tasks[5], tasks[2], tasks[7]} {
		res, err := first.r.Resolve(ctx, task)
		if err != nil {
			t.Fatal(err)
		}
		reached += res.Audience
	}
	if reached != 173+len(late) {
		t.Fatalf("the shards read %d members, want all %d", reached, 173+len(late))
	}
}

// A cut the progress store could not keep is not queued as shard tasks: a
// replay could cut otherwise and skip the first cut's tasks as copies. The
// worker reads the whole channel itself, every member once.
func TestAnUnrecordedCutIsNotQueued(t *testing.T) {
	rec := newRecorder()
	rec.splitErr = errors.New("progress: split: connection refused")
	w := newWorld(t, func(c *audience.Config) { c.Progress = rec }) // ShardSize 50
	w.seedChannel(t, 1, audience.StateAccepted, 173)
	res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1}))
	if err != nil || res.Outcome != audience.Delivered || len(w.sink.Tasks) != 0 {
		t.Fatalf("%+v %v, %d tasks: want the channel delivered whole, no task", res, err, len(w.sink.Tasks))
	}
	if res.Audience != 173 || len(rec.plans) != 1 || rec.plans[0] != 1 {
		t.Fatalf("read %d of 173 members, plans %v", res.Audience, rec.plans)
	}
}

// A shard given up on a permanent error is recorded as failed, not the whole
// announcement: the other shards go on, and can still be cancelled, and
// the record ends failed once they are done. A channel that fails before it
// is cut emitted nothing, and ends failed at once.
func TestAPermanentFailureFailsItsShard(t *testing.T) {
	rec := newRecorder()
	w := newWorld(t, func(c *audience.Config) { c.Progress = rec; c.PermanentRetryFor = 50 * time.Millisecond }) // ShardSize 50
	w.seedChannel(t, 1, audience.StateAccepted, 173)
	if res, err := w.r.Resolve(context.Background(), channelEvent(announcement.ChannelRef{ID: 1})); err != nil || res.Outcome != audience.Split {
		t.Fatalf("%+v %v", res, err)
	}
	denied := fmt.Errorf("%w: Error 1142: SELECT command denied", audience.ErrPermanent)
	for i, task := range slices.Clone(w.sink.Tasks) {
		w.members.Fail = func(op string) error {
			if i == 1 && op == "members" {
				return denied
			}
			return nil
		}
		res, err := w.r.Resolve(context.Background(), task)
		var bad *announcement.BadRecordError
		switch {
		case i == 1 && !errors.As(err, &bad):
			t.Fatalf("shard 1: %+v %v, want a bad record", res, err)
		case i != 1 && (err != nil || res.Outcome != audience.Delivered):
			t.Fatalf("shard %d: %+v %v", i, res, err)
		}
	}
	if len(rec.failed) != 1 || !strings.HasPrefix(rec.failed[0], "1:shard 1: ") || len(rec.finish) != 0 {
		t.Fatalf("failed %v, finish %v: want shard 1 failed and the announcement not finished", rec.failed, rec.finish)
	}
	if len(rec.shards) != 3 {
		t.Fatalf("shards resolved %v, want the other 3", rec.shards)
	}

	for _, tc := range []struct {
		name, fail, want string // fail: the failing operation ("" all); want: "0:" shard 0 failed, "failed:" finished
		ev               announcement.Event
	}{
		{"all online", "", "0:", announcement.Event{ID: "a2", Kind: announcement.KindAllOnline, Template: "<message to='%s'/>", CreatedAt: time.Now()}},
		{"users", "", "0:", announcement.Event{ID: "a3", Kind: announcement.KindUsers, Usernames: []string{"u0", "u1"}, Template: "<message to='%s'/>", CreatedAt: time.Now()}},
		{"small channel", "members", "0:", channelEvent(announcement.ChannelRef{ID: 1})},
		{"channel lookup", "", "failed:", channelEvent(announcement.ChannelRef{ID: 1})}, // nothing cut or emitted
	} {
		rec := newRecorder()
		w := newWorld(t, func(c *audience.Config) { c.Progress = rec; c.PermanentRetryFor = 50 * time.Millisecond })
		w.seedChannel(t, 1, audience.StateAccepted, 10)
		fail := func(op string) error {
			if tc.fail == "" || op == tc.fail {
				return denied
			}
			return nil
		}
		w.members.Fail, w.presence.Fail = fail, fail
		if _, err := w.r.Resolve(context.Background(), tc.ev); err == nil {
			t.Fatalf("%s: no error", tc.name)
		}
		got := append(slices.Clone(rec.failed), rec.finish...)
		if len(got) != 1 || !strings.HasPrefix(got[0], tc.want) {
			t.Fatalf("%s: recorded %v, want one %q…", tc.name, got, tc.want)
		}
	}
}
