package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/announcer/announcer/pkg/benchreport"
	"github.com/announcer/announcer/pkg/testkit/xmpptest"
)

// TestDeliveryThroughput measures a channel announcement through the whole system into real
// logged-in clients, against ejabberd's own tool for the same job (its HTTP API send_message,
// one call per user, 4 keep-alive connections) measured in the same run. It is a benchmark:
// `make bench` runs it with ANNOUNCER_BENCH=1 (users: ANNOUNCER_BENCH_USERS, default 5000);
// it prints figures and fails only if a message is missing.
func TestDeliveryThroughput(t *testing.T) {
	if os.Getenv("ANNOUNCER_BENCH") != "1" {
		t.Skip("benchmark: run with ANNOUNCER_BENCH=1 (make bench)")
	}
	n := 5000
	if v, err := strconv.Atoi(os.Getenv("ANNOUNCER_BENCH_USERS")); err == nil && v > 0 {
		n = v
	}
	s := newSystem(t, options{batch: 500, pagination: 5000, shard: 100000, rate: 50000})
	ctx := s.deadline(5 * time.Minute)

	start := time.Now()
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprintf("%s_t%d", s.p, i)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, u := range users {
		g.Go(func() error { return s.api.Register(gctx, u, s.domain, "pw") })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	s.users = append(s.users, users...)
	pipe := s.rdb.Pipeline()
	for _, u := range users {
		pipe.Set(ctx, u, s.presence("node1"), 0)
		pipe.SAdd(ctx, s.presence("node1"), u)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	s.channel(50, s.p+"-bench", "ACCEPTED")
	for i := 0; i < n; i += 1000 {
		var b bytes.Buffer
		b.WriteString("INSERT INTO ws_channel_members (member_channelid, member_username) VALUES ")
		args := []any{}
		for j := i; j < min(i+1000, n); j++ {
			if j > i {
				b.WriteString(",")
			}
			b.WriteString("(50, ?)")
			args = append(args, users[j])
		}
		if _, err := s.db.Exec(b.String(), args...); err != nil {
			t.Fatal(err)
		}
	}
	clients := make([]*xmpptest.Client, n)
	var mu sync.Mutex
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i, u := range users {
		g.Go(func() error {
			c, err := xmpptest.Login(gctx, s.env.C2SAddr, u, s.domain, "pw")
			if err != nil {
				return err
			}
			mu.Lock()
			clients[i] = c
			mu.Unlock()
			return nil
		})
	}
	err := g.Wait()
	t.Cleanup(func() {
		for _, c := range clients {
			if c != nil {
				_ = c.Close()
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("setup: %d users registered, online and logged in in %s", n, time.Since(start).Round(time.Millisecond))

	// waitAll returns when every client holds want messages.
	waitAll := func(want int) time.Duration {
		t0 := time.Now()
		for {
			missing := 0
			for _, c := range clients {
				if len(c.Messages()) < want {
					missing++
				}
			}
			if missing == 0 {
				return time.Since(t0)
			}
			if ctx.Err() != nil {
				t.Fatalf("%d of %d clients still without message %d", missing, n, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// announcer: one POST, the whole pipeline, real ejabberd.
	t0 := time.Now()
	s.announce("/v1/announce/channel", map[string]any{"channel_id": 50, "message": b64(template(s.from))})
	waitAll(1)
	ours := time.Since(t0)

	// ejabberd's own tool: send_message over its HTTP API, one call per user.
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer hc.CloseIdleConnections()
	t0 = time.Now()
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, u := range users {
		g.Go(func() error {
			body, _ := json.Marshal(map[string]string{
				"type": "chat", "from": s.from, "to": u + "@" + s.domain, "subject": "", "body": "n=1 for %s",
			})
			req, err := http.NewRequestWithContext(gctx, http.MethodPost, s.env.EjabberdAPI+"/send_message", bytes.NewReader(body))
			if err != nil {
				return err
			}
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("send_message: %s", resp.Status)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	waitAll(2)
	theirs := time.Since(t0)

	rate := func(d time.Duration) float64 { return float64(n) / d.Seconds() }
	fmt.Printf("delivery-bench: %d online channel members, logged in over c2s, 2 cores shared by ejabberd, the services and the clients\n", n)
	fmt.Printf("  announcer: POST → every client received      %8s  %8.0f stanzas/s\n", ours.Round(time.Millisecond), rate(ours))
	fmt.Printf("  baseline: ejabberd HTTP API send_message x%d  %8s  %8.0f stanzas/s\n", n, theirs.Round(time.Millisecond), rate(theirs))
	fmt.Printf("  speed-up: %.1fx\n", theirs.Seconds()/ours.Seconds())
	if err := benchreport.Record(map[string]benchreport.Figure{
		"ejabberd_clients_seconds":                      {Value: ours.Seconds(), Note: fmt.Sprintf("POST until each of %d logged-in c2s clients has the stanza, real ejabberd", n)},
		"ejabberd_clients_stanzas_per_second":           {Value: rate(ours)},
		"ejabberd_http_api_baseline_seconds":            {Value: theirs.Seconds(), Note: "baseline: ejabberd's HTTP API send_message, one call per user, same clients"},
		"ejabberd_http_api_baseline_stanzas_per_second": {Value: rate(theirs)},
	}); err != nil {
		t.Fatal(err)
	}
}
