package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/metric"
	"github.com/announcer/announcer/pkg/stage"
	"github.com/announcer/announcer/services/sender/internal/delivery"
	"github.com/announcer/announcer/services/sender/internal/failover"
	"github.com/announcer/announcer/services/sender/internal/xmpplink"
)

// handshakeTimeout bounds dial + handshake; there is no config key for it.
const handshakeTimeout = 10 * time.Second

// handOverDrain is how long the batches in flight may go on once this
// sender hands its node's topic over (its node has been unreachable for a
// while: they are not going anywhere).
const handOverDrain = 2 * time.Second

// hooks let tests steer the service; main passes none.
type hooks struct {
	// links adjusts the connection options (e.g. a test's TLS settings).
	links func(*xmpplink.Options)
	// runtime sees the stage runtime once built (its metrics, its debug address).
	runtime func(*stage.Runtime)
}

// run wires the sender of one node top to bottom and runs it until ctx ends:
// the node's delivery batches in, stanzas out on rate-limited XMPP links, each
// batch committed once a fence proved ejabberd processed it.
func run(ctx context.Context, log zerolog.Logger, cfg config.Config, h hooks) error {
	if cfg.Sender.Node == "" {
		return errors.New("sender: no node to serve: pass -node or set [sender] node")
	}
	node, ok := cfg.Node(cfg.Sender.Node)
	if !ok {
		return fmt.Errorf("sender: node %q is not configured", cfg.Sender.Node)
	}
	log = log.With().Str("node", node.Name).Logger()
	links, err := linkOptions(cfg, node)
	if err != nil {
		return err
	}
	if h.links != nil {
		h.links(&links)
	}

	rt, err := stage.New("sender", cfg, log)
	if err != nil {
		return err
	}
	defer rt.Close()
	// Intake stops first; the links stay up until the batches in flight are fenced and committed.
	rt.ShutdownTimeout = cfg.Sender.FenceTimeout.D() + 15*time.Second
	metrics := prometheus.WrapRegistererWith(prometheus.Labels{"node": node.Name}, rt.Metrics())
	topic := cfg.DeliveriesTopic(node.Name)
	priority := cfg.PriorityTopic(topic)
	rt.Topics(rt.Bus(), topic, priority, cfg.Bus.DeadLetterTopic)
	// With failover, this sender also waits for the other nodes' topics: it may have to take them.
	var peers []config.Node
	if cfg.Sender.FailoverAfter > 0 {
		for _, n := range cfg.Nodes {
			if n.Name != node.Name {
				peers = append(peers, n)
				rt.Topics(rt.Bus(), cfg.DeliveriesTopic(n.Name), cfg.PriorityTopic(cfg.DeliveriesTopic(n.Name)))
			}
		}
	}
	tracker, err := rt.Progress()
	if err != nil {
		return err
	}

	// The use case is built after the pool; the pool tells it of server
	// shutdowns and multicast refusals.
	var sender *delivery.Sender
	links.ServerClosed = func(slot int) { sender.ServerClosed(slot) }
	links.MulticastRefused = func() { sender.MulticastRefused() }
	pool, err := xmpplink.NewPool(links, log, xmpplink.NewMetrics(metrics))
	if err != nil {
		return err
	}
	rt.Serve("xmpp", pool.Run)
	rt.Check("ejabberd", func(context.Context) error {
		if pool.Up() == 0 {
			return fmt.Errorf("no %s connection to %s is up", cfg.Sender.Mode, node.Address)
		}
		return nil
	})

	// Both lanes of a node's topic open and close together: gated with
	// failover, and, in multicast mode, closed until the first probe answered
	// (or failed), so the first batches do not all go one stanza per recipient.
	auto := cfg.Sender.Multicast == config.MulticastAuto
	var own *stage.Gate
	var in *intake
	if len(peers) > 0 || auto {
		in = newIntake(!auto)
		own = in.gate
	}
	var multicast *delivery.Multicast
	if auto {
		// Home is the JID the links connect as (the component's; none in client mode).
		multicast = &delivery.Multicast{Service: cfg.MulticastJID(), Max: cfg.Sender.MulticastMax, Home: links.JID}
		rt.Serve("multicast probe", probeMulticast(pool, multicast, in.probeAnswered, log, metrics))
	}
	sender = delivery.New(delivery.Options{
		UserDomain:   cfg.UserDomain(),
		Templates:    rt.Templates(),
		Conns:        cfg.Ejabberd.EachNodeConnNum,
		RatePerConn:  cfg.Ejabberd.RateLimit,
		Rejections:   cfg.Ejabberd.SendRetry,
		RetryMax:     cfg.Sender.ReconnectMax.D(),
		StepInterval: cfg.Sender.ProgressInterval.D(),
		Progress:     tracker,
		Multicast:    multicast,
		// On a stop, a batch waiting for a connection (ejabberd down) gives
		// up: it has nothing under way to finish, and stays for the next start.
		Waiting: stage.UntilDraining,
		// The batches to send again after a server shutdown or a multicast
		// refusal, their offsets committed, go back to the bus rather than
		// wait in memory for ejabberd: a stop or a crash then loses none.
		Requeue: &requeue{
			w: rt.Writer(rt.Bus(), kafkabus.WriterOptions{}),
			topic: func(of string, high bool) string {
				if of != node.Name && !slices.ContainsFunc(peers, func(p config.Node) bool { return p.Name == of }) {
					return ""
				}
				if high {
					return cfg.PriorityTopic(cfg.DeliveriesTopic(of))
				}
				return cfg.DeliveriesTopic(of)
			},
			own: node.Name,
		},
	}, delivery.LinksOf(pool.Acquire), log, delivery.NewMetrics(metrics))

	// It writes back to the bus: the runtime closes the writer after it returned.
	rt.Serve("shutdown resends", sender.Run)
	handle := deliveries(announcement.NewDecoder(metrics).Batch, sender)
	consumer := stage.ConsumerOptions{
		MaxInFlight: cfg.Sender.MaxInFlight, DrainTimeout: cfg.Sender.FenceTimeout.D(),
		// A fenced batch waits for its commit without holding a sending slot: with
		// the commit's round trip in the sending path, the senders fell 150k stanzas
		// behind fanout in the pipeline benchmark. A crash replays up to 2 × F.
		MaxUncommitted: 2 * cfg.Sender.MaxInFlight,
		Retry:          backoff.Policy{Initial: 100 * time.Millisecond, Max: cfg.Sender.ReconnectMax.D()},
		// An identical batch is the same batch written twice (fanout retried a write).
		Dedupe: 4096,
	}
	lanes := func(name, priorityName, of string, gate *stage.Gate, drain time.Duration, clientID, lanePrefix string) {
		deliveries := cfg.DeliveriesTopic(of)
		rt.Consume(stage.Input{
			Name: name, Group: cfg.Sender.GroupPrefix + of, Topics: []string{deliveries},
			Handle: handle, Labels: prometheus.Labels{"node": of}, ConsumerOptions: consumer, Lane: lanePrefix + "bulk",
			Gate: gate, GateDrain: drain, ClientID: clientID,
		})
		// The priority lane has in-flight slots of its own on the same links: its
		// batches never wait for bulk ones to be fetched, only for a few chunks'
		// worth of the rate limit.
		rt.Consume(stage.Input{
			Name: priorityName, Group: cfg.Sender.GroupPrefix + of + cfg.Bus.PrioritySuffix, Topics: []string{cfg.PriorityTopic(deliveries)},
			Handle: handle, Labels: prometheus.Labels{"node": of}, ConsumerOptions: consumer, Lane: lanePrefix + "priority",
			Gate: gate, GateDrain: drain, ClientID: clientID,
		})
	}
	// Handing over: what is in flight waits for a node that is gone, so it
	// is left (uncommitted) for the sender that takes the topic.
	lanes("deliveries", "priority", node.Name, own, handOverDrain, failover.ClientID(node.Name), "")
	if len(peers) > 0 {
		var ps []failover.Peer
		for _, p := range peers {
			gate := stage.NewGate(false)
			// Giving back: the batches in flight go through a live node; let them finish.
			lanes("takeover "+p.Name, "takeover "+p.Name+" priority", p.Name, gate, cfg.Sender.FenceTimeout.D(), failover.TakeoverClientID(node.Name, p.Name), "takeover_")
			ps = append(ps, failover.Peer{Node: p.Name, Group: cfg.Sender.GroupPrefix + p.Name, Gates: []failover.Gate{gate}})
		}
		// It asks about groups, never topics: the metadata of one topic is enough.
		groups := kafkabus.NewClient(rt.Bus(), 5*time.Second, topic)
		rt.OnClose(func() error { groups.Close(); return nil })
		watcher := failover.New(failover.Options{Node: node.Name, After: cfg.Sender.FailoverAfter.D()},
			func() bool { return pool.Up() > 0 }, []failover.Gate{in}, ps, groups, log, failover.NewMetrics(metrics))
		rt.Serve("failover", watcher.Run)
	}
	if h.runtime != nil {
		h.runtime(rt)
	}
	log.Info().Str("topic", topic).Str("ejabberd", node.Address).Int("connections", links.Conns).Msg("sender configured")
	return rt.Run(ctx)
}

