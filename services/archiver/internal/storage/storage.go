// Package storage writes archived messages to the storage topic(s) of the
// [kafka-producer] cluster, which may be another cluster than the bus.
package storage

import (
	"context"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/services/archiver/internal/archive"
)

// HeaderAnnouncementID carries the announcement a stored message belongs to.
const HeaderAnnouncementID = "x-announcer-announcement-id"

// Producer writes records (a *kafkabus.Writer on the storage cluster, acks=all).
type Producer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Writer stores records on the storage topics.
type Writer struct {
	p      Producer
	topics []string
}

var _ archive.Store = (*Writer)(nil)

// New builds the writer of topics on p.
func New(p Producer, topics []string) *Writer { return &Writer{p: p, topics: topics} }

// Topics implements archive.Store.
func (s *Writer) Topics() []string { return s.topics }

// Store writes one message per record, to its topic; it returns when all
// are acknowledged, or an error that names those that were not when Kafka
// says which (one storage partition failing leaves the others written).
func (s *Writer) Store(ctx context.Context, announcementID string, recs []archive.Record) error {
	hdr := []kafka.Header{{Key: HeaderAnnouncementID, Value: []byte(announcementID)}}
	msgs := make([]kafka.Message, len(recs))
	for i, r := range recs {
		msgs[i] = kafka.Message{Topic: r.Topic, Key: r.Key, Value: r.Value, Headers: hdr}
	}
	return kafkabus.Partial(s.p.WriteMessages(ctx, msgs...), len(msgs))
}
