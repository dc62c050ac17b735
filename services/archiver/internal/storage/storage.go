// Package storage writes archived messages to the storage topic(s) of the
// [kafka-producer] cluster, which may be another cluster than the bus.
package storage

import (
	"context"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/services/archiver/internal/archive"
)

// HeaderAnnouncementID carries the announcement a stored message belongs to.
const HeaderAnnouncementID = "x-announcer-announcement-id"

// Producer writes records (a *kafkabus.Writer on the storage cluster, acks=all).
type Producer interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// Writer stores records on every storage topic.
type Writer struct {
	p      Producer
	topics []string
}

var _ archive.Store = (*Writer)(nil)

// New builds the writer on p.
func New(p Producer, topics []string) *Writer { return &Writer{p: p, topics: topics} }

// Store writes one message per record and topic; it returns when all are
// acknowledged, or the first error (the caller retries the whole set).
func (s *Writer) Store(ctx context.Context, announcementID string, recs []archive.Record) error {
	hdr := []kafka.Header{{Key: HeaderAnnouncementID, Value: []byte(announcementID)}}
	msgs := make([]kafka.Message, 0, len(recs)*len(s.topics))
	for _, t := range s.topics {
		for _, r := range recs {
			msgs = append(msgs, kafka.Message{Topic: t, Key: r.Key, Value: r.Value, Headers: hdr})
		}
	}
	return s.p.WriteMessages(ctx, msgs...)
}