// probeMulticast switches multicast on once the service copied one message
// to Max addresses of ours: a service whose limits are lower would refuse
// (or cut) real multicasts. It tries again with backoff until it works.
func probeMulticast(pool *xmpplink.Pool, mc *delivery.Multicast, answered func(), log zerolog.Logger, reg prometheus.Registerer) func(context.Context) error {
	metric.Must(reg).GaugeFunc("multicast_enabled",
		"1 while batches go out as XEP-0033 multicasts: the service took a probe of [sender] multicast_max addresses, and has refused none since.",
		func() float64 {
			if mc.Enabled() {
				return 1
			}
			return 0
		})
	return func(ctx context.Context) error {
		policy := backoff.Policy{Initial: time.Second, Max: 5 * time.Minute}
		for attempt := 0; ; attempt++ {
			err := pool.ProbeMulticast(ctx, mc.Max)
			if err == nil {
				mc.Enable(true)
				answered()
				log.Info().Str("service", mc.Service).Int("max", mc.Max).Msg("multicast on: the service took a probe of max addresses")
				<-ctx.Done()
				return nil
			}
			if ctx.Err() != nil {
				return nil
			}
			answered()
			log.Warn().Err(err).Msg("multicast stays off for now (one stanza per recipient); probing again")
			if backoff.Sleep(ctx, policy.Delay(attempt)) != nil {
				return nil
			}
		}
	}
}

