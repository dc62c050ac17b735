// Command ingress-bench measures accepted requests/s and latency of
// POST /v1/announce/users (10 usernames by default) at a fixed concurrency
// against the real broker, and two baselines measured in the same run:
//
//   - validate-only: the same gin handler and use case with a publisher that
//     returns at once (the ceiling without Kafka);
//   - unbatched: the same stack writing through a kafka-go writer with
//     BatchSize 1, i.e. one produce request per announcement;
//   - ingress: the real binary, built at the start and run as a process on
//     loopback ports with unique topics, batching concurrent requests into
//     shared produce requests.
//
// Afterwards it counts the records in the ingress run's topic: every 202
// must be there. The topics it created are deleted at the end.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/benchreport"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/httpserver"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/services/ingress/internal/announce"
	"github.com/announcer/announcer/services/ingress/internal/httpapi"
	"github.com/announcer/announcer/services/ingress/internal/publisher"
)

func main() {
	exit := 0
	defer func() { os.Exit(exit) }()
	duration := flag.Duration("duration", 5*time.Second, "measured time per run (after a 1 s warm-up)")
	concurrency := flag.Int("concurrency", 64, "concurrent clients (each waits for its answer before the next request)")
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka brokers, comma-separated")
	users := flag.Int("usernames", 10, "usernames per request")
	rounds := flag.Int("rounds", 3, "rounds of all runs; the medians are reported")
	skipUnbatched := flag.Bool("skip-unbatched", false, "skip the unbatched baseline")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ingress-bench:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "ingress-bench:", err)
			os.Exit(1)
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}
	if err := bench(*duration, *concurrency, config.SplitList(*brokers), *users, *rounds, *skipUnbatched); err != nil {
		fmt.Fprintln(os.Stderr, "ingress-bench:", err)
		exit = 1
	}
}

