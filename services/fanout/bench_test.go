// The fanout benchmark measures the service on a giant channel: it seeds
// a private database (N members) and a private Redis db (half of them online,
// spread over two node addresses), runs the real fanout service (run, as the
// binary does) in-process against private topics, and times one announcement
// from publish until every batch is acknowledged (each offset is committed right after;
// after an untimed one of the same channel, -warmup-runs). For what the progress
// bookkeeping costs, a second service with [progress] disabled then takes turns with
// the first, -pairs times (fanout_progress_overhead_percent and its CPU twin, medians of
// the pairs). Then it measures the first
// generation's member paging (no ORDER BY, LIMIT offset,n + a Redis MGET per
// page) on the same data, under a time cap, and prints the ratio.
//
// Everything it creates (database, topics, consumer group, Redis db keys) has a
// unique name and is removed at the end. It needs the local stack; `make bench` runs it:
//
//	eval "$(bash scripts/stack/stack.sh env)"; cd services/fanout && \
//	  ANNOUNCER_BENCH=1 FANOUT_BENCH_ARGS="-members 100000" go test -run '^TestBenchGiantChannel$' -v .
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/benchreport"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/services/fanout/internal/audience"
	"github.com/announcer/announcer/services/fanout/internal/mysqlstore"
	"github.com/announcer/announcer/services/fanout/internal/mysqlstore/mysqltest"
)

type flags struct {
	members, online   int
	configPath        string
	dsn, redisAddr    string
	brokers           string
	redisDB           int
	page, batch       int
	shard, ask        int
	workers           int
	partitions        int
	firstGenPage      int
	firstGenCap       time.Duration
	skipFirstGen      bool
	timeout           time.Duration
	verbose           bool
	cpuProfile        string
	serverPIDs        string
	runs              int
	pairs             int
	seedConns         int
	warmupTimeout     time.Duration
	warmupRuns        int
	firstGenAskBuffer int
	record            bool // write the figures to benchreport's file
}

// TestBenchGiantChannel is the fanout figure of `make bench` (ANNOUNCER_BENCH=1);
// FANOUT_BENCH_ARGS takes the flags below. Without ANNOUNCER_BENCH=1 (make test)
// a short slice runs: 20,000 members in shards of 5,000, one timed run of each
// mode, every recipient still checked, its figures not recorded.
func TestBenchGiantChannel(t *testing.T) {
	full := os.Getenv("ANNOUNCER_BENCH") == "1"
	args := strings.Fields(os.Getenv("FANOUT_BENCH_ARGS"))
	if !full {
		stacktest.Get(t) // skips without the stack, as the other integration tests do
		args = append([]string{"-members", "20000", "-shard", "5000", "-runs", "1", "-pairs", "1", "-firstgen-cap", "2s"}, args...)
	}
	f, err := parseBenchFlags(args)
	if err != nil {
		t.Fatal(err)
	}
	f.record = full
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench(ctx, f); err != nil {
		t.Fatalf("fanout-bench: %v", err)
	}
}

func parseBenchFlags(args []string) (flags, error) {
	var f flags
	fs := flag.NewFlagSet("fanout-bench", flag.ContinueOnError)
	fs.IntVar(&f.members, "members", 1_000_000, "channel members to seed")
	fs.IntVar(&f.online, "online", -1, "members online (default: half); spread over two node addresses")
	fs.StringVar(&f.configPath, "config", "", "announcer TOML for the fanout tuning keys (default: configs/announcer.toml found upward, else built-in defaults)")
	fs.StringVar(&f.dsn, "mysql-dsn", env("ANNOUNCER_MYSQL_DSN", "announcer:announcer@tcp(127.0.0.1:3306)/announcer"), "MySQL DSN with rights to CREATE DATABASE")
	fs.StringVar(&f.redisAddr, "redis", env("ANNOUNCER_REDIS_ADDR", "127.0.0.1:6379"), "Redis address")
	fs.IntVar(&f.redisDB, "redis-db", 9, "Redis db number used by the benchmark alone (flushed at start and end)")
	fs.StringVar(&f.brokers, "brokers", env("ANNOUNCER_KAFKA_BROKERS", "127.0.0.1:9092"), "Kafka brokers")
	fs.IntVar(&f.page, "page", 0, "override [mysql] pagination_length")
	fs.IntVar(&f.batch, "batch", 0, "override [fanout] batch_size")
	fs.IntVar(&f.shard, "shard", 0, "override [fanout] shard_size")
	fs.IntVar(&f.ask, "ask", 0, "override user_activity_ask_buffer (keys per MGET)")
	fs.IntVar(&f.workers, "workers", 0, "override logic_process_number (events resolved at once)")
	fs.IntVar(&f.partitions, "partitions", 0, "override [bus] partitions of the private topics")
	fs.IntVar(&f.firstGenPage, "firstgen-page", 100, "first generation's pagination_length (its default was 100)")
	fs.IntVar(&f.firstGenAskBuffer, "firstgen-ask", 1000, "first generation's user_activity_ask_buffer")
	fs.DurationVar(&f.firstGenCap, "firstgen-cap", 30*time.Second, "time cap of the first-generation run (the rest is extrapolated)")
	fs.BoolVar(&f.skipFirstGen, "skip-firstgen", false, "skip the first-generation comparison")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Minute, "give up the fanout run after this long")
	fs.DurationVar(&f.warmupTimeout, "warmup-timeout", time.Minute, "time allowed to join the consumer group")
	fs.IntVar(&f.warmupRuns, "warmup-runs", 1, "untimed announcements of the whole channel before the timed runs of each mode")
	fs.IntVar(&f.runs, "runs", 3, "timed announcements of the channel (the median is reported)")
	// Three pairs read anywhere from -7 % to +15 % on one quiet machine; the cost is a few percent.
	fs.IntVar(&f.pairs, "pairs", 7, "turns of progress on and off for fanout_progress_overhead_percent (the median of the pairs is reported)")
	fs.IntVar(&f.seedConns, "seed-conns", 2, "parallel connections for seeding MySQL")
	fs.BoolVar(&f.verbose, "v", false, "log the service at info level")
	fs.StringVar(&f.serverPIDs, "server-pids", "", "comma-separated pids of the servers (mariadbd, redis, kafka) whose CPU time to report for the timed run (default: the local stack's)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the timed runs (not of the turns with progress off) to this file")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if f.online < 0 {
		f.online = f.members / 2
	}
	if f.online > f.members {
		return f, errors.New("-online > -members")
	}
	return f, nil
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// findConfig walks up from the working directory to configs/announcer.toml.
func findConfig() string {
	dir, _ := os.Getwd()
	for range 6 {
		p := filepath.Join(dir, "configs", "announcer.toml")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		dir = filepath.Dir(dir)
	}
	return ""
}

