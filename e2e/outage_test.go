package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
	"github.com/announcer/announcer/pkg/testkit/xmpptest"
)

// Sizes of the outage test: small enough for make test, large enough that a
// fault lands in the middle of a delivery.
const (
	outageUsers  = 200
	outageRounds = 15  // announcements per phase
	outageBatch  = 100 // [fanout] batch_size
	outageRate   = 300 // [ejabberd] rate_limit per connection (2 connections)
	maxInFlight  = 4   // [sender] max_in_flight (the default)
)

// audienceRig is a system on a private broker with a channel of logged-in members.
type audienceRig struct {
	t       *testing.T
	s       *system
	kafka   *stacktest.Kafka
	clients []*xmpptest.Client
	ids     map[string][]string // announcement ids by phase
}

// phase is what one fault run delivered.
type phase struct {
	name       string
	want, got  int // stanzas that should arrive once, stanzas that arrived
	duplicates int
	lost       int
}

// announce posts rounds announcements of phase name to the channel.
func (r *audienceRig) announce(name string) {
	for i := range outageRounds {
		tmpl := "<message to='%s' from='" + r.s.from + "' type='chat'><body>" + fmt.Sprintf("%s %d", name, i) + "</body></message>"
		r.ids[name] = append(r.ids[name], r.s.announce("/v1/announce/channel", map[string]any{"channel_id": 50, "message": b64(tmpl)}))
	}
}

// exact checks that every announcement of the phase is done and that its
// record counts each member once, duplicates and resends notwithstanding.
func (r *audienceRig) exact(name string) {
	for _, id := range r.ids[name] {
		a := r.s.until(id, name+" recorded as done", 30*time.Second, isDone)
		if a.Stanzas.Confirmed != outageUsers || a.Audience.Recipients != outageUsers || a.Batches.Done != a.Batches.Planned {
			r.t.Errorf("phase %s, %s: record %+v %+v %+v, want %d confirmed once each", name, id, a.Audience, a.Batches, a.Stanzas, outageUsers)
		}
	}
}

// received counts the stanzas of phase name that arrived, and the distinct ones.
func (r *audienceRig) received(name string) (all, distinct int) {
	for _, c := range r.clients {
		seen := map[string]bool{}
		for _, m := range c.Messages() {
			if len(m.Bodies) == 1 && strings.HasPrefix(m.Bodies[0], name+" ") {
				all++
				if !seen[m.Bodies[0]] {
					seen[m.Bodies[0]] = true
					distinct++
				}
			}
		}
	}
	return all, distinct
}

// waitFraction waits until at least frac of the phase arrived.
func (r *audienceRig) waitFraction(name string, frac float64) {
	want := int(frac * outageUsers * outageRounds)
	testkit.Eventually(r.t, 60*time.Second, fmt.Sprintf("%.0f%% of %s delivered", 100*frac, name), func() bool {
		_, d := r.received(name)
		return d >= want
	})
}