func bench(d time.Duration, conc int, brokers []string, users, rounds int, skipUnbatched bool) error {
	if conc < 1 || d <= 0 || users < 1 || rounds < 1 || len(brokers) == 0 {
		return errors.New("want -concurrency >= 1, -duration > 0, -usernames >= 1, -rounds >= 1 and brokers")
	}
	pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := kafkabus.Ping(pctx, kafkabus.Plaintext(brokers))
	cancel()
	if err != nil {
		return err
	}

	cfg := benchConfig(brokers)
	body := requestBody(users)
	suffix := randomSuffix()
	cfg.Bus.AnnouncementsTopic, cfg.Bus.DeadLetterTopic = "bench_announcements_"+suffix, "bench_dlq_"+suffix
	unbatchedTopic := "bench_unbatched_" + suffix
	defer deleteTopics(brokers, cfg.Bus.AnnouncementsTopic, cfg.PriorityTopic(cfg.Bus.AnnouncementsTopic), cfg.Bus.DeadLetterTopic, unbatchedTopic)
	if !skipUnbatched {
		if err := kafkabus.EnsureTopics(context.Background(), kafkabus.Plaintext(brokers), kafkabus.Topic{Name: unbatchedTopic, Partitions: cfg.Bus.Partitions, ReplicationFactor: 1}); err != nil {
			return err
		}
	}

	fmt.Printf("ingress-bench: POST %s, %d usernames (%d-byte body), concurrency %d, %d rounds of %s per run (+1 s warm-up), brokers %v, GOMAXPROCS %d, NumCPU %d, writer batch <= %d / %s linger, %d partitions\n",
		httpapi.RouteUsers, users, len(body), conc, rounds, d, brokers, runtime.GOMAXPROCS(0), runtime.NumCPU(), writerBatchSize, cfg.Bus.BatchTimeout.D(), cfg.Bus.Partitions)
	header()

	// The runs of a round go back to back and rounds repeat, so a neighbour's
	// load on the machine hits all kinds alike; the medians are the figures.
	bin, err := buildIngress()
	if err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Dir(bin))
	const (
		validateOnly = "validate-only (no Kafka)"
		ingress      = "ingress process (batched, acks=all)"
		unbatched    = "unbatched (1 produce/request)"
	)
	kinds := []string{validateOnly, ingress}
	if !skipUnbatched {
		kinds = append(kinds, unbatched)
	}
	all := map[string][]result{}
	accepted := 0
	for round := 1; round <= rounds; round++ {
		for _, kind := range kinds {
			var res result
			var err error
			switch kind {
			case validateOnly:
				res, err = runHandler(cfg, discard{}, body, d, conc)
			case ingress:
				res, err = runService(bin, cfg, body, d, conc)
				accepted += res.acceptedTotal
			case unbatched:
				res, err = runUnbatched(cfg, brokers, unbatchedTopic, body, d, conc)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", kind, err)
			}
			res.print(fmt.Sprintf("%d: %s", round, kind))
			all[kind] = append(all[kind], res)
		}
	}
	if rounds > 1 {
		fmt.Printf("median of %d rounds:\n", rounds)
		for _, kind := range kinds {
			median(all[kind]).print(kind)
		}
	}
	figures := map[string]benchreport.Figure{}
	for kind, prefix := range map[string]string{ingress: "ingress", validateOnly: "ingress_validate_only", unbatched: "ingress_unbatched"} {
		if rs := all[kind]; len(rs) > 0 {
			m := median(rs)
			note := fmt.Sprintf("%s; median of %d rounds, %d concurrent POST %s", kind, len(rs), conc, httpapi.RouteUsers)
			figures[prefix+"_accepted_per_second"] = benchreport.Figure{Value: m.rate, Note: note}
			figures[prefix+"_p99_ms"] = benchreport.Figure{Value: float64(m.p99.Microseconds()) / 1000, Note: note}
			figures[prefix+"_p50_ms"] = benchreport.Figure{Value: float64(m.p50.Microseconds()) / 1000, Note: note}
		}
	}
	if err := benchreport.Record(figures); err != nil {
		return err
	}

	// Users announcements take the priority lane.
	n := 0
	for _, topic := range []string{cfg.Bus.AnnouncementsTopic, cfg.PriorityTopic(cfg.Bus.AnnouncementsTopic)} {
		c, err := countRecords(brokers, topic)
		if err != nil {
			return err
		}
		n += c
	}
	verdict := "ok"
	if n < accepted {
		verdict = "LOST ANNOUNCEMENTS"
	}
	fmt.Printf("records in the ingress runs' topic: %d; 202 answers (incl. warm-up): %d — %s\n", n, accepted, verdict)
	if n < accepted {
		return errors.New("fewer records than 202 answers")
	}
	return nil
}

// writerBatchSize is the ingress's own cap on records per produce request (run.go).
const writerBatchSize = 500

// buildIngress builds the service binary into a temporary folder.
func buildIngress() (string, error) {
	dir, err := os.MkdirTemp("", "ingress-bench")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "announcer-ingress")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/announcer/announcer/services/ingress")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("build the ingress: %w", err)
	}
	return bin, nil
}

