package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/stage"
	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/services/sender/internal/delivery"
	"github.com/announcer/announcer/services/sender/internal/xmpplink"
)

// handshakeTimeout bounds dial + handshake; there is no config key for it.
const handshakeTimeout = 10 * time.Second

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
	rt.Topics(rt.Brokers(), topic, priority, cfg.Bus.DeadLetterTopic)
	tracker, err := rt.Progress()
	if err != nil {
		return err
	}

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

	sender := delivery.New(delivery.Options{
		UserDomain:   cfg.UserDomain(),
		Templates:    stanza.NewCache(cfg.TemplateRules(), 1024),
		Conns:        cfg.Ejabberd.EachNodeConnNum,
		RatePerConn:  cfg.Ejabberd.RateLimit,
		Rejections:   cfg.Ejabberd.SendRetry,
		RetryMax:     cfg.Sender.ReconnectMax.D(),
		StepInterval: cfg.Sender.ProgressInterval.D(),
		Progress:     tracker,
	}, delivery.LinksOf(pool.Acquire), log, delivery.NewMetrics(metrics))

	handle := stage.Decoded(announcement.NewDecoder(metrics).Batch, sender.Deliver)
	consumer := stage.ConsumerOptions{
		MaxInFlight: cfg.Sender.MaxInFlight, DrainTimeout: cfg.Sender.FenceTimeout.D(),
		Retry: backoff.Policy{Initial: 100 * time.Millisecond, Max: cfg.Sender.ReconnectMax.D()},
		// An identical batch is the same batch written twice (fanout retried a write).
		Dedupe: 4096,
	}
	rt.Consume(stage.Input{
		Name: "deliveries", Group: cfg.Sender.GroupPrefix + node.Name, Topics: []string{topic},
		Handle: handle, Labels: prometheus.Labels{"node": node.Name}, ConsumerOptions: consumer,
	})
	// The priority lane has in-flight slots of its own on the same links: its
	// batches never wait for bulk ones to be fetched, only for a few chunks'
	// worth of the rate limit.
	rt.Consume(stage.Input{
		Name: "priority", Group: cfg.Sender.GroupPrefix + node.Name + cfg.Bus.PrioritySuffix, Topics: []string{priority},
		Handle: handle, Labels: prometheus.Labels{"node": node.Name}, ConsumerOptions: consumer, Prefix: "priority_",
	})
	if h.runtime != nil {
		h.runtime(rt)
	}
	log.Info().Str("topic", topic).Str("ejabberd", node.Address).Int("connections", links.Conns).Msg("sender configured")
	return rt.Run(ctx)
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
		o.Secret = cfg.Component.Secret.Value()
		o.PingInterval = time.Duration(cfg.Component.PingInterval) * time.Second
	case config.ModeClient:
		o.PingInterval = time.Duration(cfg.Client.PingInterval) * time.Second
		// The server's certificate is verified against the users' domain.
		o.Handshake = xmpplink.ClientHandshake(cfg.Client.JID(), cfg.Client.Password.Value(), cfg.Client.Resource,
			&tls.Config{ServerName: cfg.Client.Domain, MinVersion: tls.VersionTLS12})
	default:
		return o, fmt.Errorf("sender: [sender] mode %q: want component or client", cfg.Sender.Mode)
	}
	return o, nil
}
