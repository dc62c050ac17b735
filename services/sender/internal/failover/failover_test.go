package failover

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/testkit"
)

type gate struct{ open bool }

func (g *gate) Set(open bool) bool {
	changed := g.open != open
	g.open = open
	return changed
}

type groups struct {
	mu      sync.Mutex
	members map[string][]string
	err     error
}

func (g *groups) Members(_ context.Context, group string) ([]string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.members[group], g.err
}

func (g *groups) set(group string, ids ...string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.members[group] = ids
}

type rig struct {
	w        *Watcher
	up       bool
	own      *gate
	take     *gate
	groups   *groups
	m        *Metrics
	now      time.Time
	ctx      context.Context
	interval time.Duration
}

func newRig(t *testing.T) *rig {
	r := &rig{up: true, own: &gate{open: true}, take: &gate{}, groups: &groups{members: map[string][]string{}},
		now: time.Unix(1_000_000, 0), ctx: context.Background(), interval: time.Second}
	r.m = NewMetrics(prometheus.NewRegistry())
	r.groups.set("g-node2", ClientID("node2"))
	r.w = New(Options{Node: "node1", After: 10 * time.Second}, func() bool { return r.up },
		[]Gate{r.own}, []Peer{{Node: "node2", Group: "g-node2", Gates: []Gate{r.take}}}, r.groups,
		testkit.Log(t, zerolog.TraceLevel), r.m)
	return r
}

// run ticks for d in steps of a second.
func (r *rig) run(d time.Duration) {
	for end := r.now.Add(d); !r.now.After(end); r.now = r.now.Add(r.interval) {
		r.w.tick(r.ctx, r.now)
	}
}

// A node down for half of failover_after hands its topic over, and takes
// it back as soon as a connection is up again.
func TestHandOverAndBack(t *testing.T) {
	r := newRig(t)
	r.run(time.Minute)
	if !r.own.open {
		t.Fatal("handed over while up")
	}
	r.up = false
	r.run(4 * time.Second)
	if !r.own.open {
		t.Fatal("handed over before half of failover_after")
	}
	r.run(2 * time.Second)
	if r.own.open || testutil.ToFloat64(r.m.handedOver) != 1 {
		t.Fatal("not handed over after half of failover_after")
	}
	r.up = true
	r.run(0)
	if !r.own.open || testutil.ToFloat64(r.m.handedOver) != 0 || testutil.ToFloat64(r.m.handovers) != 1 {
		t.Fatal("the topic not taken back once up")
	}
	// A short blip does not hand anything over.
	r.up = false
	r.run(3 * time.Second)
	r.up = true
	r.run(time.Second)
	r.up = false
	r.run(3 * time.Second)
	if !r.own.open {
		t.Fatal("two short outages added up")
	}
}

// Another node's topic is taken once its group had none of that node's
// senders for half of failover_after, and given back when one rejoins.
func TestTakeOverAPeer(t *testing.T) {
	r := newRig(t)
	r.run(time.Minute)
	if r.take.open {
		t.Fatal("taken while its sender is in its group")
	}
	r.groups.set("g-node2", TakeoverClientID("node3", "node2")) // another survivor's takeover does not count
	r.run(4 * time.Second)
	if r.take.open {
		t.Fatal("taken before half of failover_after")
	}
	r.run(2 * time.Second)
	if !r.take.open || testutil.ToFloat64(r.m.taking.WithLabelValues("node2")) != 1 {
		t.Fatal("not taken after half of failover_after")
	}
	// Kafka unreachable: nothing changes.
	r.groups.err = errors.New("broker down")
	r.run(time.Minute)
	if !r.take.open {
		t.Fatal("released on a Kafka error")
	}
	r.groups.err = nil
	r.groups.set("g-node2", ClientID("node2"), TakeoverClientID("node1", "node2"))
	r.run(0)
	if r.take.open || testutil.ToFloat64(r.m.takeovers.WithLabelValues("node2")) != 1 {
		t.Fatal("kept after the node's own sender rejoined")
	}
}

// A sender whose own node is down takes nothing, and gives back what it took.
func TestNoTakeOverThroughADeadNode(t *testing.T) {
	r := newRig(t)
	r.groups.set("g-node2")
	r.up = false
	r.run(time.Minute)
	if r.take.open {
		t.Fatal("took a topic with no connection of its own")
	}
	r.up = true
	r.run(10 * time.Second)
	if !r.take.open {
		t.Fatal("not taken once up")
	}
	r.up = false
	r.run(0)
	if r.take.open {
		t.Fatal("kept a taken topic with no connection of its own")
	}
}
