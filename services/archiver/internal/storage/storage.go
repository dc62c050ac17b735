// Package storage writes archived messages to the storage topic(s) of the
// [kafka-producer] cluster, which may be another cluster than the bus.
package storage

import (
	"context"
	"net"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/kafkabus"

	"github.com/announcer/announcer/services/archiver/internal/archive"
)

// HeaderAnnouncementID carries the announcement a stored message belongs to.
const HeaderAnnouncementID = "x-announcer-announcement-id"

// Options tune the producer.
type Options struct {
	Linger       time.Duration // [kafka-producer] flush_frequency: upper bound on batching delay
	MaxRetry     int           // [kafka-producer] MaxRetry: retries of a produce request
	WriteTimeout time.Duration
	// Dial replaces the dialer of every broker connection (tests route them through a proxy).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Writer stores records on every storage topic, acks from all in-sync replicas.
type Writer struct {
	w         *kafka.Writer
	transport *kafka.Transport
	topics    []string
}

// New builds the writer; Close releases its connections.
func New(brokers, topics []string, o Options) *Writer {
	w := kafkabus.NewWriter(brokers, kafkabus.WriterOptions{
		BatchTimeout: o.Linger,
		WriteTimeout: o.WriteTimeout,
		MaxAttempts:  o.MaxRetry + 1,
	})
	// A transport of our own, so Close also closes its broker connections.
	t := &kafka.Transport{Dial: o.Dial}
	w.Transport = t
	return &Writer{w: w, transport: t, topics: topics}
}

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
	return s.w.WriteMessages(ctx, msgs...)
}

// Close flushes and closes the producer.
func (s *Writer) Close() error {
	err := s.w.Close()
	s.transport.CloseIdleConnections()
	return err
}
