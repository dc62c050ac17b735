package kafkabus

import (
	"context"
	"strconv"

	"github.com/segmentio/kafka-go"
)

// HeaderTruncated marks a dead letter whose value was cut to fit the topic; it holds the original length.
const HeaderTruncated = "x-announcer-truncated"

// HeaderHeadersDropped marks a dead letter whose original headers were left out
// because they alone would not leave room for the record; it holds how many there were.
const HeaderHeadersDropped = "x-announcer-headers-dropped"

// headerFraming is what Kafka's record format adds to a header beside its key and value (varints).
const headerFraming = 10

// maxReason bounds the reason header: a parser's error can quote a whole input.
const maxReason = 1024

// RecordOverhead is kept free of key and value for headers and framing.
const RecordOverhead = 4096

// DefaultMaxMessageBytes is Kafka's own default record size limit (message.max.bytes),
// used when no limit is given: a dead letter is always cut to fit some limit.
const DefaultMaxMessageBytes = 1 << 20

// DeadLetter returns the record to write for a refused message m: its key, value and headers,
// plus why (HeaderReason) and where it came from (HeaderSource). The key and value are cut to
// fit a topic of maxBytes per record (DefaultMaxMessageBytes when maxBytes <= 0), and
// HeaderTruncated says so: the record that was refused once must not be refused again for size.
func DeadLetter(m kafka.Message, topic, reason string, maxBytes int) kafka.Message {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxMessageBytes
	}
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	limit := maxBytes - RecordOverhead
	// The original headers take their room from the key and value; headers
	// that would take more than a quarter of it are left out, counted.
	original := 0
	for _, h := range m.Headers {
		original += len(h.Key) + len(h.Value) + headerFraming
	}
	headers := make([]kafka.Header, 0, len(m.Headers)+4)
	if original <= limit/4 {
		headers = append(headers, m.Headers...)
		limit -= original
	} else {
		headers = append(headers, kafka.Header{Key: HeaderHeadersDropped, Value: strconv.AppendInt(nil, int64(len(m.Headers)), 10)})
	}
	headers = append(headers,
		kafka.Header{Key: HeaderReason, Value: []byte(reason)},
		kafka.Header{Key: HeaderSource, Value: []byte(Source(m))},
	)
	key, value := m.Key, m.Value
	if limit > 0 {
		if len(key) > limit/2 {
			key = key[:limit/2]
		}
		if len(key)+len(value) > limit {
			headers = append(headers, kafka.Header{Key: HeaderTruncated, Value: strconv.AppendInt(nil, int64(len(value)), 10)})
			value = value[:limit-len(key)]
		}
	}
	return kafka.Message{Topic: topic, Key: key, Value: value, Headers: headers}
}

// MessageWriter is what writes records (a *kafka.Writer).
type MessageWriter interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// DeadLetters writes refused messages to one dead-letter topic.
type DeadLetters struct {
	W        MessageWriter
	Topic    string
	MaxBytes int // record size limit of the topic; <= 0 = DefaultMaxMessageBytes
}

// DeadLetter writes m with the reason; one attempt, the caller retries.
func (d DeadLetters) DeadLetter(ctx context.Context, m kafka.Message, reason string) error {
	return d.W.WriteMessages(ctx, DeadLetter(m, d.Topic, reason, d.MaxBytes))
}
