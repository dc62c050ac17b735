package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/debugserver"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/kafkain"
	"github.com/announcer/announcer/pkg/lifecycle"
	"github.com/announcer/announcer/services/sender/internal/component"
	"github.com/announcer/announcer/services/sender/internal/delivery"
)

// handshakeTimeout bounds dial + XEP-0114 handshake; there is no config key for it.
const handshakeTimeout = 10 * time.Second

// flags adds -node, which overrides [sender] node (with a single node
// configured and none named, that node is served), and -component-name,
// which overrides [component] name (a replica with a component domain of
// its own, so ping results and bounces come back to it alone).
func flags(fs *flag.FlagSet) func(*config.Config) {
	node := fs.String("node", "", "name of the ejabberd node this sender serves (overrides [sender] node)")
	name := fs.String("component-name", "", "component name or full component domain (overrides [component] name)")
	return func(c *config.Config) {
		if *node != "" {
			c.Sender.Node = *node
		}
		if *name != "" {
			c.Component.Name = *name
		}
		if c.Sender.Node == "" && len(c.Nodes) == 1 {
			c.Sender.Node = c.Nodes[0].Name
		}
	}
}

// run builds every dependency in order and runs them until ctx ends.
func run(ctx context.Context, log zerolog.Logger, cfg config.Config) error {
	deps, err := build(ctx, log, cfg, nil)
	if err != nil {
		return err
	}
	defer deps.close()
	return deps.run(ctx)
}

type sender struct {
	log      zerolog.Logger
	cfg      config.Config
	dbg      *debugserver.Server
	pool     *component.Pool
	consumer *kafkain.Consumer
	closers  []func() error
}

func (s *sender) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		_ = s.closers[i]()
	}
}

func (s *sender) run(ctx context.Context) error {
	// Intake stops first; the connections stay up until the batches in flight
	// are fenced and committed; /metrics stays up to the end.
	return lifecycle.Run(ctx, s.log, s.cfg.Sender.FenceTimeout.D()+15*time.Second,
		[]lifecycle.Part{{Name: "kafka-in", Run: s.consumer.Run}},
		[]lifecycle.Part{{Name: "component", Run: s.pool.Run}},
		[]lifecycle.Part{{Name: "debug", Run: s.dbg.Run}},
	)
}

