package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/progress"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/pkg/testkit/xmpptest"
)

// call sends a request to the REST API with optional header pairs.
func (s *system) call(method, path string, body any, header ...string) (int, http.Header, []byte) {
	s.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+s.rest+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	c := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw
}

// status is GET /v1/announcements/{id}.
func (s *system) status(id string) progress.Announcement {
	s.t.Helper()
	code, _, raw := s.call("GET", "/v1/announcements/"+id, nil)
	if code != http.StatusOK {
		s.t.Fatalf("GET %s: %d %s", id, code, raw)
	}
	var a progress.Announcement
	if err := json.Unmarshal(raw, &a); err != nil {
		s.t.Fatal(err)
	}
	return a
}

// until polls an announcement until ok holds.
func (s *system) until(id, what string, timeout time.Duration, ok func(progress.Announcement) bool) progress.Announcement {
	s.t.Helper()
	var a progress.Announcement
	testkit.Eventually(s.t, timeout, what, func() bool {
		a = s.status(id)
		return ok(a)
	})
	return a
}

func isDone(a progress.Announcement) bool { return a.State == progress.StateDone }

// loginAll registers n users online on node and logs them in over c2s.
func (s *system) loginAll(ctx context.Context, label, node string, n int) ([]string, map[string]*xmpptest.Client) {
	s.t.Helper()
	users := make([]string, n)
	clients := make(map[string]*xmpptest.Client, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		users[i] = s.user(fmt.Sprintf("%s%d", label, i), node)
		wg.Go(func() {
			c := s.login(ctx, users[i])
			mu.Lock()
			clients[users[i]] = c
			mu.Unlock()
		})
	}
	wg.Wait()
	return users, clients
}

// received counts the messages the clients got.
func received(clients map[string]*xmpptest.Client) int {
	n := 0
	for _, c := range clients {
		n += len(c.Messages())
	}
	return n
}

