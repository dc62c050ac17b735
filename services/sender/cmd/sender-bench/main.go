// Command sender-bench measures the sender's hot path — render, rate-limit
// check, buffered write, fence — on one component connection into a
// counting sink (a local listener that performs the XEP-0114 handshake and
// counts stanzas), against the baseline of sending each stanza with
// mellium's Session.Send, measured in the same run on the same sink.
//
// Every figure, the baseline's too, is the median of -runs runs of -n
// stanzas, and the runs of the figures interleave (round i runs each figure
// once), so a swing of this shared host's speed falls on all of them alike.
// A run whose sink counted other than -n stanzas fails the benchmark.
//
//	go run ./cmd/sender-bench [-n 300000] [-runs 5] [-batch 1000] [-inflight 4] [-cpuprofile f]
package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/xml"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"mellium.im/xmpp/component"
	"mellium.im/xmpp/jid"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/benchreport"
	"github.com/announcer/announcer/pkg/progress"
	"github.com/announcer/announcer/pkg/redisconn"
	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/pkg/testkit/xmppsink"
	"github.com/announcer/announcer/services/sender/internal/delivery"
	"github.com/announcer/announcer/services/sender/internal/xmpplink"
)

const (
	secret = "bench"
	domain = "announcer.localhost"
	users  = "localhost"
)

// template is a ~600-byte stanza shaped like the first generation's sample.
const template = "<message xml:lang='en' to='%s' from='" + domain + "' type='chat' id='[inc_id]'>" +
	"<body>Announcement: the service will be upgraded tonight between 01:00 and 03:00 UTC; " +
	"messages sent meanwhile are delivered afterwards. Thank you for your patience.</body>" +
	"<body xml:lang='REPLY_ON_THREAD_ID'>989198872580</body><body xml:lang='MAJOR_TYPE'>SIMPLE_CHAT</body>" +
	"<body xml:lang='MINOR_TYPE'>TEXT</body><body xml:lang='REPLY_ON_MESSAGE_ID'>15219732781131af24fc1zwf</body>" +
	"<body xml:lang='SEND_TIME_IN_GMT'>1521973339583</body><body xml:lang='SEQ'>[inc_id]</body></message>"

