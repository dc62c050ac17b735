package main

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/httpserver"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/stage"
	"github.com/announcer/announcer/services/ingress/internal/announce"
	"github.com/announcer/announcer/services/ingress/internal/httpapi"
	"github.com/announcer/announcer/services/ingress/internal/kafkainput"
	"github.com/announcer/announcer/services/ingress/internal/publisher"
)

// writerBatchSize caps records per produce request. Requests from concurrent
// handlers share batches up to this size or [bus] batch_timeout, whichever
// comes first (cmd/ingress-bench measures the effect).
const writerBatchSize = 500

// hooks let tests watch the service; main passes none.
type hooks struct {
	// listening sees the bound API and debug addresses (useful with port 0).
	listening func(api, debug string)
}

// run wires the ingress top to bottom and runs it until ctx ends: the REST API
// and the Kafka input are the intake, both publishing on one batching writer.
func run(ctx context.Context, log zerolog.Logger, cfg config.Config, h hooks) error {
	rt, err := stage.New("ingress", cfg, log)
	if err != nil {
		return err
	}
	defer rt.Close()
	// Requests and input records in flight get shutdown_timeout; the Kafka
	// input's last commit comes after its drain, and needs its own time.
	rt.ShutdownTimeout = cfg.Ingress.ShutdownTimeout.D() + 10*time.Second
	priority := cfg.PriorityTopic(cfg.Bus.AnnouncementsTopic)
	rt.Topics(rt.Bus(), cfg.Bus.AnnouncementsTopic, priority, cfg.Bus.DeadLetterTopic)

	pub, err := publisher.New(rt.Writer(rt.Bus(), publishWriterOptions(cfg)),
		publisher.Options{AnnouncementsTopic: cfg.Bus.AnnouncementsTopic, PriorityTopic: priority, MaxMessageBytes: cfg.Bus.MaxMessageBytes,
			TopicsReady: rt.TopicsReady}, rt.Metrics())
	if err != nil {
		return err
	}
	var records announce.Records // nil interface without a store
	if store, err := stage.ProgressStore(cfg, log); err != nil {
		return err
	} else if store != nil {
		rt.OnClose(store.Close)
		records = store
	}
	svc, err := announce.New(pub, records, limits(cfg), rt.Metrics())
	if err != nil {
		return err
	}
	if records != nil {
		// Records the requests could not write are written again meanwhile.
		rt.Serve("progress records", svc.Run)
	}

	tokens := make([]string, 0, len(cfg.Auth.Tokens))
	for _, t := range cfg.Auth.Tokens {
		tokens = append(tokens, t.Value())
	}
	if len(tokens) == 0 {
		log.Warn().Msg("!!! [auth] tokens is empty: the REST API accepts announcements from ANYONE who can reach " +
			cfg.RestAPIPort + " — configure bearer tokens before exposing it !!!")
	}
	handler, err := httpapi.New(svc, httpapi.Options{MaxBodyBytes: cfg.Ingress.MaxBodyBytes, MaxInFlightBytes: cfg.Ingress.MaxInFlightBytes, Tokens: tokens}, log, rt.Metrics())
	if err != nil {
		return err
	}
	api := httpserver.New(config.ListenAddr(cfg.RestAPIPort), handler, cfg.Ingress.ShutdownTimeout.D())
	if err := api.Listen(); err != nil {
		return fmt.Errorf("rest_api_port: %w", err)
	}
	rt.OnClose(api.Close)
	rt.Intake("http", api.Run)

	if topics := config.SplitList(cfg.KafkaConsumer.Topics); len(topics) > 0 {
		input, err := kafkainput.New(svc, backoff.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second}, log, rt.Metrics())
		if err != nil {
			return err
		}
		cluster, err := stage.Cluster(cfg.KafkaConsumer.Brokers, cfg.KafkaConsumer.KafkaSecurity)
		if err != nil {
			return fmt.Errorf("[kafka-consumer]: %w", err)
		}
		rt.Consume(stage.Input{
			Name: "kafka-input", Cluster: cluster,
			Group: cfg.KafkaConsumer.GroupName, Topics: topics, Handle: input.Handle, Prefix: "kafka_input_",
			// A new group must not announce the topic's history again (an operator
			// pointing the ingress at the first generation's input, say).
			StartAtEnd:      cfg.KafkaConsumer.StartOffset == "latest",
			ConsumerOptions: stage.ConsumerOptions{MaxInFlight: cfg.KafkaConsumer.Buffer, DrainTimeout: cfg.Ingress.ShutdownTimeout.D()},
		})
	}

	log.Info().Str("api", api.Addr()).Str("topic", cfg.Bus.AnnouncementsTopic).Msg("ingress listening")
	if h.listening != nil {
		h.listening(api.Addr(), rt.DebugAddr())
	}
	return rt.Run(ctx)
}

// publishWriterOptions tune the writer of the REST and Kafka input
// publishes. kafka-go keeps writing a batch in the background after
// WriteMessages returned on its context, retrying up to MaxAttempts times with
// a fresh WriteTimeout each: the request's 503 would hide a write landing
// seconds later. One attempt, bounded by the publish timeout, is over within
// [bus] batch_timeout of the request giving up (later only for a batch queued
// behind another one of its partition). The publisher tries again, within
// the request, only what Kafka says will pass (a leader that moved). A retry
// with the same Idempotency-Key is safe either way; the Kafka input retries
// by itself.
func publishWriterOptions(cfg config.Config) kafkabus.WriterOptions {
	return kafkabus.WriterOptions{
		BatchSize:    writerBatchSize,
		WriteTimeout: min(cfg.Bus.WriteTimeout.D(), cfg.Ingress.PublishTimeout.D()),
		MaxAttempts:  1,
	}
}

// limits derives the door's checks from the config.
func limits(cfg config.Config) announce.Limits {
	return announce.Limits{
		MaxBodyBytes:   cfg.Ingress.MaxBodyBytes,
		MaxUsernames:   cfg.Ingress.MaxUsernames,
		UserDomain:     cfg.UserDomain(),
		Template:       cfg.TemplateRules(),
		PublishTimeout: cfg.Ingress.PublishTimeout.D(),
		PreviewTimeout: cfg.Ingress.PreviewTimeout.D(),
	}
}