// linkOptions are the connections to node in the configured mode.
func linkOptions(cfg config.Config, node config.Node) (xmpplink.Options, error) {
	o := xmpplink.Options{
		Node:             node.Name,
		Addr:             node.Address,
		ServerDomain:     cfg.UserDomain(),
		Conns:            cfg.Ejabberd.EachNodeConnNum,
		PingTimeout:      cfg.Sender.FenceTimeout.D(),
		HandshakeTimeout: handshakeTimeout,
		ReconnectMax:     cfg.Sender.ReconnectMax.D(),
		WriteBufferBytes: cfg.Sender.WriteBufferBytes,
	}
	switch cfg.Sender.Mode {
	case config.ModeComponent:
		o.JID = cfg.Component.JID()
		if cfg.Sender.Multicast == config.MulticastAuto {
			o.MulticastService = cfg.MulticastJID()
		}
		o.Secret = cfg.Component.Secret.Value()
		o.PingInterval = time.Duration(cfg.Component.PingInterval) * time.Second
	case config.ModeClient:
		o.PingInterval = time.Duration(cfg.Client.PingInterval) * time.Second
		// The server's certificate is always verified, against the users'
		// domain, with the system roots plus [client] ca_file (a private CA).
		roots, err := cfg.Client.RootCAs()
		if err != nil {
			return o, fmt.Errorf("sender: %w", err)
		}
		o.Handshake = xmpplink.ClientHandshake(cfg.Client.JID(), cfg.Client.Password.Value(), cfg.Client.Resource+"-"+node.Name,
			&tls.Config{ServerName: cfg.Client.Domain, RootCAs: roots, MinVersion: tls.VersionTLS12})
	default:
		return o, fmt.Errorf("sender: [sender] mode %q: want component or client", cfg.Sender.Mode)
	}
	return o, nil
}