// username of member i: phone-number-like, as the first generation's users were.
func username(prefix string, i int) string { return prefix + fmt.Sprintf("%07d", i) }

var nodeAddrs = [2]string{"10.0.0.1", "10.0.0.2"}

// onlineAt says where member i is online ("" = offline): the first `online`
// members of an even spread, alternating between the two node addresses.
func onlineAt(i, members, online int) (int, bool) {
	if online == 0 {
		return 0, false
	}
	// Spread online members evenly through the member-id order.
	if (i*online)/members == ((i+1)*online)/members {
		return 0, false
	}
	k := (i * online) / members
	return k % 2, true
}

type cleanup struct {
	mu  sync.Mutex
	fns []func()
}

func (c *cleanup) add(fn func()) { c.mu.Lock(); c.fns = append(c.fns, fn); c.mu.Unlock() }
func (c *cleanup) run() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
}

func bench(ctx context.Context, f flags) error {
	var clean cleanup
	defer clean.run()

	cfg := config.Default()
	path := f.configPath
	if path == "" {
		path = findConfig()
	}
	if path != "" {
		c, err := config.Load(path)
		if err != nil {
			return err
		}
		cfg = c
	}
	apply := func(dst *int, v int) {
		if v > 0 {
			*dst = v
		}
	}
	apply(&cfg.MySQL.PaginationLength, f.page)
	apply(&cfg.Fanout.BatchSize, f.batch)
	apply(&cfg.Fanout.ShardSize, f.shard)
	apply(&cfg.UserActivityAskBuffer, f.ask)
	apply(&cfg.LogicProcessNumber, f.workers)
	apply(&cfg.Bus.Partitions, f.partitions)

	if f.serverPIDs == "" {
		// The local stack's servers, so a run shows where its CPU went.
		pids := stacktest.Env{StackScript: os.Getenv("ANNOUNCER_STACK_SCRIPT")}.ServerPIDs()
		for _, name := range []string{"mariadb", "redis", "kafka"} {
			if pid, ok := pids[name]; ok {
				f.serverPIDs += "," + strconv.Itoa(pid)
			}
		}
	}

	runID := stacktest.Name("fanout_bench")
	prefix := "98912" // usernames 98912xxxxxxx

	// --- MySQL: a private database with one channel of N members.
	mcfg, drop, err := mysqltest.Create(ctx, f.dsn, runID)
	if err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	clean.add(func() {
		if err := drop(); err != nil {
			fmt.Fprintln(os.Stderr, "drop database:", err)
		}
	})
	mcfg.PaginationLength = cfg.MySQL.PaginationLength
	mcfg.MaxOpenConn, mcfg.MaxIdleConn = cfg.MySQL.MaxOpenConn, cfg.MySQL.MaxIdleConn
	cfg.MySQL = mcfg

	// --- Redis: a db of the benchmark's own.
	rdb := redis.NewClient(&redis.Options{Addr: f.redisAddr, DB: f.redisDB})
	clean.add(func() { _ = rdb.Close() })
	if n, err := rdb.DBSize(ctx).Result(); err != nil {
		return fmt.Errorf("redis: %w", err)
	} else if n > 0 {
		fmt.Fprintf(os.Stderr, "redis db %d held %d keys; flushing it (the benchmark owns this db)\n", f.redisDB, n)
	}
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return err
	}
	clean.add(func() {
		if err := rdb.FlushDBAsync(context.Background()).Err(); err != nil {
			fmt.Fprintln(os.Stderr, "flush redis db:", err)
		}
	})
	cfg.UserActivityRedis = config.UserActivityRedis{ClusterNodes: f.redisAddr, DB: f.redisDB, ReadTimeout: 2000, MaxRetries: 2, OfflineHash: "offline-users"}
	cfg.Fanout.Presence = "redis"

	// --- Kafka: private topics and group.
	cfg.Bus.Brokers = f.brokers
	cfg.Bus.AnnouncementsTopic = runID + "_ann"
	cfg.Bus.DeliveriesPrefix = runID + "_del."
	cfg.Bus.DeadLetterTopic = runID + "_dlq"
	cfg.Bus.CreateTopics = true
	cfg.Fanout.GroupName = runID + "_group"
	cfg.DebugPort = "127.0.0.1:0"
	cfg.Nodes = []config.Node{
		{Name: "node1", Address: "127.0.0.1:8889", PresenceAddresses: []string{nodeAddrs[0]}},
		{Name: "node2", Address: "127.0.0.1:8890", PresenceAddresses: []string{nodeAddrs[1]}},
	}
	if err := cfg.Validate(config.RoleFanout); err != nil {
		return err
	}
	brokers := config.SplitList(f.brokers)
	clean.add(func() { deleteKafka(brokers, cfg) })

	fmt.Printf("fanout-bench: %d members, %d online over %v; page %d, MGET %d, batch %d, shard %d, workers %d, partitions %d; GOMAXPROCS %d\n",
		f.members, f.online, nodeAddrs, cfg.MySQL.PaginationLength, cfg.UserActivityAskBuffer, cfg.Fanout.BatchSize,
		cfg.Fanout.ShardSize, cfg.LogicProcessNumber, cfg.Bus.Partitions, runtime.GOMAXPROCS(0))

	t := time.Now()
	if err := seedMySQL(ctx, cfg.MySQL, f, prefix); err != nil {
		return fmt.Errorf("seed mysql: %w", err)
	}
	fmt.Printf("seeded MySQL in %.1fs\n", time.Since(t).Seconds())
	t = time.Now()
	if err := seedRedis(ctx, rdb, f, prefix); err != nil {
		return fmt.Errorf("seed redis: %w", err)
	}
	fmt.Printf("seeded Redis in %.1fs\n", time.Since(t).Seconds())

	// --- The fanout service, exactly as production assembles it.
	seedHWM := vmKB("VmHWM")
	runtime.GC()
	debug.FreeOSMemory()
	resetHWM()
	svc, err := startFanout(ctx, cfg, f, brokers, prefix, runID)
	if err != nil {
		return err
	}
	defer func() { _ = svc.stop() }()
	var on timings
	fmt.Println()
	fmt.Println("== fanout (this generation): announcement published → all batches acked")
	if err := profiled(f.cpuProfile, func() error {
		for r := 1; r <= f.runs; r++ {
			if err := svc.measure(fmt.Sprintf("%s-run%d", runID, r), fmt.Sprintf("run %d", r), &on); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	hwm, rss := vmKB("VmHWM"), vmKB("VmRSS")

	// --- What the progress bookkeeping costs: a second service with
	// [progress] disabled (the tracker does nothing), on topics and a group of
	// its own, and the two take turns so that the machine's drift touches
	// both alike.
	noProgress := cfg
	noProgress.Progress.Disabled = true
	noProgress.Bus.AnnouncementsTopic = runID + "_np_ann"
	noProgress.Bus.DeliveriesPrefix = runID + "_np_del."
	noProgress.Bus.DeadLetterTopic = runID + "_np_dlq"
	noProgress.Fanout.GroupName = runID + "_np_group"
	clean.add(func() { deleteKafka(brokers, noProgress) })
	bare, err := startFanout(ctx, noProgress, f, brokers, prefix, runID+"-np")
	if err != nil {
		return fmt.Errorf("service without progress: %w", err)
	}
	defer func() { _ = bare.stop() }()
	fmt.Println()
	fmt.Println("== the same with [progress] disabled, in turns with progress on")
	var pairOn, pairOff timings
	for r := 1; r <= f.pairs; r++ {
		turns := []struct {
			p    *fanoutUnderTest
			mode string
			out  *timings
		}{{svc, "on", &pairOn}, {bare, "off", &pairOff}}
		if r%2 == 0 {
			slices.Reverse(turns)
		}
		for _, tu := range turns {
			if err := tu.p.measure(fmt.Sprintf("%s-pair%d-%s", runID, r, tu.mode), fmt.Sprintf("pair %d, progress %s", r, tu.mode), tu.out); err != nil {
				return err
			}
		}
	}
	if err := bare.stop(); err != nil {
		return fmt.Errorf("service without progress: %w", err)
	}
	if err := svc.stop(); err != nil {
		return fmt.Errorf("service: %w", err)
	}

	times := on.times
	sorted := slices.Sorted(slices.Values(times))
	median := sorted[len(sorted)/2]
	fmt.Printf("verified          every run: %d recipients, each once, on its node's topic\n", f.online)
	fmt.Printf("seconds           median %.3f, best %.3f, worst %.3f of %d runs\n", median, sorted[0], sorted[len(sorted)-1], len(sorted))
	fmt.Printf("members/s         %.0f (median run)\n", float64(f.members)/median)
	offMedian := pairOff.median()
	overhead := pairOverhead(pairOn.times, pairOff.times)
	cpuOverhead := pairOverhead(pairOn.self, pairOff.self)
	fmt.Printf("progress off      median %.3f of runs %v, against %v with it on in the same turns: the bookkeeping costs %+.1f%% (median of the pairs)\n",
		offMedian, pairOff.times, pairOn.times, overhead)
	fmt.Printf("                  in this process's CPU: median %.3f CPU-s off, %.3f on, %+.1f%% (median of the pairs)\n",
		medianOf(pairOff.self), medianOf(pairOn.self), cpuOverhead)
	fmt.Printf("peak RSS          %.1f MiB over the runs (VmHWM reset after seeding; now %.1f MiB; seeding peak %.1f MiB)\n",
		float64(hwm)/1024, float64(rss)/1024, float64(seedHWM)/1024)
	elapsed := time.Duration(median * float64(time.Second))
	size := fmt.Sprintf("%dk", f.members/1000)
	if f.members%1_000_000 == 0 {
		size = fmt.Sprintf("%dm", f.members/1_000_000)
	}
	figures := map[string]benchreport.Figure{
		"fanout_" + size + "_seconds":             {Value: median, Note: fmt.Sprintf("median of %d: channel event published until every batch is acked, %d members, %d online on 2 nodes; runs %v", len(sorted), f.members, f.online, times)},
		"fanout_members_per_second":               {Value: float64(f.members) / median},
		"fanout_peak_rss_mib":                     {Value: float64(hwm) / 1024, Note: "VmHWM over the timed runs, in-process"},
		"fanout_" + size + "_no_progress_seconds": {Value: offMedian, Note: fmt.Sprintf("as fanout_%s_seconds with [progress] disabled (no bookkeeping), a second service taking turns with the first; runs %v, progress on in the same turns %v", size, pairOff.times, pairOn.times)},
		"fanout_progress_overhead_percent":        {Value: overhead, Note: fmt.Sprintf("the hot-path cost of progress: median over %d turns of (on - off) / off, each pair run back to back", len(pairOn.times))},
		"fanout_progress_cpu_overhead_percent": {Value: cpuOverhead, Note: fmt.Sprintf(
			"the same for the CPU of the process that runs both services (the idle one costs alike in either turn); CPU-s off %.2f, on %.2f", pairOff.self, pairOn.self)},
	}
	if len(on.cpu) > 0 && len(f.serverPIDs) > 0 {
		cpu := medianOf(on.cpu)
		figures["fanout_"+size+"_cpu_seconds"] = benchreport.Figure{Value: cpu, Note: fmt.Sprintf(
			"median CPU seconds of a timed run: fanout, MariaDB, Redis and Kafka together; on %d cores no run ends before %.2fs", runtime.NumCPU(), cpu/float64(runtime.NumCPU()))}
		fmt.Printf("CPU               median %.2f CPU-s per run (fanout and its servers): %.2fs of %d cores\n", cpu, cpu/float64(runtime.NumCPU()), runtime.NumCPU())
	}
	if len(on.split) > 0 {
		split := medianOf(on.split)
		how := "the channel cut each time, one index look-up per shard ([fanout] member_count_max_age 0)"
		if age := cfg.Fanout.MemberCountMaxAge.D(); age > 0 {
			how = fmt.Sprintf("the runs follow an untimed announcement of the channel, so nothing was read to cut it: its cut is remembered for [fanout] member_count_max_age (%s)", age)
		}
		figures["fanout_"+size+"_split_seconds"] = benchreport.Figure{Value: split,
			Note: fmt.Sprintf("median time from publish until the shard tasks were queued, %d runs; %s", len(on.split), how)}
		fmt.Printf("split             median %.3f s until the shard tasks were queued; %s\n", split, how)
	}
	defer func() {
		if !f.record {
			return
		}
		if err := benchreport.Record(figures); err != nil {
			fmt.Fprintln(os.Stderr, "bench report:", err)
		}
	}()

	if f.skipFirstGen {
		return nil
	}
	fmt.Println()
	fmt.Printf("== first generation's paging: LIMIT offset,%d without ORDER BY + MGET per page (cap %s)\n", f.firstGenPage, f.firstGenCap)
	fg, err := firstGen(ctx, cfg, rdb, f)
	if err != nil {
		return fmt.Errorf("first generation: %w", err)
	}
	fmt.Printf("pages             %d of %d (%d members, %d online) in %.1fs\n", fg.pages, fg.totalPages, fg.rows, fg.online, fg.elapsed.Seconds())
	if fg.complete {
		figures["fanout_first_generation_seconds"] = benchreport.Figure{Value: fg.elapsed.Seconds(), Note: "baseline: the first generation's paging, measured"}
	} else {
		figures["fanout_first_generation_seconds"] = benchreport.Figure{Value: fg.estimate, Note: fmt.Sprintf("baseline: the first generation's paging, %d of %d pages measured, the rest extrapolated", fg.pages, fg.totalPages)}
	}
	if fg.complete {
		fmt.Printf("seconds           %.1f (complete, measured)\n", fg.elapsed.Seconds())
		fmt.Printf("ratio             %.0fx slower than this generation's median\n", fg.elapsed.Seconds()/elapsed.Seconds())
	} else {
		fmt.Printf("page time         %.2f ms at page 0 growing %.4f ms per page (least-squares fit of %d pages)\n", fg.a*1000, fg.b*1000, fg.pages)
		fmt.Printf("seconds           ~%.0f extrapolated by the fit (≥ %.0f by the measured rate alone); NOT measured\n", fg.estimate, fg.linear)
		fmt.Printf("ratio             ~%.0fx slower than this generation's median (≥ %.0fx)\n", fg.estimate/elapsed.Seconds(), fg.linear/elapsed.Seconds())
	}
	return nil
}

func seedMySQL(ctx context.Context, c config.MySQL, f flags, prefix string) error {
	st, err := mysqlstore.Open(c, zerolog.Nop())
	if err != nil {
		return err
	}
	defer st.Close()
	db := st.DB()
	seed := mysqltest.Seed{DB: db}
	if err := seed.AddChannel(ctx, 1, "bench", audience.StateAccepted); err != nil {
		return err
	}
	if err := seed.AddChannel(ctx, 2, "other", audience.StateAccepted); err != nil {
		return err
	}
	const rows = 5000
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(f.seedConns, 1))
	for from := 0; from < f.members; from += rows {
		to := min(from+rows, f.members)
		g.Go(func() error {
			var b strings.Builder
			b.Grow(32 + (to-from)*24)
			b.WriteString("INSERT INTO ws_channel_members (member_channelid, member_username) VALUES ")
			for i := from; i < to; i++ {
				if i > from {
					b.WriteByte(',')
				}
				// Integers and digits only: safe to inline, and one statement per 5,000 rows.
				b.WriteString("(1,'")
				b.WriteString(username(prefix, i))
				b.WriteString("')")
			}
			_, err := db.ExecContext(gctx, b.String())
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	// A second, small channel after the big one, so the table is not one channel alone.
	_, err = db.ExecContext(ctx, "INSERT INTO ws_channel_members (member_channelid, member_username) SELECT 2, member_username FROM ws_channel_members WHERE member_channelid = 1 ORDER BY member_id LIMIT 1000")
	if err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, "ANALYZE TABLE ws_channel_members")
	return err
}

func seedRedis(ctx context.Context, rdb *redis.Client, f flags, prefix string) error {
	const chunk = 1000
	pipe := rdb.Pipeline()
	sets := [2][]any{}
	var pairs []any
	flush := func() error {
		if len(pairs) > 0 {
			pipe.MSet(ctx, pairs...)
			pairs = pairs[:0]
		}
		for k := range sets {
			if len(sets[k]) > 0 {
				pipe.SAdd(ctx, nodeAddrs[k], sets[k]...)
				sets[k] = sets[k][:0]
			}
		}
		if pipe.Len() >= 50 {
			if _, err := pipe.Exec(ctx); err != nil {
				return err
			}
		}
		return nil
	}
	for i := range f.members {
		k, ok := onlineAt(i, f.members, f.online)
		if !ok {
			continue
		}
		u := username(prefix, i)
		pairs = append(pairs, u, nodeAddrs[k])
		sets[k] = append(sets[k], u)
		if len(pairs) >= 2*chunk {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	_, err := pipe.Exec(ctx)
	return err
}

// verify reads both deliveries topics and checks every online member is there
// exactly once, on the node its presence names.
func verify(ctx context.Context, brokers []string, cfg config.Config, f flags, prefix, id string) error {
	seen := make([]bool, f.members)
	total := 0
	for k, n := range cfg.Nodes {
		topic := cfg.DeliveriesTopic(n.Name)
		err := readTopic(ctx, brokers, topic, func(m kafka.Message) error {
			b, err := announcement.DecodeBatch(m.Value)
			if err != nil {
				return err
			}
			if b.AnnouncementID != id {
				return nil
			}
			for _, r := range b.Recipients {
				i, err := strconv.Atoi(strings.TrimPrefix(r, prefix))
				if err != nil || i < 0 || i >= f.members {
					return fmt.Errorf("unexpected recipient %q", r)
				}
				node, ok := onlineAt(i, f.members, f.online)
				if !ok {
					return fmt.Errorf("offline member %s delivered", r)
				}
				if node != k {
					return fmt.Errorf("%s delivered to %s, its presence names %s", r, n.Name, cfg.Nodes[node].Name)
				}
				if seen[i] {
					return fmt.Errorf("%s delivered twice", r)
				}
				seen[i] = true
				total++
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if total != f.online {
		return fmt.Errorf("%d recipients delivered, want %d", total, f.online)
	}
	return nil
}

func readTopic(ctx context.Context, brokers []string, topic string, fn func(kafka.Message) error) error {
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return err
	}
	parts, err := conn.ReadPartitions(topic)
	_ = conn.Close()
	if err != nil {
		return err
	}
	for _, p := range parts {
		last, err := kafkatest.LastOffset(ctx, brokers[0], topic, p.ID)
		if err != nil || last == 0 {
			if err != nil {
				return err
			}
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond, MaxBytes: 16 << 20})
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				_ = r.Close()
				return err
			}
			if err := fn(m); err != nil {
				_ = r.Close()
				return err
			}
			if m.Offset >= last-1 {
				break
			}
		}
		_ = r.Close()
	}
	return nil
}

type firstGenResult struct {
	pages, totalPages, rows, online int
	elapsed                         time.Duration
	complete                        bool
	a, b                            float64 // page time = a + b·page (seconds)
	estimate, linear                float64 // seconds for all pages
}

// firstGen pages the channel like the first generation: LIMIT offset,n with no
// ORDER BY (MariaDB re-reads the skipped rows for every page), then one MGET of
// the page in Redis, strictly one after the other.
func firstGen(ctx context.Context, cfg config.Config, rdb *redis.Client, f flags) (firstGenResult, error) {
	st, err := mysqlstore.Open(cfg.MySQL, zerolog.Nop())
	if err != nil {
		return firstGenResult{}, err
	}
	defer st.Close()
	db := st.DB()
	res := firstGenResult{totalPages: (f.members + f.firstGenPage - 1) / f.firstGenPage}
	times := make([]float64, 0, res.totalPages)
	start := time.Now()
	names := make([]string, 0, f.firstGenPage)
	for page := 0; page < res.totalPages; page++ {
		if time.Since(start) > f.firstGenCap {
			break
		}
		t := time.Now()
		rows, err := db.QueryContext(ctx, "SELECT member_username FROM ws_channel_members WHERE member_channelid = ? LIMIT ?, ?",
			1, page*f.firstGenPage, f.firstGenPage)
		if err != nil {
			return res, err
		}
		names = names[:0]
		for rows.Next() {
			var u string
			if err := rows.Scan(&u); err != nil {
				rows.Close()
				return res, err
			}
			names = append(names, u)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return res, err
		}
		for off := 0; off < len(names); off += f.firstGenAskBuffer {
			vals, err := rdb.MGet(ctx, names[off:min(off+f.firstGenAskBuffer, len(names))]...).Result()
			if err != nil {
				return res, err
			}
			for _, v := range vals {
				if v != nil {
					res.online++
				}
			}
		}
		res.rows += len(names)
		res.pages++
		times = append(times, time.Since(t).Seconds())
	}
	res.elapsed = time.Since(start)
	if res.pages == res.totalPages {
		res.complete = true
		return res, nil
	}
	// Least-squares line through (page, seconds): each page re-reads all rows before it.
	n := float64(len(times))
	var sx, sy, sxx, sxy float64
	for i, y := range times {
		x := float64(i)
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	res.b = (n*sxy - sx*sy) / (n*sxx - sx*sx)
	res.a = (sy - res.b*sx) / n
	if math.IsNaN(res.b) || res.b < 0 {
		res.b = 0
	}
	N := float64(res.totalPages)
	res.estimate = N*res.a + res.b*N*(N-1)/2
	res.linear = res.elapsed.Seconds() * N / n
	res.estimate = max(res.estimate, res.linear)
	return res, nil
}

func deleteKafka(brokers []string, cfg config.Config) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	c := &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}
	_, topics := topicsOf(cfg)
	if _, err := c.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics}); err != nil {
		fmt.Fprintln(os.Stderr, "delete topics:", err)
	}
	groups := []string{cfg.Fanout.GroupName, cfg.Fanout.GroupName + cfg.Bus.PrioritySuffix}
	if _, err := c.DeleteGroups(ctx, &kafka.DeleteGroupsRequest{GroupIDs: groups}); err != nil {
		fmt.Fprintln(os.Stderr, "delete group:", err)
	}
}

// cpuSeconds is this process's user+system CPU time.
type procCPU struct {
	pid  int
	name string
	sec  float64
}

// serverCPU reads the CPU seconds the given pids used so far.
func serverCPU(pids string) []procCPU {
	var out []procCPU
	for _, p := range config.SplitList(pids) {
		pid, err := strconv.Atoi(p)
		if err != nil {
			continue
		}
		if name, sec, ok := benchreport.ProcessCPU(pid); ok {
			out = append(out, procCPU{pid, name, sec})
		}
	}
	return out
}

// vmKB reads a field of /proc/self/status in KiB (0 when unreadable).
func vmKB(field string) int64 {
	kb, _ := benchreport.ProcessKB(os.Getpid(), field)
	return kb
}

// resetHWM makes VmHWM start again from the current RSS (Linux ≥ 4.0), so
// the figure covers the fanout runID, not the seeding.
func resetHWM() {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintln(os.Stderr, "cannot reset VmHWM:", err)
	}
}

// timings are what a series of timed runs measured.
type timings struct {
	times []float64 // seconds per timed run
	cpu   []float64 // CPU seconds per timed run: fanout and the servers it reads and writes
	self  []float64 // CPU seconds per timed run of this process alone (the services under test)
	split []float64 // seconds until a run's shard tasks were queued (giant channels)
}

// median of the timed runs.
func (t timings) median() float64 { return medianOf(t.times) }

// medianOf is the middle value of xs (the upper one of an even count).
func medianOf(xs []float64) float64 {
	sorted := slices.Sorted(slices.Values(xs))
	return sorted[len(sorted)/2]
}

// pairOverhead is the median of (on[i] - off[i]) / off[i], in percent: runs
// taken back to back cancel most of the machine's drift between them.
func pairOverhead(on, off []float64) float64 {
	n := min(len(on), len(off))
	if n == 0 {
		return math.NaN()
	}
	d := make([]float64, n)
	for i := range n {
		d[i] = 100 * (on[i] - off[i]) / off[i]
	}
	slices.Sort(d)
	if n%2 == 0 {
		return (d[n/2-1] + d[n/2]) / 2
	}
	return d[n/2]
}

// profiled runs fn under a CPU profile written to path ("": no profile).
func profiled(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	pf, err := os.Create(path)
	if err != nil {
		return err
	}
	defer pf.Close()
	if err := pprof.StartCPUProfile(pf); err != nil {
		return err
	}
	defer pprof.StopCPUProfile()
	return fn()
}

// fanoutUnderTest is the fanout service running in-process on cfg, as
// production assembles it, warmed up; each measure times one announcement of
// the whole channel and verifies it.
type fanoutUnderTest struct {
	ctx         context.Context
	cfg         config.Config
	f           flags
	brokers     []string
	prefix      string
	tmpl        string
	dones       chan fanoutDone
	svcErr      chan error
	stopService context.CancelFunc
	stopped     bool
	w           *kafka.Writer
}

type fanoutDone struct {
	ev  announcement.Event
	res audience.Result
	at  time.Time
}

// startFanout starts the service on cfg (its own topics and group), joins it
// to its group with one small announcement, then sends f.warmupRuns untimed
// ones of the whole channel. runID names the warm-up events.
func startFanout(ctx context.Context, cfg config.Config, f flags, brokers []string, prefix, runID string) (*fanoutUnderTest, error) {
	level := zerolog.WarnLevel
	if f.verbose {
		level = zerolog.InfoLevel
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).Level(level).With().Timestamp().Str("service", "fanout").Logger()
	sctx, stopService := context.WithCancel(ctx)
	p := &fanoutUnderTest{
		ctx: ctx, cfg: cfg, f: f, brokers: brokers, prefix: prefix,
		tmpl:  fmt.Sprintf("<message from='%s' to='%%s' type='chat'><body>bench [inc_id]</body></message>", cfg.Component.JID()),
		dones: make(chan fanoutDone, 1024), svcErr: make(chan error, 1), stopService: stopService,
		w: &kafka.Writer{Addr: kafka.TCP(brokers...), Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll,
			BatchTimeout: time.Millisecond, Transport: &kafka.Transport{}},
	}
	go func() {
		p.svcErr <- run(sctx, log, cfg, hooks{resolved: func(ev announcement.Event, res audience.Result) {
			p.dones <- fanoutDone{ev, res, time.Now()}
		}})
	}()
	warm := announcement.Event{ID: runID + "-warmup", Kind: announcement.KindUsers, Usernames: []string{username(prefix, 0)}, Template: p.tmpl, CreatedAt: time.Now()}
	err := p.publish(warm)
	if err == nil {
		if err = p.wait(warm.ID, f.warmupTimeout, func(fanoutDone) bool { return true }); err != nil {
			err = fmt.Errorf("warm-up: %w", err)
		}
	}
	// Full-size and untimed: the first announcements of a giant channel after a start pay for the
	// servers' caches and the broker's JIT (C2 compiles its request path for several seconds).
	for w := 1; w <= f.warmupRuns && err == nil; w++ {
		if _, err = p.timed(fmt.Sprintf("%s-warm%d", runID, w)); err != nil {
			err = fmt.Errorf("full-size warm-up %d: %w", w, err)
		}
	}
	if err != nil {
		_ = p.stop()
		return nil, err
	}
	return p, nil
}

// stop stops the service and returns what its Run returned; later calls return nil.
func (p *fanoutUnderTest) stop() error {
	if p.stopped {
		return nil
	}
	p.stopped = true
	p.stopService()
	err := <-p.svcErr
	_ = p.w.Close()
	p.w.Transport.(*kafka.Transport).CloseIdleConnections()
	return err
}

func (p *fanoutUnderTest) publish(ev announcement.Event) error {
	v, err := ev.Encode()
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	for {
		err := p.w.WriteMessages(pctx, kafka.Message{Topic: p.cfg.Bus.AnnouncementsTopic, Key: []byte(ev.ID), Value: v})
		if err == nil {
			return nil
		}
		if pctx.Err() != nil {
			return fmt.Errorf("publish: %w", err)
		}
		time.Sleep(100 * time.Millisecond) // the service creates the topics at start
	}
}

func (p *fanoutUnderTest) wait(id string, timeout time.Duration, until func(fanoutDone) bool) error {
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	for {
		select {
		case d := <-p.dones:
			if d.ev.ID == id && until(d) {
				return nil
			}
		case err := <-p.svcErr:
			p.stopped = true
			return fmt.Errorf("service stopped: %v", err)
		case <-tm.C:
			return fmt.Errorf("%s: timed out after %s", id, timeout)
		case <-p.ctx.Done():
			return p.ctx.Err()
		}
	}
}

type runResult struct {
	elapsed, split  time.Duration
	shards, batches int
	members, online int
	perNode         map[string]int
	cpu             float64
	srv0, srv1      []procCPU
}

// timed publishes an announcement of the whole channel and waits until every
// shard of it is resolved, each batch acknowledged by Kafka.
func (p *fanoutUnderTest) timed(id string) (runResult, error) {
	ev := announcement.Event{ID: id, Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{ID: 1},
		Template: p.tmpl, Persist: true, Source: "bench"}
	res := runResult{perNode: map[string]int{}}
	cpu0 := benchreport.SelfCPU().Seconds()
	res.srv0 = serverCPU(p.f.serverPIDs)
	start := time.Now()
	ev.CreatedAt = start
	if err := p.publish(ev); err != nil {
		return res, err
	}
	finished := 0
	var lastAt time.Time
	err := p.wait(ev.ID, p.f.timeout, func(d fanoutDone) bool {
		switch d.res.Outcome {
		case audience.Split:
			res.shards, res.split = d.res.Shards, d.at.Sub(start)
		case audience.Delivered:
			finished++
			res.members += d.res.Audience
			res.online += d.res.Recipients
			res.batches += d.res.Batches
			for n, c := range d.res.PerNode {
				res.perNode[n] += c
			}
			lastAt = d.at
			if res.shards == 0 && d.ev.Kind == announcement.KindChannel {
				res.shards = 1 // small channel: resolved inline
			}
		default:
			fmt.Fprintf(os.Stderr, "unexpected result %+v\n", d.res)
		}
		return res.shards > 0 && finished == res.shards
	})
	res.elapsed = lastAt.Sub(start)
	res.cpu = benchreport.SelfCPU().Seconds() - cpu0
	res.srv1 = serverCPU(p.f.serverPIDs)
	return res, err
}

// measure times one announcement (event id), prints it under label, adds it
// to out and verifies, untimed, that every online member got it once.
func (p *fanoutUnderTest) measure(id, label string, out *timings) error {
	res, err := p.timed(id)
	if err != nil {
		return err
	}
	out.times = append(out.times, res.elapsed.Seconds())
	out.self = append(out.self, res.cpu)
	if res.split > 0 {
		out.split = append(out.split, res.split.Seconds())
	}
	split := "none (channel within one shard, resolved inline)"
	if res.split > 0 {
		split = fmt.Sprintf("%d shard tasks queued after %.3fs", res.shards, res.split.Seconds())
	}
	fmt.Printf("%s: %.3fs  %d members, %d online (node1 %d, node2 %d), %d batches, %s; %.0f members/s; fanout CPU %.2fs",
		label, res.elapsed.Seconds(), res.members, res.online, res.perNode["node1"], res.perNode["node2"], res.batches, split,
		float64(res.members)/res.elapsed.Seconds(), res.cpu)
	total := res.cpu
	for _, s1 := range res.srv1 {
		for _, s0 := range res.srv0 {
			if s1.pid == s0.pid {
				fmt.Printf(", %s %.2fs", s1.name, s1.sec-s0.sec)
				total += s1.sec - s0.sec
			}
		}
	}
	out.cpu = append(out.cpu, total)
	fmt.Printf("; %.2f CPU-s in all, %.2fs of %d cores\n", total, total/float64(runtime.NumCPU()), runtime.NumCPU())
	if err := verify(p.ctx, p.brokers, p.cfg, p.f, p.prefix, id); err != nil {
		return fmt.Errorf("verify %s: %w", label, err)
	}
	return nil
}