// settle waits until every member has every announcement of the phase, then
// a quiet period for late duplicates, and counts.
func (r *audienceRig) settle(name string, timeout time.Duration) phase {
	want := outageUsers * outageRounds
	deadline := time.Now().Add(timeout)
	for {
		if _, d := r.received(name); d == want || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(quiet)
	all, distinct := r.received(name)
	return phase{name: name, want: want, got: all, duplicates: all - distinct, lost: want - distinct}
}

// firstProgress returns how long after start the phase's count first grew past from.
func (r *audienceRig) firstProgress(name string, from int, start time.Time) time.Duration {
	testkit.Eventually(r.t, 90*time.Second, name+" progressing again", func() bool {
		all, _ := r.received(name)
		return all > from
	})
	return time.Since(start)
}

// midway returns how many stanzas of the phase had arrived once (distinct)
// at a fault, and fails the test unless the delivery was still going on and
// more than bound had arrived: a fault after the delivery proves nothing, and
// with no more than bound arrived a sender that sent again everything it had
// sent would stay within the bound.
func (r *audienceRig) midway(name string, bound int) int {
	r.t.Helper()
	_, d := r.received(name)
	if d >= outageUsers*outageRounds || d <= bound {
		r.t.Fatalf("phase %s: %d of %d stanzas delivered at the fault, want more than the bound %d and fewer than all",
			name, d, outageUsers*outageRounds, bound)
	}
	return d
}

// readyNamesKafka checks that a service's /readyz says not ready and names Kafka.
func (r *audienceRig) readyNamesKafka(name string) {
	testkit.Eventually(r.t, 20*time.Second, name+" /readyz naming kafka", func() bool {
		code, body := testkit.Get(r.t, "http://"+r.s.debug[name]+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, `"kafka"`)
	})
}

// A real broker outage and real crashes, with every service running as a
// process and every member logged in over c2s: the broker is killed with
// SIGKILL and restarted while announcements are being delivered, the sender
// is killed with SIGKILL during normal running and during a broker outage.
// Nothing is lost, no service exits on its own, the ingress answers 503 while
// it cannot publish, and duplicates stay within the bounds the README states.
func TestBrokerOutageAndCrashes(t *testing.T) {
	env := stacktest.Get(t)
	kafka := stacktest.PrivateKafka(t, env)
	s := newSystem(t, options{brokers: kafka.Brokers(), rate: outageRate, batch: outageBatch, pagination: 100, shard: 100000})
	r := &audienceRig{t: t, s: s, kafka: kafka, ids: map[string][]string{}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var members []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range outageUsers {
		u := s.user(fmt.Sprintf("o%d", i), "node1")
		members = append(members, u)
		wg.Go(func() {
			c := s.login(ctx, u)
			mu.Lock()
			r.clients = append(r.clients, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	s.channel(50, s.p+"-outage", "ACCEPTED", members...)
	bound := 2 * maxInFlight * outageBatch // stanzas: what one sender lane holds uncommitted, at most

	// A: the broker dies and comes back while every service keeps running.
	r.announce("A")
	r.waitFraction("A", 0.3)
	kafka.Kill()
	down := time.Now()
	code, body := s.post("/v1/announce/channel", map[string]any{"channel_id": 50, "message": b64(template(s.from))})
	if code != http.StatusServiceUnavailable || body["error"] == nil {
		t.Errorf("POST while the broker is down: %d %v, want 503 with a JSON reason", code, body)
	}
	for _, name := range []string{"ingress", "fanout", "sender-node1-0", "archiver"} {
		r.readyNamesKafka(name)
	}
	time.Sleep(2 * time.Second) // every consumer sees failing fetches and commits
	before, _ := r.received("A")
	kafka.Start()
	back := time.Now()
	resumed := r.firstProgress("A", before, back)
	a := r.settle("A", 120*time.Second)
	recovered := time.Since(back) - quiet
	if gone := s.exited(); len(gone) > 0 {
		t.Fatalf("services exited during the broker outage: %v", gone)
	}
	t.Logf("A broker restart, services up: %d of %d delivered, %d lost, %d duplicates (bound 0); broker down %.1fs; "+
		"first stanza %.1fs after the broker was back, all delivered after %.1fs",
		a.got-a.duplicates, a.want, a.lost, a.duplicates, back.Sub(down).Seconds(), resumed.Seconds(), recovered.Seconds())
	// Every consuming stage counted the outage.
	for service, metric := range map[string]string{
		"ingress":        "announcer_ingress_kafka_input_kafka_outages_total",
		"fanout":         "announcer_fanout_kafka_outages_total",
		"sender-node1-0": "announcer_sender_kafka_outages_total",
		"archiver":       "announcer_archiver_kafka_outages_total",
	} {
		if v := s.metric(service, metric); v < 1 {
			t.Errorf("%s: %s = %v after the broker outage, want at least 1", service, metric, v)
		}
	}

	// B: the sender is killed in the middle of a delivery, and restarted.
	r.announce("B")
	r.waitFraction("B", 0.3)
	s.kill("sender-node1-0")
	bAt := r.midway("B", bound)
	s.restart("sender-node1-0")
	b := r.settle("B", 120*time.Second)
	t.Logf("B sender kill -9 with %d of %d delivered: %d lost, %d duplicates (bound %d)", bAt, b.want, b.lost, b.duplicates, bound)

	// C: the sender is killed while the broker is down (what it did meanwhile
	// cannot be committed), then both come back.
	r.announce("C")
	r.waitFraction("C", 0.3)
	kafka.Kill()
	time.Sleep(2 * time.Second) // the sender finishes what it holds, and cannot commit it
	s.kill("sender-node1-0")
	cAt := r.midway("C", bound)
	kafka.Start()
	s.restart("sender-node1-0")
	c := r.settle("C", 120*time.Second)
	t.Logf("C sender kill -9 during a broker outage with %d of %d delivered: %d lost, %d duplicates (bound %d)", cAt, c.want, c.lost, c.duplicates, bound)

	// The README's bounds: nothing is sent twice when only the broker
	// restarts; a sender killed (with or without an outage) sends again at
	// most what it held uncommitted.
	t.Logf("figures: duplicates broker restart %d (bound 0), sender kill -9 %d, sender kill -9 during an outage %d (bound %d); "+
		"delivery resumed %.1fs after the broker was back", a.duplicates, b.duplicates, c.duplicates, bound, resumed.Seconds())
	for _, p := range []phase{a, b, c} {
		r.exact(p.name)
		if p.lost != 0 {
			t.Errorf("phase %s: %d of %d stanzas lost", p.name, p.lost, p.want)
		}
		limit := bound
		if p.name == "A" {
			limit = 0
		}
		if p.duplicates > limit {
			t.Errorf("phase %s: %d duplicates, over the bound of %d", p.name, p.duplicates, limit)
		}
	}
	if gone := s.exited(); len(gone) > 0 {
		t.Fatalf("services exited: %v", gone)
	}
}

// The queue in front of a node is visible: while its sender is stopped a
// channel announcement waits in the node's topic, and the sender's
// consumer_lag gauge shows it when the sender is back, then falls to 0 as
// the sender catches up.
func TestConsumerLagOfAStoppedSender(t *testing.T) {
	s := newSystem(t, options{rate: 20}) // 40 stanzas/s on 2 connections: catching up takes seconds
	var members []string
	for i := range 100 {
		members = append(members, s.user(fmt.Sprintf("lag%d", i), "node1"))
	}
	s.channel(60, s.p+"-lag", "ACCEPTED", members...)
	const sender = "sender-node1-0"
	lag := func() float64 { return s.metric(sender, "announcer_sender_consumer_lag") }
	// The gauge must exist (a missing series would read 0 too).
	testkit.Eventually(t, 10*time.Second, "the sender's lag gauge at 0", func() bool {
		return strings.Contains(s.scrape(sender), "announcer_sender_consumer_lag{") && lag() == 0
	})

	s.stopService(sender)
	s.announce("/v1/announce/channel", map[string]any{"channel_id": 60, "message": b64(template(s.from))})
	// fanout has written the batches (2 recipients each) when its committed offsets cover the event.
	testkit.Eventually(t, 30*time.Second, "fanout done", func() bool {
		return s.metric("fanout", "announcer_fanout_batches_total") >= 50
	})
	s.restart(sender)
	// The gauge is refreshed every second; the first refresh may fall while
	// the group is still joining: take the first reading it reports.
	var peak float64
	for deadline := time.Now().Add(5 * time.Second); peak == 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		peak = lag()
	}
	if peak < 10 {
		t.Fatalf("lag %v right after the sender came back, want most of the 50 batches", peak)
	}
	testkit.Eventually(t, 60*time.Second, "the lag back to 0", func() bool { return lag() == 0 })
	if sent := s.metric(sender, "announcer_sender_stanzas_sent_total"); sent != 100 {
		t.Fatalf("the sender sent %v stanzas after its restart, want 100", sent)
	}
	t.Logf("lag %v batches when the sender came back, 0 once it caught up", peak)
}

// A sender killed with SIGKILL in the middle of a slow batch (rate-limited:
// it takes seconds) resumes it after the restart at its last fenced step,
// not at its first recipient: the duplicates are what it sent after that
// step, not the whole batch.
func TestSlowBatchResumesAtItsLastStep(t *testing.T) {
	// One connection at 10 stanzas/s: the batch of 100 takes 10 s, fenced every second.
	s := newSystem(t, options{rate: 10, batch: 100, pagination: 100, shard: 1000, conns: 1})
	ctx := s.deadline(150 * time.Second)
	users, clients := s.loginAll(ctx, "slow", "node1", 100)
	s.channel(85, s.p+"-slow", "ACCEPTED", users...)
	id := s.announce("/v1/announce/channel", map[string]any{"channel_id": 85, "message": b64(template(s.from))})
	testkit.Eventually(t, 30*time.Second, "40 stanzas out", func() bool { return received(clients) >= 40 })
	before := received(clients)
	s.kill("sender-node1-0")
	s.restart("sender-node1-0")
	testkit.Eventually(t, 60*time.Second, "every member reached", func() bool {
		for _, c := range clients {
			if len(c.Messages()) == 0 {
				return false
			}
		}
		return true
	})
	time.Sleep(quiet)
	all := received(clients)
	dups := all - len(clients)
	resumed := s.metric("sender-node1-0", "announcer_sender_resumed_recipients_total")
	t.Logf("killed after %d of 100 stanzas; the restarted sender skipped %v fenced recipients; %d duplicates", before, resumed, dups)
	if resumed == 0 || dups > 20 {
		t.Fatalf("%d duplicates, %v resumed: the batch was sent again from its start (up to %d), not from its last step", dups, resumed, before)
	}
	a := s.until(id, "done", 30*time.Second, isDone)
	if a.Stanzas.Confirmed != 100 {
		t.Fatalf("record: %+v, want 100 confirmed once each", a.Stanzas)
	}
}