// runService runs the ingress binary with cfg's bus and topics, loads it, and stops it with SIGTERM.
func runService(bin string, cfg config.Config, body []byte, d time.Duration, conc int) (result, error) {
	api, dbg := freeAddr(), freeAddr()
	toml := fmt.Sprintf(`rest_api_port = %q
debug_port = %q
[log]
log_level = "warning"
[component]
name = %q
domain = %q
[auth]
tokens = [%q]
[bus]
brokers = %q
announcements_topic = %q
dead_letter_topic = %q
partitions = %d
`, api, dbg, cfg.Component.Name, cfg.Component.Domain, cfg.Auth.Tokens[0].Value(), cfg.Bus.Brokers,
		cfg.Bus.AnnouncementsTopic, cfg.Bus.DeadLetterTopic, cfg.Bus.Partitions)
	path := filepath.Join(filepath.Dir(bin), "ingress.toml")
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		return result{}, err
	}
	cmd := exec.Command(bin, "-config", path)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		return cmd.Wait()
	}
	if err := waitReady("http://"+dbg+"/readyz", 60*time.Second); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return result{}, err
	}
	res, err := load("http://"+api+httpapi.RouteUsers, body, d, conc)
	if serr := stop(); serr != nil && err == nil {
		err = fmt.Errorf("ingress exited: %w", serr)
	}
	return res, err
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitReady(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s", url, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runUnbatched is the same API and use case on a writer that sends every
// announcement in a produce request of its own.
func runUnbatched(cfg config.Config, brokers []string, topic string, body []byte, d time.Duration, conc int) (result, error) {
	w := kafkabus.NewWriter(kafkabus.Plaintext(brokers), kafkabus.WriterOptions{BatchTimeout: cfg.Bus.BatchTimeout.D(), WriteTimeout: cfg.Bus.WriteTimeout.D(), BatchSize: 1})
	defer func() { _ = w.Close() }()
	pub, err := publisher.New(w, publisher.Options{AnnouncementsTopic: topic, MaxMessageBytes: cfg.Bus.MaxMessageBytes}, prometheus.NewRegistry())
	if err != nil {
		return result{}, err
	}
	return runHandler(cfg, pub, body, d, conc)
}

func benchConfig(brokers []string) config.Config {
	cfg := config.Default()
	cfg.RestAPIPort = "127.0.0.1:0"
	cfg.DebugPort = "127.0.0.1:0"
	cfg.Bus.Brokers = strings.Join(brokers, ",")
	cfg.Component.Name = "announcer.localhost"
	cfg.Component.Domain = "localhost"
	cfg.Auth.Tokens = []config.Secret{"bench-token-0123456789"}
	return cfg
}

// runHandler serves the API with pub behind it (no Kafka input, no debug port).
func runHandler(cfg config.Config, pub announce.Publisher, body []byte, d time.Duration, conc int) (result, error) {
	reg := prometheus.NewRegistry()
	svc, err := announce.New(pub, nil, announce.Limits{
		MaxBodyBytes: cfg.Ingress.MaxBodyBytes, MaxUsernames: cfg.Ingress.MaxUsernames, UserDomain: cfg.UserDomain(),
		Template: cfg.TemplateRules(), PublishTimeout: cfg.Ingress.PublishTimeout.D(),
	}, reg)
	if err != nil {
		return result{}, err
	}
	h, err := httpapi.New(svc, httpapi.Options{MaxBodyBytes: cfg.Ingress.MaxBodyBytes, MaxInFlightBytes: cfg.Ingress.MaxInFlightBytes, Tokens: []string{cfg.Auth.Tokens[0].Value()}}, zerolog.Nop(), reg)
	if err != nil {
		return result{}, err
	}
	srv := httpserver.New("127.0.0.1:0", h, 5*time.Second)
	if err := srv.Listen(); err != nil {
		return result{}, err
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	res, err := load("http://"+srv.Addr()+httpapi.RouteUsers, body, d, conc)
	stop()
	if rerr := <-done; rerr != nil && err == nil {
		err = rerr
	}
	return res, err
}

type discard struct{}

func (discard) Publish(context.Context, announcement.Event) error { return nil }
func (discard) CheckSize(announcement.Event) error                { return nil }

type result struct {
	accepted      int // during the measured window
	acceptedTotal int // including warm-up
	errors        int
	firstErr      string
	rate          float64 // accepted per second in the measured window
	p50, p99, max time.Duration
}

func header() {
	fmt.Printf("%-40s %12s %9s %9s %9s %8s\n", "run", "accepted/s", "p50", "p99", "max", "errors")
}

func (r result) print(name string) {
	rd := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	fmt.Printf("%-40s %12.0f %9s %9s %9s %8d\n", name, r.rate, rd(r.p50), rd(r.p99), rd(r.max), r.errors)
	if r.firstErr != "" {
		fmt.Printf("  first error: %s\n", r.firstErr)
	}
}

// median takes each figure's median over the rounds (max stays the worst).
func median(rs []result) result {
	pick := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	out := result{
		rate: pick(func(r result) float64 { return r.rate }),
		p50:  time.Duration(pick(func(r result) float64 { return float64(r.p50) })),
		p99:  time.Duration(pick(func(r result) float64 { return float64(r.p99) })),
	}
	for _, r := range rs {
		out.max = max(out.max, r.max)
		out.errors += r.errors
	}
	return out
}

// load runs conc closed-loop clients for a 1 s warm-up plus d, and records
// the latency of every request that started inside the measured window.
func load(url string, body []byte, d time.Duration, conc int) (result, error) {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        conc,
		MaxIdleConnsPerHost: conc,
		MaxConnsPerHost:     conc,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	start := time.Now()
	measureFrom := start.Add(time.Second)
	end := measureFrom.Add(d)
	var (
		mu       sync.Mutex
		res      result
		lats     []time.Duration
		total    atomic.Int64
		failures atomic.Int64
		firstErr atomic.Value
		wg       sync.WaitGroup
	)
	for range conc {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 4096)
			accepted := 0
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				code, err := post(client, url, body)
				el := time.Since(t0)
				if err != nil || code != http.StatusAccepted {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				total.Add(1)
				if !t0.Before(measureFrom) {
					accepted++
					lat = append(lat, el)
				}
			}
			mu.Lock()
			res.accepted += accepted
			lats = append(lats, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	// Counted are the requests that started inside the window of length d.
	res.rate = float64(res.accepted) / d.Seconds()
	if len(lats) > 0 {
		slices.Sort(lats)
		q := func(p float64) time.Duration { return lats[min(len(lats)-1, int(p*float64(len(lats))))] }
		res.p50, res.p99, res.max = q(0.50), q(0.99), lats[len(lats)-1]
	}
	res.acceptedTotal = int(total.Load())
	res.errors = int(failures.Load())
	if v, ok := firstErr.Load().(string); ok {
		res.firstErr = v
	}
	if res.accepted == 0 {
		return res, fmt.Errorf("no request accepted (first error: %s)", res.firstErr)
	}
	return res, nil
}

func post(c *http.Client, url string, body []byte) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer bench-token-0123456789")
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return resp.StatusCode, fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// requestBody is a realistic users request: the first generation's sample stanza.
func requestBody(n int) []byte {
	tpl := `<message xml:lang='en' to='%s' from='announcer.localhost' type='chat' id='ID_NUMBER' xmlns='jabber:client'>` +
		`<body>MESSAGE_CONTENT [inc_id]</body><body xml:lang='REPLY_ON_THREAD_ID'>989198872580</body>` +
		`<body xml:lang='MAJOR_TYPE'>SIMPLE_CHAT</body><body xml:lang='MINOR_TYPE'>TEXT</body>` +
		`<body xml:lang='REPLY_ON_MESSAGE_ID'>15219732781131af24fc1zwf</body><body xml:lang='SEND_TIME_IN_GMT'>1521973339583</body></message>`
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("user%05d", i)
	}
	b, _ := json.Marshal(map[string]any{
		"usernames": names,
		"message":   base64.StdEncoding.EncodeToString([]byte(tpl)),
		"persist":   true,
	})
	return b
}

func countRecords(brokers []string, topic string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := kafkabus.NewClient(kafkabus.Plaintext(brokers), 10*time.Second)
	defer c.Close()
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return 0, err
	}
	var reqs []kafka.OffsetRequest
	for _, t := range md.Topics {
		for _, p := range t.Partitions {
			reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
		}
	}
	resp, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return 0, p.Error
		}
		n += int(p.LastOffset - p.FirstOffset)
	}
	return n, nil
}

func deleteTopics(brokers []string, topics ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := kafkabus.NewClient(kafkabus.Plaintext(brokers), 10*time.Second)
	defer c.Close()
	if _, err := c.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics}); err != nil {
		fmt.Fprintln(os.Stderr, "ingress-bench: deleting topics:", err)
	}
}

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
