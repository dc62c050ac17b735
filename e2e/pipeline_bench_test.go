package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/announcer/announcer/pkg/benchreport"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/xmppsink"
)

// The whole-pipeline benchmark: the four services as processes on the real
// Kafka, MariaDB and Redis, a channel of ANNOUNCER_BENCH_MEMBERS (default
// 1,000,000) members, half of them online over two nodes, and each node's
// sender writing into a counting XEP-0114 sink that answers the fence pings
// and checks every recipient arrives once. It times a POST until the last
// stanza is counted (median of 3), the time to the first stanza, and each
// service's peak RSS; then, with the senders rate-limited so that the channel
// takes seconds, how long a users announcement posted in the middle takes
// on the priority lane, against the same announcement on the bulk lane.

const (
	benchRedisDB = 12 // the benchmark's own Redis db, flushed before and after
	benchSecret  = "bench-secret"
	benchVIPs    = 10 // recipients of the users announcement of the priority figure
)

// pipelineBench is the benchmark's system: its seeded channel, its sinks and counters.
type pipelineBench struct {
	t       *testing.T
	s       *system
	members int
	online  []int32 // member index → run count expected (1 when online, else 0)
	rdb     *redis.Client

	sinks []*xmppsink.Sink
	// Set by the fault suite (zero: the benchmark's values): each node's
	// address when it is not its sink's, and the sizes of the config.
	addrs              []string
	page, batch, shard int
	fenceTimeout       string
	got                []atomic.Int32 // member index → stanzas received this run
	vips               atomic.Int32   // stanzas for the VIP users received
	first              atomic.Int64   // unix ns of the first stanza of the run
	total              atomic.Int64
	dups               atomic.Int64
	other              atomic.Int64 // stanzas for nobody of this benchmark
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestBenchPipeline(t *testing.T) {
	// Without ANNOUNCER_BENCH=1 (make test) a short slice runs: 20,000 members, one timed run,
	// every check of the benchmark kept, its figures not recorded.
	full := os.Getenv("ANNOUNCER_BENCH") == "1"
	members, runs := envInt("ANNOUNCER_BENCH_MEMBERS", 1_000_000), 3
	if !full {
		members, runs = envInt("ANNOUNCER_BENCH_MEMBERS", 20_000), 1
	}
	s := newBareSystem(t, options{nodes: []string{"node1", "node2"}})
	ctx := s.deadline(30 * time.Minute)
	b := &pipelineBench{t: t, s: s, members: members, got: make([]atomic.Int32, members)}
	b.openRedis()

	start := time.Now()
	b.seed(ctx)
	t.Logf("seeded %d members (%d online) in %.1fs", members, b.onlineCount(), time.Since(start).Seconds())
	b.startSinks(func() (*xmppsink.Sink, error) { return xmppsink.StartRecording(benchSecret, b.count) })

	// Unlimited senders: the pipeline's own speed.
	b.startServices(1_000_000)
	var took, firstAt, tails, cpus []float64
	procs := b.processes()
	if full {
		b.warmUp(ctx, procs, minWarmUps, maxWarmUps)
	} else {
		b.warmUp(ctx, procs, 1, 1)
	}
	// ANNOUNCER_BENCH_PROFILE names a folder for each service's CPU profile of run 2.
	profiles := os.Getenv("ANNOUNCER_BENCH_PROFILE")
	for run := 1; run <= runs; run++ {
		cpu0 := cpuOf(procs)
		var profiled func()
		if run == 2 && profiles != "" {
			profiled = b.profile(profiles, 4*time.Second)
		}
		d, first, tail := b.announce(ctx, fmt.Sprintf("run %d", run), b.onlineCount(), 3*time.Minute)
		if profiled != nil {
			profiled()
		}
		took, firstAt, tails = append(took, d.Seconds()), append(firstAt, first.Seconds()), append(tails, tail.Seconds())
		cpu1 := cpuOf(procs)
		total := cpuTotal(procs, cpu0, cpu1)
		cpus = append(cpus, total)
		t.Logf("run %d: POST → last of %d stanzas counted %.3fs (first after %.3fs, last %.3fs after fanout's last batch), each recipient once; CPU seconds: %s; %.2f in all",
			run, b.onlineCount(), d.Seconds(), first.Seconds(), tail.Seconds(), cpuDiff(procs, cpu0, cpu1), total)
	}
	rss := b.peakRSS()
	slices.Sort(took)
	slices.Sort(firstAt)
	slices.Sort(tails)
	label := fmt.Sprintf("%dk", members/1000)
	if members%1_000_000 == 0 {
		label = fmt.Sprintf("%dm", members/1_000_000)
	}
	figures := map[string]benchreport.Figure{
		"pipeline_" + label + "_seconds":              {Value: took[runs/2], Note: fmt.Sprintf("median of %d; POST until the last of %d stanzas counted by the sinks; runs %v", runs, b.onlineCount(), took)},
		"pipeline_" + label + "_first_stanza_seconds": {Value: firstAt[runs/2], Note: "median; POST until the first stanza reached a sink"},
		"pipeline_" + label + "_tail_seconds": {Value: tails[runs/2], Note: "median; from fanout's last batch acknowledged (the announcement's resolved time) " +
			"until the last stanza was counted: how far the senders trail fanout"},
		"pipeline_stanzas_per_second": {Value: float64(b.onlineCount()) / took[runs/2]},
	}
	slices.Sort(cpus)
	figures["pipeline_"+label+"_cpu_seconds"] = benchreport.Figure{Value: cpus[runs/2], Note: fmt.Sprintf(
		"median CPU seconds of a run: the services, the servers and the bench's sinks together; on %d cores no run ends before %.2fs",
		runtime.NumCPU(), cpus[runs/2]/float64(runtime.NumCPU()))}
	for name, kb := range rss {
		figures["pipeline_"+name+"_peak_rss_mib"] = benchreport.Figure{Value: float64(kb) / 1024, Note: "VmHWM after the timed runs"}
	}
	t.Logf("pipeline, %d members (%d online, 2 nodes): median %.3fs, first stanza %.3fs; peak RSS %v KiB",
		members, b.onlineCount(), took[runs/2], firstAt[runs/2], rss)

	// A preview of the same channel: counted by fanout, nothing sent.
	b.reset()
	pstart := time.Now()
	code, _, raw := s.call("POST", "/v1/announce/channel", map[string]any{"channel_id": 1, "dry_run": true,
		"message": b64(fmt.Sprintf(benchTemplate, "preview"))})
	preview := time.Since(pstart)
	if code != 200 || !strings.Contains(string(raw), fmt.Sprintf(`"online":%d`, b.onlineCount())) || b.total.Load() != 0 {
		t.Fatalf("preview: %d %s (%d stanzas sent)", code, raw, b.total.Load())
	}
	figures["preview_"+label+"_seconds"] = benchreport.Figure{Value: preview.Seconds(), Note: "POST with dry_run until the 200 with members, online and per-node counts"}
	t.Logf("preview of the %d-member channel answered in %.3fs", members, preview.Seconds())

	// The priority lane: senders rate-limited so that the channel takes ~8 s.
	rate := max(b.onlineCount()/16/2, 100) // per connection: 2 connections on each of 2 nodes
	b.restartSenders(rate)
	prio := b.midway(ctx, "high", rate)
	bulk := b.midway(ctx, "normal", rate)
	figures["priority_users_latency_seconds"] = benchreport.Figure{Value: prio.Seconds(),
		Note: fmt.Sprintf("users announcement (%d recipients) posted while a %d-online channel is sent at %d stanzas/s: POST until all counted", benchVIPs, b.onlineCount(), 4*rate)}
	figures["priority_users_latency_bulk_lane_seconds"] = benchreport.Figure{Value: bulk.Seconds(),
		Note: "the same with \"priority\": \"normal\" (baseline: the bulk lane, behind the channel)"}
	t.Logf("priority lane: a users announcement posted mid-channel reached its %d recipients in %.3fs (%.3fs on the bulk lane)", benchVIPs, prio.Seconds(), bulk.Seconds())
	if !full {
		return
	}
	if err := benchreport.Record(figures); err != nil {
		t.Fatal(err)
	}
}

// openRedis connects b to the benchmark's own Redis db, flushed and closed
// when the test ends.
func (b *pipelineBench) openRedis() {
	b.rdb = redis.NewClient(&redis.Options{Addr: b.s.env.RedisAddr, DB: benchRedisDB})
	b.t.Cleanup(func() { _ = b.rdb.FlushDB(context.Background()).Err(); _ = b.rdb.Close() })
}

// startSinks starts the two nodes' sinks with start, closed when the test ends.
func (b *pipelineBench) startSinks(start func() (*xmppsink.Sink, error)) {
	for range 2 {
		sk, err := start()
		if err != nil {
			b.t.Fatal(err)
		}
		b.t.Cleanup(func() { _ = sk.Close() })
		b.sinks = append(b.sinks, sk)
	}
}

// seed writes the channel's members to MySQL and half of them, spread
// evenly and alternating between the two nodes, online in Redis.
func (b *pipelineBench) seed(ctx context.Context) {
	t, s := b.t, b.s
	if err := b.rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	s.channel(1, s.p+"-pipeline", "ACCEPTED")
	b.online = make([]int32, b.members)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(2)
	const rows = 5000
	for from := 0; from < b.members; from += rows {
		to := min(from+rows, b.members)
		g.Go(func() error {
			var q bytes.Buffer
			q.WriteString("INSERT INTO ws_channel_members (member_channelid, member_username) VALUES ")
			for i := from; i < to; i++ {
				if i > from {
					q.WriteByte(',')
				}
				fmt.Fprintf(&q, "(1,'%s')", benchUser(i))
			}
			_, err := s.db.ExecContext(gctx, q.String())
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	// Fresh statistics, as a table that grew over time has: the keyset pages
	// must use the channel's index.
	if _, err := s.db.ExecContext(ctx, "ANALYZE TABLE ws_channel_members"); err != nil {
		t.Fatal(err)
	}
	pipe := b.rdb.Pipeline()
	for i := 0; i < b.members; i += 2 {
		node := (i / 2) % 2
		b.online[i] = 1
		pipe.Set(ctx, benchUser(i), benchAddr(node), 0)
		pipe.SAdd(ctx, benchAddr(node), benchUser(i))
		if pipe.Len() >= 10000 {
			if _, err := pipe.Exec(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range benchVIPs {
		pipe.Set(ctx, fmt.Sprintf("vip%d", i), benchAddr(i%2), 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
}

func benchUser(i int) string    { return fmt.Sprintf("bm%07d", i) }
func benchAddr(node int) string { return fmt.Sprintf("10.9.0.%d", node+1) }

func (b *pipelineBench) onlineCount() int { return (b.members + 1) / 2 }

// count is the sinks' callback: one stanza for to.
func (b *pipelineBench) count(to []byte) {
	if b.first.Load() == 0 {
		b.first.CompareAndSwap(0, time.Now().UnixNano())
	}
	local, _, _ := bytes.Cut(to, []byte("@"))
	switch {
	case bytes.HasPrefix(local, []byte("bm")):
		i, err := strconv.Atoi(string(local[2:]))
		if err != nil || i >= b.members {
			b.other.Add(1)
			return
		}
		if b.got[i].Add(1) > 1 {
			b.dups.Add(1)
		}
		b.total.Add(1)
	case bytes.HasPrefix(local, []byte("vip")):
		b.vips.Add(1)
	default:
		b.other.Add(1)
	}
}

// reset clears the counters between runs.
func (b *pipelineBench) reset() {
	for i := range b.got {
		b.got[i].Store(0)
	}
	b.first.Store(0)
	b.total.Store(0)
	b.dups.Store(0)
	b.vips.Store(0)
	b.other.Store(0)
}

// config is the services' TOML: each node's address is its sink.
func (b *pipelineBench) config(rate int) string {
	s := b.s
	dsn, err := mysql.ParseDSN(s.env.MySQLDSN)
	if err != nil {
		b.t.Fatal(err)
	}
	var nodes strings.Builder
	for i, sk := range b.sinks {
		addr := sk.Addr()
		if i < len(b.addrs) {
			addr = b.addrs[i]
		}
		fmt.Fprintf(&nodes, "[[node]]\nname = \"node%d\"\naddress = %q\npresence_addresses = [%q]\n\n", i+1, addr, benchAddr(i))
	}
	or := func(v, def int) int {
		if v > 0 {
			return v
		}
		return def
	}
	fence := b.fenceTimeout
	if fence == "" {
		fence = "30s"
	}
	return fmt.Sprintf(`rest_api_port = %q
debug_port = "127.0.0.1:0"
logic_process_number = 2
user_activity_ask_buffer = 1000

[log]
log_level = "warning"
format = "json"

[mysql]
address = %q
username = %q
password = %q
db = %q
pagination_length = %d

[user-activity-redis]
cluster_nodes = %q
db = %d

[kafka-producer]
brokers = %q
topics = "%s_storage"

[ejabberd]
cluster_nodes = "127.0.0.1:1"
rate_limit = %d
each_node_conn_num = 2

[component]
name = "announcer.localhost"
secret = %q
domain = "localhost"

[bus]
brokers = %q
announcements_topic = "%s_announcements"
deliveries_topic_prefix = "%s_deliveries."
dead_letter_topic = "%s_dlq"
partitions = 6

[fanout]
group_name = "%s_fanout"
batch_size = %d
shard_size = %d

[sender]
group_prefix = "%s_sender_"
fence_timeout = %q

[archiver]
group_name = "%s_archiver"

[progress]
key_prefix = "%s:"

%s`, s.rest, dsn.Addr, dsn.User, dsn.Passwd, s.p, or(b.page, 5000), s.env.RedisAddr, benchRedisDB, strings.Join(s.brokers, ","), s.p,
		rate, benchSecret, strings.Join(s.brokers, ","), s.p, s.p, s.p, s.p, or(b.batch, 1000), or(b.shard, 100000), s.p, fence, s.p, s.p, nodes.String())
}

func (b *pipelineBench) writeConfig(name, text string) string {
	path := filepath.Join(b.s.dir, name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		b.t.Fatal(err)
	}
	return path
}

func (b *pipelineBench) startServices(rate int) {
	s := b.s
	s.rest = testkit.FreeAddr(b.t)
	s.cfg = b.writeConfig("bench.toml", b.config(rate))
	s.start("archiver", s.cfg, nil)
	s.start("sender-node1-0", s.cfg, []string{"-node", "node1"})
	s.start("sender-node2-0", s.cfg, []string{"-node", "node2"})
	s.start("fanout", s.cfg, nil)
	s.start("ingress", s.cfg, nil)
}

// The untimed runs before the timed ones.
const minWarmUps, maxWarmUps = 3, 5

// warmUp sends the channel untimed until the servers are warm: least to most
// times. One run is not enough on a freshly started stack: the broker's JIT
// is still compiling, and on 12-03 its first runs cost 1.6–1.8 CPU-s each
// against 0.3–0.5 a few minutes later, the whole run 4.2 CPU-s against 2.4,
// so the timed runs measured the JIT more than the pipeline. After least
// runs the stack counts as warm once a run costs no more than 10 % less CPU
// than the run before; least is there because one step may fall by less
// while the broker is still compiling (the second run at 12-03 14:36 did).
func (b *pipelineBench) warmUp(ctx context.Context, procs map[string]int, least, most int) {
	b.t.Helper()
	prev := 0.0
	for i := 1; i <= most; i++ {
		cpu0 := cpuOf(procs)
		d, _, _ := b.announce(ctx, fmt.Sprintf("warm-up %d", i), b.onlineCount(), 3*time.Minute)
		cpu1 := cpuOf(procs)
		cpu := cpuTotal(procs, cpu0, cpu1)
		b.t.Logf("warm-up %d: %.2fs; CPU seconds: %s; %.2f in all", i, d.Seconds(), cpuDiff(procs, cpu0, cpu1), cpu)
		if i >= least && i > 1 && cpu >= 0.9*prev {
			return
		}
		prev = cpu
	}
}

// cpuTotal is the CPU seconds procs used between two readings.
func cpuTotal(procs map[string]int, cpu0, cpu1 map[string]float64) float64 {
	total := 0.0
	for n := range procs {
		total += cpu1[n] - cpu0[n]
	}
	return total
}

// restartSenders starts both senders again at rate stanzas/s per connection.
func (b *pipelineBench) restartSenders(rate int) {
	s := b.s
	cfg := b.writeConfig(fmt.Sprintf("bench-rate-%d.toml", rate), b.config(rate))
	for _, name := range []string{"sender-node1-0", "sender-node2-0"} {
		s.stopService(name)
		svc := s.byName[name]
		svc.cfg = cfg
		s.restart(name)
	}
}

const benchTemplate = "<message to='%%s' from='announcer.localhost' type='headline'><body>%s</body></message>"

// announce posts the channel and waits until want stanzas were counted; it
// returns the time to the last and to the first, and how long the last came
// after fanout had every batch acknowledged (the announcement's resolved
// time): how far the senders trail fanout. It checks each recipient once.
func (b *pipelineBench) announce(ctx context.Context, label string, want int, timeout time.Duration) (took, first, tail time.Duration) {
	b.t.Helper()
	b.reset()
	start := time.Now()
	id := b.s.announce("/v1/announce/channel", map[string]any{"channel_id": 1, "message": b64(fmt.Sprintf(benchTemplate, label))})
	deadline := start.Add(timeout)
	trace := os.Getenv("ANNOUNCER_BENCH_TRACE") != ""
	next := start.Add(250 * time.Millisecond)
	for b.total.Load() < int64(want) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			b.t.Fatalf("%s: %d of %d stanzas after %s", label, b.total.Load(), want, timeout)
		}
		if trace && time.Now().After(next) {
			b.t.Logf("%s +%.2fs: %d stanzas; fanout tasks done %v, batches acked %v", label, time.Since(start).Seconds(), b.total.Load(),
				b.s.metric("fanout", "announcer_fanout_task_seconds_count"), b.s.metric("fanout", "announcer_fanout_batches_total"))
			next = next.Add(250 * time.Millisecond)
		}
		time.Sleep(time.Millisecond)
	}
	took = time.Since(start)
	first = time.Duration(b.first.Load() - start.UnixNano())
	time.Sleep(500 * time.Millisecond) // late duplicates would show here
	if d, o := b.dups.Load(), b.other.Load(); d != 0 || o != 0 {
		b.t.Fatalf("%s: %d duplicates, %d stanzas for nobody", label, d, o)
	}
	for i := range b.got {
		if b.got[i].Load() != b.online[i] {
			b.t.Fatalf("%s: member %d got %d stanzas, want %d", label, i, b.got[i].Load(), b.online[i])
		}
	}
	// Progress updates are queued in fanout: the resolved time may land a moment later.
	var resolved time.Time
	testkit.Eventually(b.t, 10*time.Second, label+": the announcement's resolved time", func() bool {
		if r := b.s.status(id).Times.Resolved; r != nil {
			resolved = *r
			return true
		}
		return false
	})
	return took, first, start.Add(took).Sub(resolved)
}

// midway posts the channel, then, a third of the way through, a users
// announcement to the VIPs with the given priority, and returns how long
// the VIPs waited. It waits for the channel to finish before returning.
func (b *pipelineBench) midway(ctx context.Context, priority string, rate int) time.Duration {
	b.t.Helper()
	b.reset()
	want := b.onlineCount()
	b.s.announce("/v1/announce/channel", map[string]any{"channel_id": 1, "message": b64(fmt.Sprintf(benchTemplate, "bulk "+priority))})
	testkit.Eventually(b.t, 2*time.Minute, "a third of the channel out", func() bool { return b.total.Load() >= int64(want/3) })
	vips := make([]string, benchVIPs)
	for i := range vips {
		vips[i] = fmt.Sprintf("vip%d", i)
	}
	start := time.Now()
	b.s.announce("/v1/announce/users", map[string]any{"usernames": vips, "priority": priority, "persist": false,
		"message": b64(fmt.Sprintf(benchTemplate, "vip "+priority))})
	for b.vips.Load() < benchVIPs {
		if ctx.Err() != nil || time.Since(start) > 5*time.Minute {
			b.t.Fatalf("the VIPs got %d of %d stanzas", b.vips.Load(), benchVIPs)
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	testkit.Eventually(b.t, 5*time.Minute, "the rest of the channel", func() bool { return b.total.Load() >= int64(want) })
	return took
}

// processes are the pids whose CPU time a run reports: the services, the
// stack's servers, and this test process (the sinks and their counting).
func (b *pipelineBench) processes() map[string]int {
	out := map[string]int{"bench+sinks": os.Getpid()}
	for name, svc := range b.s.byName {
		out[name] = svc.cmd.Process.Pid
	}
	for name, pid := range b.s.env.ServerPIDs() {
		out[name] = pid
	}
	return out
}

// profile starts a CPU profile of every service over the next d (their
// debug servers serve pprof) and returns a wait that writes them to dir.
func (b *pipelineBench) profile(dir string, d time.Duration) (wait func()) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	var g errgroup.Group
	for name, addr := range b.s.debug {
		g.Go(func() error {
			url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Seconds()))
			resp, err := http.Get(url)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s", url, resp.Status)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, name+".pprof"), body, 0o644)
		})
	}
	return func() {
		if err := g.Wait(); err != nil {
			b.t.Errorf("profiles: %v", err)
		}
		b.t.Logf("CPU profiles of run 2 in %s", dir)
	}
}

// cpuOf reads the CPU seconds each process used so far.
func cpuOf(procs map[string]int) map[string]float64 {
	out := map[string]float64{}
	for name, pid := range procs {
		if _, sec, ok := benchreport.ProcessCPU(pid); ok {
			out[name] = sec
		}
	}
	return out
}

func cpuDiff(procs map[string]int, a, b map[string]float64) string {
	names := make([]string, 0, len(procs))
	for n := range procs {
		names = append(names, n)
	}
	slices.Sort(names)
	var parts []string
	for _, n := range names {
		if d := b[n] - a[n]; d >= 0.01 {
			parts = append(parts, fmt.Sprintf("%s %.2f", n, d))
		}
	}
	return strings.Join(parts, ", ")
}

// peakRSS reads each service's VmHWM (KiB) from /proc.
func (b *pipelineBench) peakRSS() map[string]int64 {
	out := map[string]int64{}
	for name, svc := range b.s.byName {
		if kb, ok := benchreport.ProcessKB(svc.cmd.Process.Pid, "VmHWM"); ok {
			out[strings.TrimSuffix(strings.ReplaceAll(name, "-", "_"), "_0")] = kb
		}
	}
	return out
}
