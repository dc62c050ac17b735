package main

import (
	"context"
	"errors"
	"fmt"
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
	"github.com/announcer/announcer/services/archiver/internal/archive"
	"github.com/announcer/announcer/services/archiver/internal/storage"
)

const (
	// maxInFlight bounds the batches being stored at once; [archiver] has no key for it.
	maxInFlight = 8
	// drainTimeout bounds how long batches in flight may finish on shutdown.
	drainTimeout = 20 * time.Second
)

// run builds every dependency in order and runs them until ctx ends.
func run(ctx context.Context, log zerolog.Logger, cfg config.Config) error {
	a, err := build(ctx, log, cfg, storage.Options{})
	if err != nil {
		return err
	}
	defer a.close()
	return a.run(ctx)
}

type archiver struct {
	log      zerolog.Logger
	dbg      *debugserver.Server
	consumer *kafkain.Consumer
	closers  []func() error
}

func (a *archiver) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		_ = a.closers[i]()
	}
}

func (a *archiver) run(ctx context.Context) error {
	return lifecycle.Run(ctx, a.log, drainTimeout+15*time.Second,
		[]lifecycle.Part{{Name: "kafka-in", Run: a.consumer.Run}},
		[]lifecycle.Part{{Name: "debug", Run: a.dbg.Run}},
	)
}

// build constructs the archiver; so may replace the storage dialer (tests).
func build(ctx context.Context, log zerolog.Logger, cfg config.Config, so storage.Options) (_ *archiver, err error) {
	a := &archiver{log: log}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.dbg = debugserver.New(config.ListenAddr(cfg.DebugPort), reg, cfg.Debug.Pprof)

	bus := config.SplitList(cfg.Bus.Brokers)
	store := config.SplitList(cfg.KafkaProducer.Brokers)
	storeTopics := config.SplitList(cfg.KafkaProducer.Topics)
	var topics []string
	for _, n := range cfg.Nodes {
		topics = append(topics, cfg.DeliveriesTopic(n.Name))
	}
	if cfg.Bus.CreateTopics {
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		want := []kafkabus.Topic{{Name: cfg.Bus.DeadLetterTopic, Partitions: cfg.Bus.Partitions, ReplicationFactor: cfg.Bus.ReplicationFactor}}
		for _, t := range topics {
			want = append(want, kafkabus.Topic{Name: t, Partitions: cfg.Bus.Partitions, ReplicationFactor: cfg.Bus.ReplicationFactor})
		}
		if err := kafkabus.EnsureTopics(tctx, bus, want...); err != nil {
			return nil, fmt.Errorf("archiver: bus: %w", err)
		}
		want = want[:0]
		for _, t := range storeTopics {
			want = append(want, kafkabus.Topic{Name: t, Partitions: cfg.Bus.Partitions, ReplicationFactor: cfg.Bus.ReplicationFactor})
		}
		if err := kafkabus.EnsureTopics(tctx, store, want...); err != nil {
			return nil, fmt.Errorf("archiver: storage cluster: %w", err)
		}
	}

	so.Linger = time.Duration(cfg.KafkaProducer.FlushFrequency) * time.Second
	so.MaxRetry = cfg.KafkaProducer.MaxRetry
	so.WriteTimeout = cfg.Bus.WriteTimeout.D()
	sw := storage.New(store, storeTopics, so)
	a.closers = append(a.closers, sw.Close)
	dlq := kafkabus.NewWriter(bus, kafkabus.WriterOptions{BatchTimeout: cfg.Bus.BatchTimeout.D(), WriteTimeout: cfg.Bus.WriteTimeout.D()})
	// A transport of its own: kafka-go's shared default one caches metadata
	// for seconds and may not know the topics EnsureTopics just created.
	dlqTransport := &kafka.Transport{}
	dlq.Transport = dlqTransport
	a.closers = append(a.closers, func() error { dlqTransport.CloseIdleConnections(); return nil }, dlq.Close)
	reader := kafkabus.NewReader(bus, cfg.Archiver.GroupName, topics, kafkabus.ReaderOptions{QueueCapacity: maxInFlight})
	a.closers = append(a.closers, reader.Close)

	componentDomain := ""
	if cfg.Sender.Mode == config.ModeComponent {
		componentDomain = cfg.Component.TemplateDomain()
	}
	uc := archive.New(archive.Options{
		UserDomain: cfg.UserDomain(), ComponentDomain: componentDomain, MaxTemplateBytes: cfg.Ingress.MaxTemplateBytes,
	}, sw, log, archive.NewMetrics(reg))
	a.consumer = kafkain.New(reader, kafkabus.DeadLetters{W: dlq, Topic: cfg.Bus.DeadLetterTopic, MaxBytes: cfg.Bus.MaxMessageBytes}, handler(uc), kafkain.Options{
		MaxInFlight: maxInFlight, DrainTimeout: drainTimeout,
	}, log, kafkain.NewMetrics(reg, "archiver", nil))

	a.dbg.AddCheck(debugserver.Check{Name: "bus", Fn: func(ctx context.Context) error { return kafkabus.Ping(ctx, bus) }})
	a.dbg.AddCheck(debugserver.Check{Name: "storage", Fn: func(ctx context.Context) error { return kafkabus.Ping(ctx, store) }})
	// Bound last: nothing after it can fail and leave the port taken.
	if err := a.dbg.Listen(); err != nil {
		return nil, fmt.Errorf("archiver: debug listener: %w", err)
	}
	log.Info().Strs("topics", topics).Strs("storage", storeTopics).Str("debug", a.dbg.Addr()).Msg("archiver configured")
	return a, nil
}

// handler translates a Kafka message into the use case's terms.
func handler(uc *archive.Archiver) kafkain.Handler {
	return func(ctx context.Context, m kafka.Message) error {
		b, err := announcement.DecodeBatch(m.Value)
		if err != nil {
			return &kafkain.Reject{Reason: err.Error()}
		}
		err = uc.Archive(ctx, &b)
		var bad *archive.BadBatchError
		if errors.As(err, &bad) {
			return &kafkain.Reject{Reason: bad.Reason}
		}
		return err
	}
}
