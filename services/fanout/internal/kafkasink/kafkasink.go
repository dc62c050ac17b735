// Package kafkasink is fanout's Kafka adapter: it writes delivery batches to
// each node's deliveries topic and shard tasks back to the announcements
// topic, every write acknowledged by all in-sync replicas.
package kafkasink

import (
	"context"
	"fmt"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/services/fanout/internal/audience"
)

var persistYes, persistNo = []byte("1"), []byte("0")

// Writer is a producer (a *kafkabus.Writer).
type Writer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Sink writes fanout's output.
type Sink struct {
	batches Writer // hash of the key: spreads one announcement's batches over partitions
	tasks   Writer // round robin: shard tasks land on different partitions, hence workers
	t       Topics
}

var (
	_ audience.BatchSink = (*Sink)(nil)
	_ audience.TaskSink  = (*Sink)(nil)
)

// Topics names what the sink writes to: the bulk lane, and the priority
// lane for high-priority announcements (empty: none, everything goes bulk).
type Topics struct {
	Deliveries    map[string]string // node name → deliveries topic
	Announcements string            // shard tasks go back here
	// The priority lane's topics.
	PriorityDeliveries    map[string]string
	PriorityAnnouncements string
}

// New builds the sink on its two writers (batches: key hash; tasks: round robin).
func New(batches, tasks Writer, t Topics) *Sink {
	return &Sink{batches: batches, tasks: tasks, t: t}
}

// WriteBatches implements audience.BatchSink: each batch goes to its node's
// deliveries topic, keyed by announcement/shard/seq.
func (p *Sink) WriteBatches(ctx context.Context, batches []announcement.Batch) error {
	msgs := make([]kafka.Message, len(batches))
	for i := range batches {
		b := &batches[i]
		deliveries := p.t.Deliveries
		if b.Priority == announcement.PriorityHigh && p.t.PriorityDeliveries != nil {
			deliveries = p.t.PriorityDeliveries
		}
		topic, ok := deliveries[b.Node]
		if !ok {
			return fmt.Errorf("kafka: no deliveries topic for node %q", b.Node)
		}
		v, err := b.Encode()
		if err != nil {
			return fmt.Errorf("kafka: encode batch: %w", err)
		}
		persist := persistNo
		if b.Persist {
			persist = persistYes
		}
		msgs[i] = kafka.Message{Topic: topic, Key: b.Key(), Value: v,
			Headers: []kafka.Header{{Key: announcement.HeaderPersist, Value: persist}}}
	}
	if err := p.batches.WriteMessages(ctx, msgs...); err != nil {
		return partialOf(err, len(msgs), "batches")
	}
	return nil
}

// partialOf names the records of a write of n that Kafka did not
// acknowledge (a *kafkabus.PartialWriteError), when it says which.
func partialOf(err error, n int, what string) error {
	return kafkabus.Partial(fmt.Errorf("kafka: write %d %s: %w", n, what, err), n)
}

// WriteTasks implements audience.TaskSink.
func (p *Sink) WriteTasks(ctx context.Context, tasks []announcement.Event) error {
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
		topic := p.t.Announcements
		if tasks[i].Priority == announcement.PriorityHigh && p.t.PriorityAnnouncements != "" {
			topic = p.t.PriorityAnnouncements
		}
		msgs[i] = kafka.Message{Topic: topic, Key: []byte(key), Value: v}
	}
	if err := p.tasks.WriteMessages(ctx, msgs...); err != nil {
		return partialOf(err, len(msgs), "shard tasks")
	}
	return nil
}
