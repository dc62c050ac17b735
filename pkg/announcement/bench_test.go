package announcement

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// benchBatch is a delivery batch as fanout writes it: [fanout] batch_size
// (1000) recipients of a channel, bare usernames.
func benchBatch() Batch {
	b := Batch{
		AnnouncementID: "0193a5f2-7c1e-7d3a-9b2f-1c2d3e4f5a6b", Seq: 17, Node: "node1",
		Template:   "<message to='%s' from='announcer.example.org' type='headline'><body>Maintenance tonight</body></message>",
		Recipients: make([]string, 1000), CreatedAt: time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC),
	}
	for i := range b.Recipients {
		b.Recipients[i] = fmt.Sprintf("user%07d", 1000000+i*2)
	}
	return b
}

// BenchmarkDecodeBatch is what a sender or archiver pays per fetched batch.
func BenchmarkDecodeBatch(b *testing.B) {
	benchDecode(b, func(p []byte) error {
		_, err := DecodeBatch(p)
		return err
	})
}

// BenchmarkDecodeBatchPlainJSON is the baseline: json.Unmarshal of the same record.
func BenchmarkDecodeBatchPlainJSON(b *testing.B) {
	benchDecode(b, func(p []byte) error {
		var got Batch
		return json.Unmarshal(p, &got)
	})
}

// benchDecode times decode on the record of benchBatch.
func benchDecode(b *testing.B, decode func([]byte) error) {
	batch := benchBatch()
	p, err := batch.Encode()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if err := decode(p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeBatch is what fanout pays per batch it writes.
func BenchmarkEncodeBatch(b *testing.B) {
	batch := benchBatch()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := batch.Encode(); err != nil {
			b.Fatal(err)
		}
	}
}