// The record follows a sharded channel announcement to done, and its
// figures are what the clients received: members read, online, recipients
// per node, every batch fenced, every stanza confirmed and persisted.
func TestProgressMatchesWhatClientsReceived(t *testing.T) {
	s := newSystem(t, options{nodes: []string{"node1", "node2"}, batch: 2, shard: 4})
	ctx := s.deadline(120 * time.Second)
	var members []string
	clients := map[string]*xmpptest.Client{}
	perNode := map[string]int64{}
	for i := range 12 {
		node := []string{"node1", "node2", ""}[i%3] // a third offline
		u := s.user(fmt.Sprintf("p%d", i), node)
		members = append(members, u)
		if node != "" {
			clients[u] = s.login(ctx, u)
			perNode[node]++
		}
	}
	s.channel(70, s.p+"-progress", "ACCEPTED", members...)
	id := s.announce("/v1/announce/channel", map[string]any{"channel_id": 70, "message": b64(template(s.from)), "persist": true})
	for _, c := range clients {
		if _, err := c.Wait(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	a := s.until(id, "done with everything persisted", 60*time.Second, func(a progress.Announcement) bool {
		return isDone(a) && a.Stanzas.Persisted == 8
	})
	if a.Kind != "channel" || string(a.ChannelID) != "70" || !a.Persist || a.Source != "rest" || a.Priority != "normal" {
		t.Errorf("description: %+v", a)
	}
	if a.Audience.Members != 12 || a.Audience.Online != 8 || a.Audience.Recipients != 8 ||
		fmt.Sprint(a.Audience.PerNode) != fmt.Sprint(perNode) {
		t.Errorf("audience %+v, want 12 members, 8 online, per node %v", a.Audience, perNode)
	}
	if a.Shards.Total < 2 || a.Shards.Done != a.Shards.Total {
		t.Errorf("shards %+v: the channel was not sharded, or not every shard resolved", a.Shards)
	}
	if a.Batches.Planned == 0 || a.Batches.Emitted != a.Batches.Planned || a.Batches.Done != a.Batches.Planned {
		t.Errorf("batches %+v", a.Batches)
	}
	if got := received(clients); a.Stanzas.Confirmed != int64(got) || a.Stanzas.Sent != int64(got) || got != 8 {
		t.Errorf("stanzas %+v, clients received %d", a.Stanzas, got)
	}
	for name, tm := range map[string]*time.Time{"accepted": a.Times.Accepted, "resolving": a.Times.Resolving,
		"sending": a.Times.Sending, "resolved": a.Times.Resolved, "done": a.Times.Done} {
		if tm == nil {
			t.Errorf("no %s time", name)
		}
	}
	code, _, raw := s.call("GET", "/v1/announcements?state=done&limit=5", nil)
	var list struct{ Announcements []progress.Announcement }
	if err := json.Unmarshal(raw, &list); code != http.StatusOK || err != nil || len(list.Announcements) != 1 || list.Announcements[0].ID != id {
		t.Errorf("list: %d %s", code, raw)
	}
	if code, _, raw := s.call("GET", "/v1/announcements/nobody", nil); code != http.StatusNotFound {
		t.Errorf("unknown id: %d %s", code, raw)
	}
	// A channel that is not accepted ends rejected, with the reason.
	s.channel(71, s.p+"-pending", "PENDING", members[0])
	pending := s.announce("/v1/announce/channel", map[string]any{"channel_id": 71, "message": b64(template(s.from))})
	r := s.until(pending, "rejected", 30*time.Second, func(a progress.Announcement) bool { return a.State == progress.StateRejected })
	if r.Reason != "channel_not_accepted" {
		t.Errorf("rejected for %q", r.Reason)
	}
}

// Cancelling a 20,000-online announcement being sent at a low rate stops
// its stanzas within a second, and the record keeps the count of what went
// out: what the sender sent, which includes what the logged-in clients got.
func TestCancelMidSendStops(t *testing.T) {
	// 2 connections × 500 stanzas/s: the channel takes 20 s, and a batch of
	// 500 takes a second, so it is fenced in steps and checked for a cancel
	// between chunks.
	const members, clientEvery = 20000, 200
	s := newSystem(t, options{rate: 500, batch: 500, pagination: 1000, shard: 100000})
	ctx := s.deadline(180 * time.Second)
	users, clients := s.loginAll(ctx, "cancel", "node1", members/clientEvery)
	// The others are online in Redis and unknown to ejabberd (it answers
	// each with an error stanza, which is counted and harmless).
	var all []string
	pipe := s.rdb.Pipeline()
	for i := range members {
		if i%clientEvery == 0 {
			all = append(all, users[i/clientEvery])
			continue
		}
		u := fmt.Sprintf("%s_ghost%d", s.p, i)
		all = append(all, u)
		pipe.Set(ctx, u, s.presence("node1"), time.Hour)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	s.channel(80, s.p+"-cancel", "ACCEPTED")
	for i := 0; i < len(all); i += 1000 {
		var q strings.Builder
		q.WriteString("INSERT INTO ws_channel_members (member_channelid, member_username) VALUES ")
		for j, u := range all[i:min(i+1000, len(all))] {
			if j > 0 {
				q.WriteByte(',')
			}
			fmt.Fprintf(&q, "(80,'%s')", u)
		}
		if _, err := s.db.Exec(q.String()); err != nil {
			t.Fatal(err)
		}
	}
	sent := func() float64 { return s.metric("sender-node1-0", "announcer_sender_stanzas_sent_total") }
	id := s.announce("/v1/announce/channel", map[string]any{"channel_id": 80, "message": b64(template(s.from))})
	testkit.Eventually(t, 60*time.Second, "2,000 stanzas out", func() bool { return sent() >= 2000 })

	code, _, raw := s.call("DELETE", "/v1/announcements/"+id, nil)
	cancelled := time.Now()
	var at progress.Announcement
	if err := json.Unmarshal(raw, &at); code != http.StatusOK || err != nil || at.State != progress.StateCancelled {
		t.Fatalf("DELETE: %d %s", code, raw)
	}
	time.Sleep(time.Second)
	atOneSecond := sent()
	time.Sleep(3 * time.Second)
	if later := sent(); later != atOneSecond {
		t.Fatalf("stanzas still sent more than 1 s after the cancel: %v at 1 s, %v at 4 s", atOneSecond, later)
	}
	if atOneSecond >= members {
		t.Fatalf("all %v stanzas went out: the cancel stopped nothing", atOneSecond)
	}
	a := s.until(id, "the record to count what went out", 10*time.Second, func(a progress.Announcement) bool {
		return a.Stanzas.Confirmed == int64(atOneSecond)
	})
	if a.State != progress.StateCancelled || a.Times.Cancelled == nil || a.Reason == "" {
		t.Fatalf("after the cancel: %+v", a)
	}
	if got := received(clients); got > len(clients) || int64(got) > a.Stanzas.Confirmed {
		t.Fatalf("clients received %d, the record says %d went out", got, a.Stanzas.Confirmed)
	}
	if code, _, raw := s.call("DELETE", "/v1/announcements/"+id, nil); code != http.StatusOK {
		t.Errorf("second cancel: %d %s", code, raw)
	}
	t.Logf("cancelled after %.0f of %d stanzas (%v when the DELETE answered); none sent from 1 s after the cancel to %.1f s",
		atOneSecond, members, at.Stanzas.Confirmed, time.Since(cancelled).Seconds())
}

// A dry run answers what a real send would reach, per node, and sends nothing.
func TestDryRunSendsNothing(t *testing.T) {
	s := newSystem(t, options{nodes: []string{"node1", "node2"}})
	ctx := s.deadline(60 * time.Second)
	a, b := s.user("dry-a", "node1"), s.user("dry-b", "node2")
	offline := s.user("dry-c", "")
	ca, cb := s.login(ctx, a), s.login(ctx, b)
	s.channel(90, s.p+"-dry", "ACCEPTED", a, b, offline)
	code, _, raw := s.call("POST", "/v1/announce/channel", map[string]any{"channel_id": 90, "message": b64(template(s.from)), "dry_run": true})
	var p progress.Announcement
	if err := json.Unmarshal(raw, &p); code != http.StatusOK || err != nil {
		t.Fatalf("dry run: %d %s", code, raw)
	}
	if !p.DryRun || p.State != progress.StateDone || p.Audience.Members != 3 || p.Audience.Online != 2 ||
		p.Audience.PerNode["node1"] != 1 || p.Audience.PerNode["node2"] != 1 {
		t.Fatalf("preview %s", raw)
	}
	expectNothing(t, ca, 0)
	expectNothing(t, cb, 0)
	if n := s.metric("sender-node1-0", "announcer_sender_stanzas_sent_total") + s.metric("sender-node2-0", "announcer_sender_stanzas_sent_total"); n != 0 {
		t.Fatalf("a dry run sent %v stanzas", n)
	}
}

// A POST whose write landed although the client got a 503, retried with the
// same Idempotency-Key, is one announcement: one id, one copy per client. The
// broker freezes with the ingress's produce connection open, so the request
// waits in the broker's socket buffer past the publish timeout and is
// appended once the broker thaws. Kafka input records with the same key are
// one announcement too.
func TestRetriedPostKeepsOneAnnouncement(t *testing.T) {
	env := stacktest.Get(t)
	broker := stacktest.PrivateKafka(t, env)
	s := newSystem(t, options{brokers: broker.Brokers()})
	ctx := s.deadline(150 * time.Second)
	users, clients := s.loginAll(ctx, "idem", "node1", 3)
	lanes := []string{s.p + "_announcements", s.p + "_announcements.priority"}
	keys := func(want int) map[string]int {
		n := map[string]int{}
		for _, rec := range kafkatest.ReadTopics(t, broker.Brokers(), lanes, want, 5*time.Second) {
			n[string(rec.Key)]++
		}
		return n
	}

	// A first announcement opens the ingress's produce connection (and
	// caches the metadata): the next write goes out on it at once.
	warmTmpl := "<message to='%s' from='" + s.from + "' type='chat' id='warm-[inc_id]'><body>warm-up</body></message>"
	code, _, raw := s.call("POST", "/v1/announce/users", map[string]any{"usernames": users, "message": b64(warmTmpl), "persist": false})
	if code != http.StatusAccepted {
		t.Fatalf("warm-up: %d %s", code, raw)
	}
	var warm struct{ ID string }
	_ = json.Unmarshal(raw, &warm)

	body := map[string]any{"usernames": users, "message": b64(template(s.from)), "persist": false}
	broker.Pause()
	code, _, raw = s.call("POST", "/v1/announce/users", body, "Idempotency-Key", "retry-me")
	broker.Resume()
	if code != http.StatusServiceUnavailable {
		t.Fatalf("POST while the broker is frozen: %d %s, want 503", code, raw)
	}
	var ids []string
	for attempt := 0; len(ids) < 2 && attempt < 60; attempt++ {
		code, h, raw := s.call("POST", "/v1/announce/users", body, "Idempotency-Key", "retry-me")
		switch code {
		case http.StatusAccepted:
			var out struct{ ID string }
			_ = json.Unmarshal(raw, &out)
			if h.Get("Idempotent-Replayed") != "true" {
				t.Errorf("a retry is not marked as a replay")
			}
			ids = append(ids, out.ID)
		case http.StatusServiceUnavailable: // the broker is still waking up
			time.Sleep(500 * time.Millisecond)
		default:
			t.Fatalf("retry: %d %s", code, raw)
		}
	}
	if len(ids) != 2 || ids[0] != ids[1] {
		t.Fatalf("retries answered %v: want one id twice", ids)
	}
	// The write that got the 503 landed, under the id the retries answer (a
	// retry that reached the ingress before fanout recorded it wrote the same
	// id again: still one announcement).
	var seen map[string]int
	testkit.Eventually(t, 30*time.Second, "the timed-out write in the topic", func() bool {
		seen = keys(2)
		return len(seen) > 1
	})
	delete(seen, warm.ID)
	if len(seen) != 1 || seen[ids[0]] == 0 {
		t.Fatalf("announcements in the topic besides the warm-up: %v; want only %s", seen, ids[0])
	}
	t.Logf("the announcement is %d time(s) in its topic (the write that timed out landed)", seen[ids[0]])
	if code, _, raw := s.call("POST", "/v1/announce/users", map[string]any{"usernames": users[:1], "message": b64(template(s.from))},
		"Idempotency-Key", "retry-me"); code != http.StatusConflict {
		t.Errorf("the key with another body: %d %s", code, raw)
	}

	// The Kafka input: two records with one key are one announcement.
	in := fmt.Sprintf(`{"usernames": [%q], "message": %q, "persist": false}`, users[0], b64(template(s.from)))
	kafkatest.Produce(t, broker.Brokers(), s.p+"_input",
		kafka.Message{Key: []byte("k-1"), Value: []byte(in)}, kafka.Message{Key: []byte("k-1"), Value: []byte(in)})

	s.until(ids[0], "done", 60*time.Second, isDone)
	for i, u := range users {
		want := 2 // the warm-up and the retried announcement
		if i == 0 {
			want = 3 // and the Kafka input's one
		}
		if _, err := clients[u].Wait(ctx, want); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(quiet)
	for i, u := range users {
		want := 1
		if i == 0 {
			want = 2 // the REST announcement, and the Kafka input's one
		}
		n := 0
		for _, m := range clients[u].Messages() {
			if strings.HasPrefix(m.ID, "e2e-") {
				n++
			}
		}
		if n != want {
			t.Errorf("%s received %d copies, want %d", u, n, want)
		}
	}
}

// The operator CLI, driven as an operator would: send a file to a channel,
// follow the progress bar to 100 %, exit 0 with the summary.
func TestCLISendFollowsToDone(t *testing.T) {
	s := newSystem(t, options{})
	ctx := s.deadline(90 * time.Second)
	users, clients := s.loginAll(ctx, "cli", "node1", 4)
	s.channel(95, s.p+"-cli", "ACCEPTED", users...)
	bin := filepath.Join(binDir, "announcer")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = filepath.Join("..", "clients", "cli")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the CLI: %v\n%s", err, out)
	}
	msg := filepath.Join(t.TempDir(), "msg.xml")
	if err := os.WriteFile(msg, []byte(template(s.from)), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "send", "--url", "http://"+s.rest, "--channel", "95", "--file", msg, "--interval", "100ms")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("announcer send: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stderr.String(), "100%") || !strings.Contains(stdout.String(), "state=done") ||
		!strings.Contains(stdout.String(), "confirmed=4") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
	if n := received(clients); n != 4 {
		t.Fatalf("clients received %d, want 4", n)
	}
}
