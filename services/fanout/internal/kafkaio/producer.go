// Package kafkaio is fanout's Kafka transport: a consumer loop that feeds
// announcement events to the audience use case and commits each offset only
// after the use case's output is acknowledged, and the producer that writes
// delivery batches, shard tasks and dead letters.
package kafkaio

import (
	"context"
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/services/fanout/internal/audience"
)

// Producer writes fanout's output. Every write returns after acks=all.
type Producer struct {
	transport     *kafka.Transport // own pool, so Close leaves no connections behind
	batches       *kafka.Writer    // hash of the key: spreads one announcement's batches over partitions
	tasks         *kafka.Writer    // round robin: shard tasks land on different partitions, hence workers
	deliveries    map[string]string
	announcements string
	deadLetter    string
}

var (
	_ audience.BatchSink = (*Producer)(nil)
	_ audience.TaskSink  = (*Producer)(nil)
)

// Topics names what the producer writes to.
type Topics struct {
	Deliveries    map[string]string // node name → deliveries topic
	Announcements string            // shard tasks go back here
	DeadLetter    string
}

// NewProducer builds the writers on brokers.
func NewProducer(brokers []string, o kafkabus.WriterOptions, t Topics) *Producer {
	tr := &kafka.Transport{}
	batches := kafkabus.NewWriter(brokers, o)
	batches.Transport = tr
	tasks := kafkabus.NewWriter(brokers, o)
	tasks.Transport = tr
	tasks.Balancer = &kafka.RoundRobin{}
	return &Producer{
		transport:     tr,
		batches:       batches,
		tasks:         tasks,
		deliveries:    t.Deliveries,
		announcements: t.Announcements,
		deadLetter:    t.DeadLetter,
	}
}

// Close flushes and closes the writers.
func (p *Producer) Close() error {
	err1 := p.batches.Close()
	err2 := p.tasks.Close()
	p.transport.CloseIdleConnections()
	if err1 != nil {
		return err1
	}
	return err2
}

// WriteBatches implements audience.BatchSink: each batch goes to its node's
// deliveries topic, keyed by announcement/shard/seq.
func (p *Producer) WriteBatches(ctx context.Context, batches []announcement.Batch) error {
	msgs := make([]kafka.Message, len(batches))
	for i := range batches {
		b := &batches[i]
		topic, ok := p.deliveries[b.Node]
		if !ok {
			return fmt.Errorf("kafka: no deliveries topic for node %q", b.Node)
		}
		v, err := b.Encode()
		if err != nil {
			return fmt.Errorf("kafka: encode batch: %w", err)
		}
		msgs[i] = kafka.Message{Topic: topic, Key: b.Key(), Value: v}
	}
	if err := p.batches.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("kafka: write %d batches: %w", len(msgs), err)
	}
	return nil
}

// WriteTasks implements audience.TaskSink.
func (p *Producer) WriteTasks(ctx context.Context, tasks []announcement.Event) error {
	msgs := make([]kafka.Message, len(tasks))
	for i := range tasks {
		v, err := tasks[i].Encode()
		if err != nil {
			return fmt.Errorf("kafka: encode shard task: %w", err)
		}
		key := tasks[i].ID
		if s := tasks[i].Shard; s != nil {
			key = fmt.Sprintf("%s/shard/%d", tasks[i].ID, s.Index)
		}
		msgs[i] = kafka.Message{Topic: p.announcements, Key: []byte(key), Value: v}
	}
	if err := p.tasks.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("kafka: write %d shard tasks: %w", len(msgs), err)
	}
	return nil
}

// DeadLetter copies a record that cannot be used to the dead-letter topic,
// with why and where from in headers.
func (p *Producer) DeadLetter(ctx context.Context, m kafka.Message, reason string) error {
	err := p.batches.WriteMessages(ctx, kafkabus.DeadLetter(m, p.deadLetter, reason, 0))
	if err != nil {
		return fmt.Errorf("kafka: dead letter: %w", err)
	}
	return nil
}
