// Package fanout assembles the fanout service from its parts: the MySQL member
// store, a presence source, the audience use case and the Kafka transport.
// It is the whole service minus process concerns (flags, signals), so the
// integration tests and the benchmark run exactly what production runs.
package fanout

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/debugserver"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/kafkain"
	"github.com/announcer/announcer/pkg/lifecycle"
	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/services/fanout/internal/audience"
	"github.com/announcer/announcer/services/fanout/internal/kafkaio"
	"github.com/announcer/announcer/services/fanout/internal/mysqlstore"
	"github.com/announcer/announcer/services/fanout/internal/presence"
)

// maxInFlightWrites bounds the batch writes of one task awaiting acks: enough
// to keep Kafka busy while the next pages are read, small enough to keep memory flat.
const maxInFlightWrites = 8

// shutdownTimeout bounds the whole stop; in-flight events get drainTimeout of it.
const (
	shutdownTimeout = 15 * time.Second
	drainTimeout    = 5 * time.Second
)

// presenceSource is what Run needs of either presence adapter.
type presenceSource interface {
	audience.Presence
	Ping(ctx context.Context) error
	Close() error
}

// Options are what the caller injects besides the config.
type Options struct {
	// Registry receives every metric and serves /metrics.
	Registry *prometheus.Registry
	// Done, if set, sees every event once all its batches are acked (tests, the benchmark);
	// its offset is committed right after, in partition order.
	Done func(announcement.Event, audience.Result)
}

// Run builds every dependency in order, each closed when Run returns, and runs
// the consumer and the debug listener until ctx ends.
func Run(ctx context.Context, log zerolog.Logger, cfg config.Config, o Options) error {
	reg, done := o.Registry, o.Done
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	brokers := config.SplitList(cfg.Bus.Brokers)

	debug := debugserver.New(config.ListenAddr(cfg.DebugPort), reg, cfg.Debug.Pprof)
	// Every announcer metric is named announcer_<service>_…
	metrics := prometheus.WrapRegistererWithPrefix("announcer_", reg)
	if err := debug.Listen(); err != nil {
		return fmt.Errorf("debug listener: %w", err)
	}

	deliveries := make(map[string]string, len(cfg.Nodes))
	nodes := make([]audience.Node, len(cfg.Nodes))
	for i, n := range cfg.Nodes {
		deliveries[n.Name] = cfg.DeliveriesTopic(n.Name)
		nodes[i] = audience.Node{Name: n.Name, PresenceAddresses: n.PresenceAddresses}
	}
	if cfg.Bus.CreateTopics {
		if err := ensureTopics(ctx, log, brokers, cfg, deliveries); err != nil {
			if ctx.Err() != nil {
				return nil // stopped while waiting for Kafka
			}
			return err
		}
	}

	store, err := mysqlstore.Open(cfg.MySQL)
	if err != nil {
		return err
	}
	defer store.Close()

	var source presenceSource
	switch cfg.Fanout.Presence {
	case "rest":
		source = presence.NewREST(cfg.UserActivityREST, cfg.UserActivityAskBuffer)
	default:
		// go-redis logs through a process-wide logger; route it to ours.
		redis.SetLogger(presence.Logger{Log: log.With().Str("component", "redis").Logger()})
		r, err := presence.NewRedis(cfg.UserActivityRedis, presence.RedisOptions{Chunk: cfg.UserActivityAskBuffer})
		if err != nil {
			return err
		}
		source = r
	}
	defer source.Close()

	producer := kafkaio.NewProducer(brokers, kafkabus.WriterOptions{
		BatchTimeout: cfg.Bus.BatchTimeout.D(),
		WriteTimeout: cfg.Bus.WriteTimeout.D(),
		BatchBytes:   int64(cfg.Bus.MaxMessageBytes),
	}, kafkaio.Topics{Deliveries: deliveries, Announcements: cfg.Bus.AnnouncementsTopic, DeadLetter: cfg.Bus.DeadLetterTopic})
	defer producer.Close()

	retry := backoff.Policy{Initial: 100 * time.Millisecond, Max: cfg.Fanout.RetryMax.D()}
	resolver, err := audience.New(audience.Config{
		Nodes:       nodes,
		BatchSize:   cfg.Fanout.BatchSize,
		ShardSize:   cfg.Fanout.ShardSize,
		PageSize:    cfg.MySQL.PaginationLength,
		ScanCount:   cfg.UserActivityAskBuffer,
		MaxInFlight: maxInFlightWrites,
		// Headroom for the record batch framing around one message.
		MaxBatchBytes: cfg.Bus.MaxMessageBytes - 1024,
		RouteUsers:    cfg.Fanout.Presence != "rest",
		Retry:         retry,
	}, store, source, producer, producer, log.With().Str("component", "audience").Logger(), metrics)
	if err != nil {
		return err
	}

	reader := kafkabus.NewReader(brokers, cfg.Fanout.GroupName, []string{cfg.Bus.AnnouncementsTopic}, kafkabus.ReaderOptions{QueueCapacity: 16})
	defer reader.Close()

	tmpl := stanza.Options{MaxBytes: cfg.Ingress.MaxTemplateBytes}
	if cfg.Sender.Mode == config.ModeComponent {
		tmpl.ComponentDomain = cfg.Component.TemplateDomain()
	}
	handler := kafkaio.NewHandler(resolver, kafkaio.Decoder{Template: tmpl}, retry, log.With().Str("component", "consumer").Logger(), done)
	consumer := kafkain.New(reader, producer, handler.Handle, kafkain.Options{
		MaxInFlight:  max(cfg.LogicProcessNumber, 1),
		DrainTimeout: drainTimeout,
	}, log, kafkain.NewMetrics(reg, "fanout", nil))

	debug.AddCheck(debugserver.Check{Name: "mysql", Fn: store.Ping})
	debug.AddCheck(debugserver.Check{Name: "presence", Fn: source.Ping})
	debug.AddCheck(debugserver.Check{Name: "kafka", Fn: func(ctx context.Context) error { return kafkabus.Ping(ctx, brokers) }})

	log.Info().Str("topic", cfg.Bus.AnnouncementsTopic).Str("group", cfg.Fanout.GroupName).
		Str("presence", cfg.Fanout.Presence).Int("nodes", len(nodes)).Str("debug", debug.Addr()).Msg("fanout running")
	return lifecycle.Run(ctx, log, shutdownTimeout,
		[]lifecycle.Part{{Name: "consumer", Run: consumer.Run}},
		[]lifecycle.Part{{Name: "debug", Run: debug.Run}},
	)
}

// ensureTopics creates the topics fanout reads and writes, waiting for Kafka
// if it is not up yet (the service then starts when Kafka does).
func ensureTopics(ctx context.Context, log zerolog.Logger, brokers []string, cfg config.Config, deliveries map[string]string) error {
	topic := func(name string) kafkabus.Topic {
		return kafkabus.Topic{Name: name, Partitions: cfg.Bus.Partitions, ReplicationFactor: cfg.Bus.ReplicationFactor}
	}
	topics := []kafkabus.Topic{topic(cfg.Bus.AnnouncementsTopic), topic(cfg.Bus.DeadLetterTopic)}
	for _, t := range deliveries {
		topics = append(topics, topic(t))
	}
	return backoff.Retry(ctx, backoff.Policy{Initial: 200 * time.Millisecond, Max: 5 * time.Second}, func() error {
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return kafkabus.EnsureTopics(tctx, brokers, topics...)
	}, func(err error, attempt int) {
		log.Warn().Err(err).Int("attempt", attempt).Msg("creating topics; is Kafka up?")
	})
}
