package main

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/stage"
	"github.com/announcer/announcer/services/sender/internal/delivery"
)

// headerAgain marks a delivery batch this sender wrote back to its topic to
// be sent again whole; its value says why (delivery.AgainShutdown or
// delivery.AgainRefused). The mark is a header, not a field of the batch: a
// resume (Deliver) would start a batch fenced to its end at its end and send
// nothing, and the batch itself stays the one fanout wrote.
const headerAgain = "x-announcer-again"

// requeue writes batches to send again back to the deliveries topic (and
// lane) of their node (delivery.Requeuer).
type requeue struct {
	w kafkabus.MessageWriter
	// topic is the deliveries topic of a node this sender reads; "" for
	// any other.
	topic func(node string, priority bool) string
	own   string // the node whose topic takes a batch of a node not read here
	n     atomic.Uint64
}

// Requeue implements delivery.Requeuer.
func (r *requeue) Requeue(ctx context.Context, b announcement.Batch, why string) error {
	v, err := b.Encode()
	if err != nil {
		return err
	}
	high := b.Priority == announcement.PriorityHigh
	topic := r.topic(b.Node, high)
	if topic == "" {
		topic = r.topic(r.own, high)
	}
	// A key of its own: the consumers drop a record identical (topic, key,
	// value) to one of the last thousands they took, which the original is.
	key := b.Key()
	key = append(key, "/again/"...)
	key = strconv.AppendInt(key, time.Now().UnixNano(), 36)
	key = append(key, '.')
	key = strconv.AppendUint(key, r.n.Add(1), 36)
	return r.w.WriteMessages(ctx, kafka.Message{Topic: topic, Key: key, Value: v, Headers: []kafka.Header{
		{Key: headerAgain, Value: []byte(why)},
		// The archiver stored the batch from its first record: it passes over this one.
		{Key: announcement.HeaderPersist, Value: []byte("0")},
	}})
}

// again is a record's headerAgain mark, if it has one.
func again(m kafka.Message) (string, bool) {
	for _, h := range m.Headers {
		if h.Key == headerAgain {
			return string(h.Value), true
		}
	}
	return "", false
}

// deliverer is the use case as the deliveries handler sees it (a *delivery.Sender).
type deliverer interface {
	Deliver(ctx context.Context, b announcement.Batch) error
	Again(ctx context.Context, b announcement.Batch, why string) error
}

// deliveries is the handler of the deliveries lanes: a batch written back by
// a requeue goes again whole, any other is delivered (resumed where a
// previous attempt fenced it).
func deliveries(decode func([]byte) (announcement.Batch, error), d deliverer) stage.Handler {
	deliver := stage.Decoded(decode, d.Deliver)
	return func(ctx context.Context, m kafka.Message) error {
		why, ok := again(m)
		if !ok {
			return deliver(ctx, m)
		}
		return stage.Decoded(decode, func(ctx context.Context, b announcement.Batch) error {
			return d.Again(ctx, b, why)
		})(ctx, m)
	}
}

var _ delivery.Requeuer = (*requeue)(nil)
