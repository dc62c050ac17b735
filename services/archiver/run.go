package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/stage"
	"github.com/announcer/announcer/services/archiver/internal/archive"
	"github.com/announcer/announcer/services/archiver/internal/storage"
)

const (
	// maxInFlight bounds the batches being stored at once; [archiver] has no key for it.
	maxInFlight = 8
	// drainTimeout bounds how long batches in flight may finish on shutdown.
	drainTimeout = 20 * time.Second
	// The archive may lag by a second: the broker then answers the archiver
	// with up to a megabyte of batches per partition instead of one fetch per
	// batch, and idle partitions are polled half as often. The batches of a
	// fetch still go through the maxInFlight window, committed as they finish,
	// so a crash replays no more than before.
	fetchMinBytes = 1 << 20
	fetchMaxWait  = time.Second
)

// hooks let tests steer the service; main passes none.
type hooks struct {
	// storageDial replaces the dialer of the storage cluster's connections.
	storageDial func(ctx context.Context, network, addr string) (net.Conn, error)
	// runtime sees the stage runtime once built (its metrics, its debug address).
	runtime func(*stage.Runtime)
}

// run wires the archiver top to bottom and runs it until ctx ends: every
// node's delivery batches in, one rendered stanza per persisted recipient out
// on the storage cluster, each batch committed once all of it is acknowledged.
func run(ctx context.Context, log zerolog.Logger, cfg config.Config, h hooks) error {
	rt, err := stage.New("archiver", cfg, log)
	if err != nil {
		return err
	}
	defer rt.Close()
	rt.ShutdownTimeout = drainTimeout + 15*time.Second

	var deliveries []string
	for _, n := range cfg.Nodes {
		deliveries = append(deliveries, cfg.DeliveriesTopic(n.Name), cfg.PriorityTopic(cfg.DeliveriesTopic(n.Name)))
	}
	rt.Topics(rt.Bus(), append([]string{cfg.Bus.DeadLetterTopic}, deliveries...)...)
	tracker, err := rt.Progress()
	if err != nil {
		return err
	}
	storeCluster, err := stage.Cluster(cfg.KafkaProducer.Brokers, cfg.KafkaProducer.KafkaSecurity)
	if err != nil {
		return fmt.Errorf("[kafka-producer]: %w", err)
	}
	storeTopics := config.SplitList(cfg.KafkaProducer.Topics)
	rt.Topics(storeCluster, storeTopics...)
	rt.Check("storage", func(ctx context.Context) error { return kafkabus.Ping(ctx, storeCluster) })

	wopts := storageWriterOptions(cfg, h.storageDial)
	store := storage.New(rt.Writer(storeCluster, wopts), storeTopics)
	archiver := archive.New(archive.Options{
		UserDomain:     cfg.UserDomain(),
		Templates:      rt.Templates(),
		Progress:       tracker,
		MaxRecordBytes: int(wopts.BatchBytes),
	}, store, log, archive.NewMetrics(rt.Metrics()))

	decoded := stage.Decoded(announcement.NewDecoder(rt.Metrics()).Batch, archiver.Archive)
	rt.Consume(stage.Input{
		Name: "deliveries", Group: cfg.Archiver.GroupName, Topics: deliveries,
		Handle: func(ctx context.Context, m kafka.Message) error {
			// Most batches are not persisted: their header says so, and
			// decoding a thousand recipients to learn it is wasted work.
			if persisted(m) == "0" {
				archiver.NotPersisted()
				return nil
			}
			return decoded(ctx, m)
		},
		ConsumerOptions: stage.ConsumerOptions{
			MaxInFlight: maxInFlight, DrainTimeout: drainTimeout,
			Retry: backoff.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second},
			// An identical batch is the same batch written twice (fanout retried a write).
			Dedupe: 4096,
		},
		FetchMinBytes: fetchMinBytes, FetchMaxWait: fetchMaxWait,
	})
	if h.runtime != nil {
		h.runtime(rt)
	}
	log.Info().Strs("topics", deliveries).Strs("storage", storeTopics).Msg("archiver configured")
	return rt.Run(ctx)
}

// persisted is the batch's persist header ("" for records written before it existed).
func persisted(m kafka.Message) string {
	for _, h := range m.Headers {
		if h.Key == announcement.HeaderPersist {
			return string(h.Value)
		}
	}
	return ""
}

// storageWriterOptions: the archiver hands the writer a whole delivery
// batch's records in one call, so a produce request may hold a delivery
// batch per partition and leaves within the bus's linger, which
// flush_frequency bounds. kafka-go's default of 100 records a request made
// the broker answer a request per 100 stanzas. BatchBytes is set here, not
// left to the runtime's default, because the archiver refuses a stanza over
// it before writing (kafka-go would refuse the whole write).
func storageWriterOptions(cfg config.Config, dial func(ctx context.Context, network, addr string) (net.Conn, error)) kafkabus.WriterOptions {
	linger := cfg.Bus.BatchTimeout.D()
	if bound := time.Duration(cfg.KafkaProducer.FlushFrequency) * time.Second; bound > 0 && bound < linger {
		linger = bound
	}
	return kafkabus.WriterOptions{
		BatchTimeout: linger,
		BatchSize:    max(cfg.Fanout.BatchSize, 100),
		MaxAttempts:  cfg.KafkaProducer.MaxRetry + 1,
		BatchBytes:   int64(cfg.Bus.MaxMessageBytes),
		Dial:         dial,
	}
}