// build constructs the sender. opts may replace the component dialer (tests).
func build(ctx context.Context, log zerolog.Logger, cfg config.Config, tweak func(*component.Options)) (_ *sender, err error) {
	if cfg.Sender.Node == "" {
		return nil, errors.New("sender: no node to serve: pass -node or set [sender] node")
	}
	node, ok := cfg.Node(cfg.Sender.Node)
	if !ok {
		return nil, fmt.Errorf("sender: node %q is not configured", cfg.Sender.Node)
	}
	s := &sender{log: log.With().Str("node", node.Name).Logger(), cfg: cfg}
	defer func() {
		if err != nil {
			s.close()
		}
	}()

	copt := component.Options{
		Node:             node.Name,
		Addr:             node.Address,
		ServerDomain:     cfg.UserDomain(),
		Conns:            cfg.Ejabberd.EachNodeConnNum,
		PingTimeout:      cfg.Sender.FenceTimeout.D(),
		HandshakeTimeout: handshakeTimeout,
		ReconnectMax:     cfg.Sender.ReconnectMax.D(),
		WriteBufferBytes: cfg.Sender.WriteBufferBytes,
	}
	uopt := delivery.Options{
		UserDomain:       cfg.UserDomain(),
		MaxTemplateBytes: cfg.Ingress.MaxTemplateBytes,
		Conns:            cfg.Ejabberd.EachNodeConnNum,
		RatePerConn:      cfg.Ejabberd.RateLimit,
		Rejections:       cfg.Ejabberd.SendRetry,
		RetryMax:         cfg.Sender.ReconnectMax.D(),
	}
	switch cfg.Sender.Mode {
	case config.ModeComponent:
		copt.JID = cfg.Component.JID()
		copt.Secret = cfg.Component.Secret.Value()
		copt.PingInterval = time.Duration(cfg.Component.PingInterval) * time.Second
		uopt.ComponentDomain = cfg.Component.TemplateDomain()
	case config.ModeClient:
		account := clientAccount(cfg.Client)
		copt.PingInterval = time.Duration(cfg.Client.PingInterval) * time.Second
		// The server's certificate is verified against the users' domain.
		copt.Handshake = component.ClientHandshake(account, cfg.Client.Password.Value(), cfg.Client.Resource,
			&tls.Config{ServerName: cfg.Client.Domain, MinVersion: tls.VersionTLS12})
		uopt.ClientJID = account
	default:
		return nil, fmt.Errorf("sender: [sender] mode %q: want component or client", cfg.Sender.Mode)
	}
	if tweak != nil {
		tweak(&copt)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.dbg = debugserver.New(config.ListenAddr(cfg.DebugPort), reg, cfg.Debug.Pprof)

	brokers := config.SplitList(cfg.Bus.Brokers)
	topic := cfg.DeliveriesTopic(node.Name)
	if cfg.Bus.CreateTopics {
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := kafkabus.EnsureTopics(tctx, brokers,
			kafkabus.Topic{Name: topic, Partitions: cfg.Bus.Partitions, ReplicationFactor: cfg.Bus.ReplicationFactor},
			kafkabus.Topic{Name: cfg.Bus.DeadLetterTopic, Partitions: cfg.Bus.Partitions, ReplicationFactor: cfg.Bus.ReplicationFactor})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("sender: %w", err)
		}
	}

	s.pool, err = component.NewPool(copt, s.log, component.NewMetrics(reg, node.Name))
	if err != nil {
		return nil, err
	}

	dlq := kafkabus.NewWriter(brokers, kafkabus.WriterOptions{
		BatchTimeout: cfg.Bus.BatchTimeout.D(), WriteTimeout: cfg.Bus.WriteTimeout.D(),
	})
	// A transport of its own: kafka-go's shared default one caches metadata
	// for seconds and may not know the topics EnsureTopics just created.
	dlqTransport := &kafka.Transport{}
	dlq.Transport = dlqTransport
	s.closers = append(s.closers, func() error { dlqTransport.CloseIdleConnections(); return nil }, dlq.Close)
	reader := kafkabus.NewReader(brokers, cfg.Sender.GroupPrefix+node.Name, []string{topic},
		kafkabus.ReaderOptions{QueueCapacity: cfg.Sender.MaxInFlight})
	s.closers = append(s.closers, reader.Close)

	uc := delivery.New(uopt, poolLinks{s.pool}, s.log, delivery.NewMetrics(reg, node.Name))

	s.consumer = kafkain.New(reader, kafkabus.DeadLetters{W: dlq, Topic: cfg.Bus.DeadLetterTopic, MaxBytes: cfg.Bus.MaxMessageBytes}, handler(uc), kafkain.Options{
		MaxInFlight:  cfg.Sender.MaxInFlight,
		DrainTimeout: cfg.Sender.FenceTimeout.D(),
		RetryMax:     cfg.Sender.ReconnectMax.D(),
	}, s.log, kafkain.NewMetrics(reg, "sender", prometheus.Labels{"node": node.Name}))

	s.dbg.AddCheck(debugserver.Check{Name: "ejabberd", Fn: func(context.Context) error {
		if s.pool.Up() == 0 {
			return fmt.Errorf("no %s connection to %s is up", cfg.Sender.Mode, node.Address)
		}
		return nil
	}})
	s.dbg.AddCheck(debugserver.Check{Name: "kafka", Fn: func(ctx context.Context) error {
		return kafkabus.Ping(ctx, brokers)
	}})
	// Bound last: nothing after it can fail and leave the port taken.
	if err := s.dbg.Listen(); err != nil {
		return nil, fmt.Errorf("sender: debug listener: %w", err)
	}
	s.log.Info().Str("topic", topic).Str("ejabberd", node.Address).Int("connections", copt.Conns).
		Str("debug", s.dbg.Addr()).Msg("sender configured")
	return s, nil
}

// handler translates a Kafka message into the use case's terms.
func handler(uc *delivery.Sender) kafkain.Handler {
	return func(ctx context.Context, m kafka.Message) error {
		b, err := announcement.DecodeBatch(m.Value)
		if err != nil {
			return &kafkain.Reject{Reason: err.Error()}
		}
		err = uc.Deliver(ctx, &b)
		var bad *delivery.BadBatchError
		if errors.As(err, &bad) {
			return &kafkain.Reject{Reason: bad.Reason}
		}
		return err
	}
}

// poolLinks adapts the component pool to the use case's Links.
type poolLinks struct{ p *component.Pool }

func (l poolLinks) Acquire(ctx context.Context) (delivery.Link, error) {
	c, err := l.p.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// clientAccount is the sending account's bare JID: [client] username, completed
// with [client] domain unless it already has one.
func clientAccount(c config.Client) string {
	if strings.Contains(c.Username, "@") {
		return c.Username
	}
	return c.Username + "@" + c.Domain
}
