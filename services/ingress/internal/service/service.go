// Package service assembles the ingress: it builds every dependency in order,
// runs the REST API, the Kafka input and the debug listener, and shuts them
// down upstream first (HTTP, then the Kafka input, then the writer).
//
// It lives outside package main so the benchmark and the integration tests
// start exactly what the binary starts.
package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/debugserver"
	"github.com/announcer/announcer/pkg/httpserver"
	"github.com/announcer/announcer/pkg/kafkabus"
	consumer "github.com/announcer/announcer/pkg/kafkain"
	"github.com/announcer/announcer/pkg/lifecycle"
	"github.com/announcer/announcer/services/ingress/internal/announce"
	"github.com/announcer/announcer/services/ingress/internal/httpapi"
	"github.com/announcer/announcer/services/ingress/internal/kafkain"
	"github.com/announcer/announcer/services/ingress/internal/publisher"
)

// WriterBatchSize caps records per produce request. Requests from concurrent
// handlers share batches up to this size or [bus] batch_timeout, whichever
// comes first (cmd/ingress-bench measures the effect).
const WriterBatchSize = 500

// topicSetupTimeout bounds creating topics at start-up.
const topicSetupTimeout = 30 * time.Second

// Options are for callers that start the service in-process.
type Options struct {
	// Listening, when set, is called with the bound API and debug addresses
	// once both ports are open (useful with port 0).
	Listening func(apiAddr, debugAddr string)
}

// Run runs the ingress until ctx ends or a part fails.
func Run(ctx context.Context, log zerolog.Logger, cfg config.Config, opt Options) error {
	reg := prometheus.NewRegistry()
	if err := errors.Join(
		reg.Register(collectors.NewGoCollector()),
		reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})),
	); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	// Every announcer metric is named announcer_<service>_…
	metrics := prometheus.WrapRegistererWithPrefix("announcer_", reg)

	busBrokers := config.SplitList(cfg.Bus.Brokers)
	if cfg.Bus.CreateTopics {
		tctx, cancel := context.WithTimeout(ctx, topicSetupTimeout)
		err := kafkabus.EnsureTopics(tctx, busBrokers,
			kafkabus.Topic{Name: cfg.Bus.AnnouncementsTopic, Partitions: cfg.Bus.Partitions, ReplicationFactor: cfg.Bus.ReplicationFactor},
			kafkabus.Topic{Name: cfg.Bus.DeadLetterTopic, Partitions: cfg.Bus.Partitions, ReplicationFactor: cfg.Bus.ReplicationFactor},
		)
		cancel()
		if err != nil {
			return fmt.Errorf("bus topics: %w", err)
		}
	}

	w := kafkabus.NewWriter(busBrokers, kafkabus.WriterOptions{
		BatchTimeout: cfg.Bus.BatchTimeout.D(),
		WriteTimeout: cfg.Bus.WriteTimeout.D(),
		BatchBytes:   int64(cfg.Bus.MaxMessageBytes),
	})
	w.BatchSize = WriterBatchSize
	// An own transport, so closing the service closes its broker connections
	// (kafka-go's default transport is process-wide and never closed).
	tr := &kafka.Transport{}
	w.Transport = tr
	defer func() {
		if err := w.Close(); err != nil {
			log.Error().Err(err).Msg("closing the Kafka writer")
		}
		tr.CloseIdleConnections()
	}()
	pub, err := publisher.New(w, publisher.Options{
		AnnouncementsTopic: cfg.Bus.AnnouncementsTopic,
		DeadLetterTopic:    cfg.Bus.DeadLetterTopic,
		MaxMessageBytes:    cfg.Bus.MaxMessageBytes,
	}, metrics)
	if err != nil {
		return err
	}

	svc, err := announce.New(pub, Limits(cfg), metrics)
	if err != nil {
		return err
	}

	tokens := make([]string, 0, len(cfg.Auth.Tokens))
	for _, t := range cfg.Auth.Tokens {
		tokens = append(tokens, t.Value())
	}
	if len(tokens) == 0 {
		log.Warn().Msg("!!! [auth] tokens is empty: the REST API accepts announcements from ANYONE who can reach " +
			cfg.RestAPIPort + " — configure bearer tokens before exposing it !!!")
	}
	handler, err := httpapi.New(svc, httpapi.Options{MaxBodyBytes: cfg.Ingress.MaxBodyBytes, Tokens: tokens}, log, metrics)
	if err != nil {
		return err
	}
	api := httpserver.New(config.ListenAddr(cfg.RestAPIPort), handler, cfg.Ingress.ShutdownTimeout.D())
	if err := api.Listen(); err != nil {
		return fmt.Errorf("rest_api_port: %w", err)
	}

	checks := []debugserver.Check{{Name: "kafka", Fn: func(ctx context.Context) error { return kafkabus.Ping(ctx, busBrokers) }}}
	var input []lifecycle.Part
	if topics := config.SplitList(cfg.KafkaConsumer.Topics); len(topics) > 0 {
		inBrokers := config.SplitList(cfg.KafkaConsumer.Brokers)
		reader := kafkabus.NewReader(inBrokers, cfg.KafkaConsumer.GroupName, topics, kafkabus.ReaderOptions{})
		defer func() {
			if err := reader.Close(); err != nil {
				log.Error().Err(err).Msg("closing the Kafka input reader")
			}
		}()
		h, err := kafkain.New(svc, backoff.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second}, log, metrics)
		if err != nil {
			return err
		}
		cons := consumer.New(reader, pub, h.Handle, consumer.Options{
			MaxInFlight:  cfg.KafkaConsumer.Buffer,
			DrainTimeout: cfg.Ingress.ShutdownTimeout.D(),
		}, log, consumer.NewMetrics(reg, "ingress_kafka_input", nil))
		input = append(input, lifecycle.Part{Name: "kafka-input", Run: cons.Run})
		checks = append(checks, debugserver.Check{Name: "kafka-input", Fn: func(ctx context.Context) error { return kafkabus.Ping(ctx, inBrokers) }})
		log.Info().Strs("topics", topics).Str("group", cfg.KafkaConsumer.GroupName).Msg("consuming Kafka input")
	}

	dbg := debugserver.New(config.ListenAddr(cfg.DebugPort), reg, cfg.Debug.Pprof, checks...)
	if err := dbg.Listen(); err != nil {
		_ = api.Close()
		return fmt.Errorf("debug_port: %w", err)
	}
	log.Info().Str("api", api.Addr()).Str("debug", dbg.Addr()).Str("topic", cfg.Bus.AnnouncementsTopic).Msg("ingress listening")
	if opt.Listening != nil {
		opt.Listening(api.Addr(), dbg.Addr())
	}

	return lifecycle.Run(ctx, log, cfg.Ingress.ShutdownTimeout.D(),
		[]lifecycle.Part{{Name: "http", Run: api.Run}},
		input,
		[]lifecycle.Part{{Name: "debug", Run: dbg.Run}},
	)
}

// Limits derives the door's checks from the config.
func Limits(cfg config.Config) announce.Limits {
	lim := announce.Limits{
		MaxBodyBytes:     cfg.Ingress.MaxBodyBytes,
		MaxUsernames:     cfg.Ingress.MaxUsernames,
		MaxTemplateBytes: cfg.Ingress.MaxTemplateBytes,
		UserDomain:       cfg.UserDomain(),
		PublishTimeout:   cfg.Ingress.PublishTimeout.D(),
	}
	if cfg.Sender.Mode == config.ModeComponent {
		lim.ComponentDomain = cfg.Component.TemplateDomain()
	}
	return lim
}
