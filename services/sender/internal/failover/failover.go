// Package failover keeps a node's announcements moving when its ejabberd
// node is gone. Each node's sender watches two things: its own connections,
// and whether the other nodes' topics still have their own sender in their
// consumer group.
//
//   - A sender whose connections have all been down for half of
//     failover_after hands its node's topic over: it leaves the topic's group,
//     so what it held uncommitted goes to the group's other members.
//   - A sender whose own node is up takes another node's topic when that
//     topic's group has had no member of that node's own sender for the other
//     half: it joins the group and delivers through its own node, which routes
//     the stanzas across the cluster.
//   - Each ends by itself: the first sender rejoins once a connection is up
//     again, and the others leave once they see it in the group.
package failover

import (
	"context"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/metric"
)

// Gate opens and closes one input of the stage (a *stage.Gate).
type Gate interface{ Set(open bool) bool }

// Groups tells which client ids are members of a consumer group (a Kafka
// admin client).
type Groups interface {
	Members(ctx context.Context, group string) ([]string, error)
}

// Peer is another node whose topic this sender may take.
type Peer struct {
	Node  string
	Group string // the group of its own sender on its bulk topic
	Gates []Gate // this sender's inputs of its topics (bulk and priority), closed until taken
}

// Options configure a Watcher.
type Options struct {
	Node  string        // this sender's node
	After time.Duration // failover_after
	Every time.Duration // how often to look (default After/10, at least 200 ms)
}

// ClientID is the name a node's own sender has in its groups.
func ClientID(node string) string { return "announcer-sender-" + node }

// TakeoverClientID names a sender's membership in another node's group.
func TakeoverClientID(self, node string) string { return ClientID(self) + "-for-" + node }

// Watcher runs the decisions for one sender.
type Watcher struct {
	o      Options
	up     func() bool // any connection of this sender up
	own    []Gate
	peers  []Peer
	groups Groups
	log    zerolog.Logger
	m      *Metrics

	downSince   time.Time
	handedOver  bool
	absentSince map[string]time.Time
	taken       map[string]bool
}

// New builds a watcher: own are the gates of this sender's inputs of its
// node's topics (open at start), up says whether a connection is up.
func New(o Options, up func() bool, own []Gate, peers []Peer, groups Groups, log zerolog.Logger, m *Metrics) *Watcher {
	if o.Every <= 0 {
		o.Every = max(o.After/10, 200*time.Millisecond)
	}
	return &Watcher{
		o: o, up: up, own: own, peers: peers, groups: groups, m: m,
		log:         log.With().Str("component", "failover").Logger(),
		absentSince: map[string]time.Time{}, taken: map[string]bool{},
	}
}

// Run looks every Every until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.o.Every)
	defer t.Stop()
	for {
		w.tick(ctx, time.Now())
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil
		}
	}
}

func (w *Watcher) tick(ctx context.Context, now time.Time) {
	half := w.o.After / 2
	up := w.up()
	switch {
	case up:
		w.downSince = time.Time{}
		if w.handedOver {
			w.handedOver = false
			w.setAll(w.own, true)
			w.m.handedOver.Set(0)
			w.log.Warn().Msg("a connection to this node is up again: taking its topic back")
		}
	case w.downSince.IsZero():
		w.downSince = now
	case !w.handedOver && now.Sub(w.downSince) >= half:
		w.handedOver = true
		w.setAll(w.own, false)
		w.m.handedOver.Set(1)
		w.m.handovers.Inc()
		w.log.Warn().Dur("down", now.Sub(w.downSince)).Msg("this node is unreachable: handing its topic over to the other nodes' senders")
	}
	for _, p := range w.peers {
		w.watchPeer(ctx, now, p, up, half)
	}
}

func (w *Watcher) watchPeer(ctx context.Context, now time.Time, p Peer, up bool, half time.Duration) {
	members, err := w.groups.Members(ctx, p.Group)
	if err != nil {
		return // Kafka says nothing now: keep what was decided
	}
	present := slices.Contains(members, ClientID(p.Node))
	switch {
	case present:
		delete(w.absentSince, p.Node)
		if w.taken[p.Node] {
			w.release(p, "its own sender is back in its group")
		}
	case !up:
		// Nothing to deliver through: leave it to the senders that can.
		if w.taken[p.Node] {
			w.release(p, "this sender's own node is unreachable")
		}
	default:
		since, ok := w.absentSince[p.Node]
		if !ok {
			w.absentSince[p.Node] = now
			return
		}
		if !w.taken[p.Node] && now.Sub(since) >= half {
			w.taken[p.Node] = true
			w.setAll(p.Gates, true)
			w.m.taking.WithLabelValues(p.Node).Set(1)
			w.m.takeovers.WithLabelValues(p.Node).Inc()
			w.log.Warn().Str("peer", p.Node).Dur("absent", now.Sub(since)).
				Msg("no sender of that node in its group: taking its topic, delivering through this node")
		}
	}
}

func (w *Watcher) release(p Peer, why string) {
	w.taken[p.Node] = false
	w.setAll(p.Gates, false)
	w.m.taking.WithLabelValues(p.Node).Set(0)
	w.log.Warn().Str("peer", p.Node).Msg("giving that node's topic back: " + why)
}

func (w *Watcher) setAll(gates []Gate, open bool) {
	for _, g := range gates {
		g.Set(open)
	}
}

// Metrics of the failover.
type Metrics struct {
	handedOver prometheus.Gauge
	handovers  prometheus.Counter
	taking     *prometheus.GaugeVec   // peer node
	takeovers  *prometheus.CounterVec // peer node
}

// NewMetrics registers the failover's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	s := metric.Must(reg)
	return &Metrics{
		handedOver: s.Gauge("failover_handed_over", "1 while this sender's node is unreachable and its topic is left to the other nodes' senders."),
		handovers:  s.Counter("failover_handovers_total", "Times this sender handed its node's topic over."),
		taking: s.GaugeVec("failover_taking",
			"1 while this sender delivers the topic of the peer node (its node unreachable), through its own node.", "peer"),
		takeovers: s.CounterVec("failover_takeovers_total", "Times this sender took the topic of the peer node.", "peer"),
	}
}