func main() {
	n := flag.Int("n", 300000, "stanzas for each hot-path run")
	batchSize := flag.Int("batch", 1000, "recipients per batch (one fence each)")
	inflight := flag.Int("inflight", 4, "batches in flight at once in the pipelined run ([sender] max_in_flight)")
	runs := flag.Int("runs", 5, "runs per figure, the baseline's too (the median is reported)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole benchmark to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "sender-bench:", err)
			os.Exit(1)
		}
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}
	if err := run(*n, *batchSize, *inflight, max(*runs, 1)); err != nil {
		fmt.Fprintln(os.Stderr, "sender-bench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

type result struct {
	name     string
	stanzas  int
	wall     time.Duration
	cpu      time.Duration
	received int64
}

func (r result) print() {
	rate := float64(r.stanzas) / r.wall.Seconds()
	fmt.Printf("  %-58s %9.0f stanzas/s  %6.2f µs wall  %6.2f µs CPU per stanza  (%d sent, %d counted by the sink)\n",
		r.name, rate, us(r.wall, r.stanzas), us(r.cpu, r.stanzas), r.stanzas, r.received)
}

func us(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(n) }

func run(n, batchSize, inflight, runs int) error {
	tmpl, err := stanza.Parse([]byte(template), stanza.Options{ComponentDomain: domain})
	if err != nil {
		return err
	}
	fmt.Printf("sender hot path, 1 component connection into a counting sink, %d-byte stanzas, GOMAXPROCS=%d, %s\n",
		len(tmpl.AppendRender(nil, "user123456@"+users, 123456)), runtime.GOMAXPROCS(0), runtime.Version())

	figs := []func() (result, error){
		func() (result, error) { return hotPath(n, batchSize, 1, nil) },
		func() (result, error) { return hotPath(n, batchSize, inflight, nil) },
		func() (result, error) { return baseline(tmpl, n) },
	}
	// The same with its bookkeeping: each batch's fence recorded in the
	// progress store (Redis), as a deployed sender does.
	if addr := os.Getenv("ANNOUNCER_REDIS_ADDR"); addr != "" {
		tr, stop, err := tracker(addr)
		if err != nil {
			return err
		}
		defer stop()
		figs = append(figs, func() (result, error) { return hotPath(n, batchSize, inflight, tr) })
	}
	meds, err := interleaved(runs, figs)
	if err != nil {
		return err
	}
	ours1, oursN, base := meds[0], meds[1], meds[2]
	var tracked result
	if len(meds) > 3 {
		tracked = meds[3]
	}
	ours1.print()
	oursN.print()
	if tracked.stanzas > 0 {
		tracked.print()
	}
	base.print()
	fmt.Printf("  speed-up over the baseline: %.1fx (1 batch in flight), %.1fx (%d in flight)\n",
		rate(ours1)/rate(base), rate(oursN)/rate(base), inflight)
	figures := map[string]benchreport.Figure{
		"sender_stanzas_per_second":                  {Value: rate(oursN), Note: oursN.name},
		"sender_one_in_flight_stanzas_per_second":    {Value: rate(ours1), Note: ours1.name},
		"sender_baseline_mellium_stanzas_per_second": {Value: rate(base), Note: base.name},
	}
	if tracked.stanzas > 0 {
		fmt.Printf("  progress bookkeeping costs %.1f%% of the hot path's rate (%d in flight)\n", 100*(1-rate(tracked)/rate(oursN)), inflight)
		figures["sender_with_progress_stanzas_per_second"] = benchreport.Figure{Value: rate(tracked), Note: tracked.name}
	}
	return benchreport.Record(figures)
}

// tracker is a progress tracker on the Redis at addr, under a key prefix of
// its own whose records expire within a minute.
func tracker(addr string) (*progress.Tracker, func(), error) {
	conn, err := redisconn.New("bench progress", redisconn.Options{Addrs: []string{addr}})
	if err != nil {
		return nil, nil, err
	}
	store := progress.NewStore(conn, progress.Options{Prefix: fmt.Sprintf("sender-bench:%d:", time.Now().UnixNano()), TTL: time.Minute})
	tr := progress.NewTracker(store, progress.TrackerOptions{}, zerolog.Nop(), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = tr.Run(ctx) }()
	return tr, func() { cancel(); <-done; _ = store.Close() }, nil
}

func rate(r result) float64 { return float64(r.stanzas) / r.wall.Seconds() }

// interleaved runs every figure runs times, round by round (each figure once
// per round), and returns each figure's run of median rate. A run whose sink
// counted other than the stanzas sent is an error: its rate would be a lie.
func interleaved(runs int, figs []func() (result, error)) ([]result, error) {
	all := make([][]result, len(figs))
	for range runs {
		for i, fn := range figs {
			r, err := fn()
			if err == nil && r.received != int64(r.stanzas) {
				err = fmt.Errorf("%s: the sink counted %d stanzas of %d sent", r.name, r.received, r.stanzas)
			}
			if err != nil {
				return nil, err
			}
			all[i] = append(all[i], r)
		}
	}
	meds := make([]result, len(figs))
	for i, rs := range all {
		meds[i] = median(rs)
	}
	return meds, nil
}

// median returns the run of median rate, its name listing every run's rate.
func median(all []result) result {
	runs := len(all)
	slices.SortFunc(all, func(a, b result) int { return cmp.Compare(rate(a), rate(b)) })
	m := all[len(all)/2]
	if runs > 1 {
		rates := make([]string, len(all))
		for i, r := range all {
			rates[i] = fmt.Sprintf("%.2fM", rate(r)/1e6)
			if rate(r) < 1e6 {
				rates[i] = fmt.Sprintf("%.1fk", rate(r)/1e3)
			}
		}
		m.name += fmt.Sprintf(", median of %d (%s)", runs, strings.Join(rates, " "))
	}
	return m
}

// hotPath delivers n stanzas in fenced batches through the real use case and
// connection code, unlimited rate, inflight batches at a time.
func hotPath(n, batchSize, inflight int, tr *progress.Tracker) (result, error) {
	s, err := xmppsink.Start(secret)
	if err != nil {
		return result{}, err
	}
	defer s.Close()
	reg := prometheus.NewRegistry()
	pool, err := xmpplink.NewPool(xmpplink.Options{
		Node: "bench", Addr: s.Addr(), JID: domain, Secret: secret, ServerDomain: users, Conns: 1,
	}, zerolog.Nop(), xmpplink.NewMetrics(reg))
	if err != nil {
		return result{}, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { _ = pool.Run(ctx) })
	defer wg.Wait()
	defer cancel()
	for pool.Up() < 1 {
		time.Sleep(time.Millisecond)
	}
	opt := delivery.Options{UserDomain: users, Templates: stanza.NewCache(stanza.Options{ComponentDomain: domain}, 16),
		Conns: 1, RatePerConn: 0}
	if tr != nil {
		opt.Progress = tr
	}
	uc := delivery.New(opt, delivery.LinksOf(pool.Acquire), zerolog.Nop(), delivery.NewMetrics(reg))

	batches := make([]*announcement.Batch, (n+batchSize-1)/batchSize)
	for i := range batches {
		b := &announcement.Batch{AnnouncementID: "bench", Seq: i, Template: template, FirstIncID: uint64(i * batchSize)}
		for j := 0; j < batchSize && i*batchSize+j < n; j++ {
			b.Recipients = append(b.Recipients, "user"+strconv.Itoa(i*batchSize+j))
		}
		batches[i] = b
	}
	runtime.GC()
	work := make(chan *announcement.Batch)
	errc := make(chan error, inflight)
	start, cpu0 := time.Now(), benchreport.SelfCPU()
	var workers sync.WaitGroup
	for range inflight {
		workers.Go(func() {
			for b := range work {
				if err := uc.Deliver(ctx, *b); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	for _, b := range batches {
		work <- b
	}
	close(work)
	workers.Wait()
	wall, cpu := time.Since(start), benchreport.SelfCPU()-cpu0
	select {
	case err := <-errc:
		return result{}, err
	default:
	}
	name := fmt.Sprintf("pre-rendered + bufio, fenced batches of %d, %d in flight", batchSize, inflight)
	if tr != nil {
		name += ", progress recorded"
	}
	return result{name: name, stanzas: n, wall: wall, cpu: cpu, received: s.Stanzas()}, nil
}

// baseline sends each rendered stanza with mellium's Session.Send (XML
// tokens re-encoded, one flush per stanza), the first generation's way.
func baseline(tmpl *stanza.Template, n int) (result, error) {
	s, err := xmppsink.Start(secret)
	if err != nil {
		return result{}, err
	}
	defer s.Close()
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	ctx := context.Background()
	sess, err := component.NewSession(ctx, jid.MustParse(domain), []byte(secret), conn)
	if err != nil {
		return result{}, err
	}
	runtime.GC()
	buf := make([]byte, 0, 1024)
	start, cpu0 := time.Now(), benchreport.SelfCPU()
	for i := range n {
		buf = tmpl.AppendRender(buf[:0], "user"+strconv.Itoa(i)+"@"+users, uint64(i))
		if err := sess.Send(ctx, xml.NewDecoder(bytes.NewReader(buf))); err != nil {
			return result{}, err
		}
	}
	// Wait for the sink, so both runs are measured up to receipt; a sink
	// that stops counting short of n fails the run rather than hanging it.
	last, lastAt := int64(-1), time.Now()
	for got := s.Stanzas(); got < int64(n); got = s.Stanzas() {
		if got != last {
			last, lastAt = got, time.Now()
		} else if time.Since(lastAt) > 10*time.Second {
			return result{}, fmt.Errorf("baseline: the sink counted %d stanzas of %d sent, and no more for 10s", got, n)
		}
		time.Sleep(100 * time.Microsecond)
	}
	wall, cpu := time.Since(start), benchreport.SelfCPU()-cpu0
	return result{name: "baseline: mellium Session.Send per stanza", stanzas: n, wall: wall, cpu: cpu, received: s.Stanzas()}, nil
}
