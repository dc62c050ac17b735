package storage

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/stanza"
	"github.com/announcer/announcer/services/archiver/internal/archive"
)

// partitionDown is a storage cluster on which the partitions of some
// messages refuse writes (not enough replicas) for the first outage writes.
// It answers as kafka-go's Writer does: one error per message, nil for each
// written, and counts what it was sent and what it acknowledged.
type partitionDown struct {
	down   func(kafka.Message) bool
	outage int
	writes int
	sent   map[string]int // topic/key → messages sent
	stored map[string]int // topic/key → messages acknowledged
}

func (p *partitionDown) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	p.writes++
	errs := make(kafka.WriteErrors, len(msgs))
	failed := false
	for i, m := range msgs {
		k := m.Topic + "/" + string(m.Key)
		p.sent[k]++
		if p.writes <= p.outage && p.down(m) {
			errs[i], failed = kafka.NotEnoughReplicas, true
			continue
		}
		if string(m.Value) == "" || len(m.Headers) != 1 || string(m.Headers[0].Value) != "a1" {
			errs[i], failed = fmt.Errorf("%s: value %q headers %v", k, m.Value, m.Headers), true
			continue
		}
		p.stored[k]++
	}
	if failed {
		return errs
	}
	return nil
}

// archiveThrough archives one batch of users through a Writer of topics on
// p, and returns records_stored_total and store_errors_total.
func archiveThrough(t *testing.T, p *partitionDown, topics []string, users []string) (stored, storeErrors float64) {
	t.Helper()
	reg := prometheus.NewRegistry()
	a := archive.New(archive.Options{UserDomain: "localhost",
		Templates: stanza.NewCache(stanza.Options{ComponentDomain: "announcer.localhost"}, 16),
		RetryMin:  time.Millisecond, RetryMax: 2 * time.Millisecond,
	}, New(p, topics), zerolog.Nop(), archive.NewMetrics(reg))
	b := announcement.Batch{AnnouncementID: "a1", Persist: true, Recipients: users,
		Template: "<message to='%s' from='announcer.localhost' type='chat'><body>[inc_id]</body></message>"}
	if err := a.Archive(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "records_stored_total":
			stored = mf.GetMetric()[0].GetCounter().GetValue()
		case "store_errors_total":
			storeErrors = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return stored, storeErrors
}

// checkWrites fails t unless every user's record is stored exactly once on
// each topic, and was sent only once unless p refused it (then once per write).
func checkWrites(t *testing.T, p *partitionDown, topics []string, users []string) {
	t.Helper()
	if p.writes != p.outage+1 {
		t.Errorf("%d writes, want %d (the outage's, then one that succeeds)", p.writes, p.outage+1)
	}
	if len(p.stored) != len(topics)*len(users) {
		t.Errorf("%d distinct records stored, want %d: %v", len(p.stored), len(topics)*len(users), p.stored)
	}
	for _, topic := range topics {
		for _, u := range users {
			k := topic + "/" + u + "@localhost"
			wantSent := 1
			if p.down(kafka.Message{Topic: topic, Key: []byte(u + "@localhost")}) {
				wantSent = p.outage + 1
			}
			if p.stored[k] != 1 || p.sent[k] != wantSent {
				t.Errorf("%s stored %d times, sent %d, want stored once and sent %d times", k, p.stored[k], p.sent[k], wantSent)
			}
		}
	}
}

// One storage partition refusing writes for a while: the retries write only
// its records, those on the healthy partitions are stored once.
func TestRetryWritesOnlyTheUnacknowledgedRecords(t *testing.T) {
	users := []string{"u0", "u1", "u2", "u3", "u4", "u5"}
	topics := []string{"archive"}
	p := &partitionDown{outage: 3, sent: map[string]int{}, stored: map[string]int{},
		down: func(m kafka.Message) bool { k := string(m.Key); return k == "u1@localhost" || k == "u4@localhost" }}
	stored, storeErrors := archiveThrough(t, p, topics, users)
	checkWrites(t, p, topics, users)
	if stored != 6 || storeErrors != 3 {
		t.Errorf("records_stored_total %v store_errors_total %v, want 6 and 3", stored, storeErrors)
	}
}

// With several storage topics, a copy acknowledged on one topic is not
// written again while another topic (or one partition of it) fails, and
// each record counts once as stored, not once per topic.
func TestRetryWritesOnlyTheUnacknowledgedCopiesPerTopic(t *testing.T) {
	users := []string{"u0", "u1", "u2", "u3"}
	topics := []string{"archive-a", "archive-b"}
	p := &partitionDown{outage: 2, sent: map[string]int{}, stored: map[string]int{},
		down: func(m kafka.Message) bool { return m.Topic == "archive-b" || string(m.Key) == "u2@localhost" }}
	stored, storeErrors := archiveThrough(t, p, topics, users)
	checkWrites(t, p, topics, users)
	if stored != 4 || storeErrors != 2 {
		t.Errorf("records_stored_total %v store_errors_total %v, want 4 and 2", stored, storeErrors)
	}
}
