package kafkabus

import (
	"strings"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/config"
)

func header(m kafka.Message, key string) (string, bool) {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

func TestDeadLetterKeepsTheRecordAndSaysWhy(t *testing.T) {
	src := kafka.Message{Topic: "in", Partition: 2, Offset: 7, Key: []byte("k"), Value: []byte("v"),
		Headers: []kafka.Header{{Key: "trace", Value: []byte("t1")}}}
	dl := DeadLetter(src, "dlq", strings.Repeat("r", 5000), 1<<20)
	if dl.Topic != "dlq" || string(dl.Key) != "k" || string(dl.Value) != "v" {
		t.Fatalf("dead letter %+v", dl)
	}
	if v, _ := header(dl, "trace"); v != "t1" {
		t.Error("original header lost")
	}
	if v, _ := header(dl, HeaderSource); v != "in/2/7" {
		t.Errorf("source %q", v)
	}
	if v, _ := header(dl, HeaderReason); len(v) != maxReason {
		t.Errorf("reason of %d bytes, want it cut to %d", len(v), maxReason)
	}
	if _, cut := header(dl, HeaderTruncated); cut {
		t.Error("a small record marked truncated")
	}
}

func TestDeadLetterCutsWhatCannotFit(t *testing.T) {
	src := kafka.Message{Key: []byte(strings.Repeat("k", 10000)), Value: []byte(strings.Repeat("v", 20000))}
	dl := DeadLetter(src, "dlq", "too big", 16384)
	if len(dl.Key)+len(dl.Value) > 16384-RecordOverhead {
		t.Fatalf("key+value %d bytes do not fit", len(dl.Key)+len(dl.Value))
	}
	if v, ok := header(dl, HeaderTruncated); !ok || v != "20000" {
		t.Errorf("truncated header %q %v, want the original length", v, ok)
	}
	if len(src.Value) != 20000 {
		t.Error("the source record was modified")
	}
}

// No limit given still means Kafka's default limit: a dead letter is never written uncut.
func TestDeadLetterWithoutALimitFitsKafkasDefault(t *testing.T) {
	src := kafka.Message{Value: []byte(strings.Repeat("v", 2*DefaultMaxMessageBytes))}
	dl := DeadLetter(src, "dlq", "too big", 0)
	if len(dl.Value) > DefaultMaxMessageBytes-RecordOverhead {
		t.Fatalf("value of %d bytes does not fit %d", len(dl.Value), DefaultMaxMessageBytes)
	}
	if _, ok := header(dl, HeaderTruncated); !ok {
		t.Error("not marked truncated")
	}
}

// The original headers count against the limit: large ones are left out
// (and counted), smaller ones cut the value further.
func TestDeadLetterHeadersCountAgainstTheLimit(t *testing.T) {
	big := []kafka.Header{{Key: "baggage", Value: []byte(strings.Repeat("b", 8000))}, {Key: "trace", Value: []byte("t")}}
	src := kafka.Message{Key: []byte("k"), Value: []byte(strings.Repeat("v", 40000)), Headers: big}
	dl := DeadLetter(src, "dlq", "too big", 32768)
	if _, ok := header(dl, "baggage"); ok {
		t.Fatal("8,000 bytes of headers kept in a 32 KiB dead letter")
	}
	if v, _ := header(dl, HeaderHeadersDropped); v != "2" {
		t.Errorf("dropped-headers header %q, want 2", v)
	}
	if size := recordBytes(dl); size > 32768 {
		t.Fatalf("dead letter of %d bytes, limit 32768", size)
	}

	small := []kafka.Header{{Key: "baggage", Value: []byte(strings.Repeat("b", 3000))}}
	src.Headers = small
	dl = DeadLetter(src, "dlq", strings.Repeat("r", 5000), 32768)
	if v, _ := header(dl, "baggage"); len(v) != 3000 {
		t.Fatal("headers that fit were not kept")
	}
	if size := recordBytes(dl); size > 32768 {
		t.Fatalf("dead letter of %d bytes with its headers, limit 32768", size)
	}
	if _, ok := header(dl, HeaderTruncated); !ok {
		t.Error("the cut value is not marked")
	}
}

// recordBytes is a record's key, value and headers with their framing.
func recordBytes(m kafka.Message) int {
	n := len(m.Key) + len(m.Value) + 32
	for _, h := range m.Headers {
		n += len(h.Key) + len(h.Value) + headerFraming
	}
	return n
}

// The smallest record limit the config accepts still leaves a dead letter
// room to be cut to fit, with headers.
func TestTheSmallestRecordLimitFitsADeadLetter(t *testing.T) {
	limit := config.MinMessageBytes
	src := kafka.Message{Key: []byte("k"), Value: []byte(strings.Repeat("v", 2*limit)),
		Headers: []kafka.Header{{Key: "trace", Value: []byte("t1")}}}
	dl := DeadLetter(src, "dlq", strings.Repeat("r", 5000), limit)
	size := len(dl.Key) + len(dl.Value)
	for _, h := range dl.Headers {
		size += len(h.Key) + len(h.Value) + headerFraming
	}
	if size > limit-RecordOverhead/2 || len(dl.Value) < limit/2 {
		t.Fatalf("a dead letter of %d bytes (value %d) under a limit of %d", size, len(dl.Value), limit)
	}
}
