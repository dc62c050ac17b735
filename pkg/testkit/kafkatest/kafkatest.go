// Package kafkatest holds helpers for integration tests against
// the real broker: unique topics that delete themselves, reading a topic back,
// producing input, and stand-ins for an unreachable broker.
package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
)

// Record is a topic record read back.
type Record struct {
	Topic     string
	Partition int
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   map[string]string
}

// client is a kafka-go client with its own transport, closed when the test ends
// (the default transport's pools would outlive the test and trip goleak).
func client(t testing.TB, brokers []string) *kafka.Client {
	c := kafkabus.NewClient(kafkabus.Plaintext(brokers), 10*time.Second)
	t.Cleanup(c.Close)
	return c.Client
}

// Topics creates a topic per prefix with a unique name and deletes them when
// the test ends. It returns once every partition's leader serves it: a young
// broker names a leader in its metadata a moment before that leader takes
// writes, and a write in between fails with "not leader for partition".
func Topics(t testing.TB, brokers []string, partitions int, prefixes ...string) []string {
	t.Helper()
	c := client(t, brokers)
	names := make([]string, len(prefixes))
	req := &kafka.CreateTopicsRequest{}
	for i, p := range prefixes {
		names[i] = stacktest.Name(p)
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: names[i], NumPartitions: partitions, ReplicationFactor: 1})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.CreateTopics(ctx, req)
	if err != nil {
		t.Fatalf("create topics: %v", err)
	}
	for name, err := range resp.Errors {
		if err != nil {
			t.Fatalf("create topic %s: %v", name, err)
		}
	}
	DeleteAtEnd(t, brokers, names...)
	for !leadersKnown(ctx, c, names, partitions) {
		select {
		case <-ctx.Done():
			t.Fatalf("topics %v: no leaders after 30 s", names)
		case <-time.After(50 * time.Millisecond):
		}
	}
	for _, name := range names {
		for p := range partitions {
			if _, err := LastOffset(ctx, brokers[0], name, p); err != nil {
				t.Fatalf("topic %s partition %d: its leader does not serve it: %v", name, p, err)
			}
		}
	}
	return names
}

func leadersKnown(ctx context.Context, c *kafka.Client, names []string, partitions int) bool {
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: names})
	if err != nil || len(md.Topics) != len(names) {
		return false
	}
	for _, tp := range md.Topics {
		if tp.Error != nil || len(tp.Partitions) != partitions {
			return false
		}
		for _, p := range tp.Partitions {
			if p.Error != nil || p.Leader.Host == "" {
				return false
			}
		}
	}
	return true
}

// DeleteAtEnd deletes topics (e.g. ones a service created) when the test ends.
func DeleteAtEnd(t testing.TB, brokers []string, names ...string) {
	atEnd(t, brokers, "delete topics", func(ctx context.Context, c *kafka.Client) error {
		_, err := c.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: names})
		return err
	})
}

// DeletePrefixedAtEnd deletes, when the test ends, every topic and consumer
// group whose name starts with prefix: all that services configured with
// unique names created, priority lanes included. Register it before the
// clean-up that stops the services, so that it runs after it.
func DeletePrefixedAtEnd(t testing.TB, brokers []string, prefix string) {
	atEnd(t, brokers, "delete "+prefix+"* topics and groups", func(ctx context.Context, c *kafka.Client) error {
		md, err := c.Metadata(ctx, &kafka.MetadataRequest{})
		if err != nil {
			return err
		}
		if topics := prefixed(prefix, md.Topics, func(tp kafka.Topic) string { return tp.Name }); len(topics) > 0 {
			if _, err := c.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics}); err != nil {
				return err
			}
		}
		lg, err := c.ListGroups(ctx, &kafka.ListGroupsRequest{})
		if err != nil {
			return err
		}
		if groups := prefixed(prefix, lg.Groups, func(g kafka.ListGroupsResponseGroup) string { return g.GroupID }); len(groups) > 0 {
			_, err = c.DeleteGroups(ctx, &kafka.DeleteGroupsRequest{GroupIDs: groups})
		}
		return err
	})
}

// prefixed returns the names of items that start with prefix.
func prefixed[T any](prefix string, items []T, name func(T) string) []string {
	var out []string
	for _, it := range items {
		if n := name(it); strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// DeleteGroupsAtEnd deletes consumer groups when the test ends.
func DeleteGroupsAtEnd(t testing.TB, brokers []string, groups ...string) {
	atEnd(t, brokers, "delete groups", func(ctx context.Context, c *kafka.Client) error {
		_, err := c.DeleteGroups(ctx, &kafka.DeleteGroupsRequest{GroupIDs: groups})
		return err
	})
}

// atEnd runs a clean-up request when the test ends; a failure is only logged.
func atEnd(t testing.TB, brokers []string, what string, do func(context.Context, *kafka.Client) error) {
	c := client(t, brokers)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := do(ctx, c); err != nil {
			t.Logf("%s: %v", what, err)
		}
	})
}

// ReadAll polls every partition of topic from the start until it holds at
// least want records or timeout passes, and returns the records found.
func ReadAll(t testing.TB, brokers []string, topic string, want int, timeout time.Duration) []Record {
	t.Helper()
	return ReadTopics(t, brokers, []string{topic}, want, timeout)
}

// ReadTopics is ReadAll over several topics (an announcements topic and its
// priority lane, say).
func ReadTopics(t testing.TB, brokers []string, topics []string, want int, timeout time.Duration) []Record {
	t.Helper()
	c := client(t, brokers)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	type part struct {
		topic string
		id    int
	}
	next := map[part]int64{}
	var out []Record
	for {
		md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
		if err == nil {
			for _, tp := range md.Topics {
				for _, p := range tp.Partitions {
					k := part{tp.Name, p.ID}
					recs, off, err := fetch(ctx, c, tp.Name, p.ID, next[k])
					if err != nil && ctx.Err() == nil {
						t.Logf("fetch %s/%d: %v", tp.Name, p.ID, err)
					}
					out = append(out, recs...)
					next[k] = off
				}
			}
		}
		if len(out) >= want {
			break
		}
		select {
		case <-ctx.Done():
			t.Logf("read %d of %d wanted records from %v before the timeout", len(out), want, topics)
			return sorted(out)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return sorted(out)
}

func sorted(rs []Record) []Record {
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].Topic != rs[j].Topic {
			return rs[i].Topic < rs[j].Topic
		}
		if rs[i].Partition != rs[j].Partition {
			return rs[i].Partition < rs[j].Partition
		}
		return rs[i].Offset < rs[j].Offset
	})
	return rs
}

func fetch(ctx context.Context, c *kafka.Client, topic string, partition int, from int64) ([]Record, int64, error) {
	resp, err := c.Fetch(ctx, &kafka.FetchRequest{Topic: topic, Partition: partition, Offset: from, MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 10 * time.Millisecond})
	if err != nil {
		return nil, from, err
	}
	if resp.Error != nil {
		return nil, from, resp.Error
	}
	var out []Record
	next := from
	for {
		r, err := resp.Records.ReadRecord()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, next, nil
			}
			return out, next, err
		}
		if r.Offset < from {
			continue
		}
		rec := Record{Topic: topic, Partition: partition, Offset: r.Offset, Headers: map[string]string{}}
		if r.Key != nil {
			rec.Key, _ = io.ReadAll(r.Key)
		}
		if r.Value != nil {
			rec.Value, _ = io.ReadAll(r.Value)
		}
		for _, h := range r.Headers {
			rec.Headers[h.Key] = string(h.Value)
		}
		out = append(out, rec)
		next = r.Offset + 1
	}
}

// Produce writes msgs to topic with acks=all.
func Produce(t testing.TB, brokers []string, topic string, msgs ...kafka.Message) {
	t.Helper()
	w := kafkabus.NewWriter(kafkabus.Plaintext(brokers), kafkabus.WriterOptions{WriteTimeout: 10 * time.Second})
	defer func() { _ = w.Close() }()
	for i := range msgs {
		msgs[i].Topic = topic
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		err := w.WriteMessages(ctx, msgs...)
		if err == nil {
			return
		}
		// A topic created a moment ago may not be known to the broker's
		// metadata yet: wait for it rather than fail.
		if !unknownTopic(err) || ctx.Err() != nil {
			t.Fatalf("produce to %s: %v", topic, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unknownTopic reports an error that only says the broker does not know the
// topic (yet), for every message of the write.
func unknownTopic(err error) bool {
	var we kafka.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if e != nil && !errors.Is(e, kafka.UnknownTopicOrPartition) {
				return false
			}
		}
		return true
	}
	return errors.Is(err, kafka.UnknownTopicOrPartition)
}

// Committed returns the group's committed offset per partition of topic (-1 = none).
func Committed(t testing.TB, brokers []string, group, topic string, partitions int) map[int]int64 {
	t.Helper()
	c := client(t, brokers)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ps := make([]int, partitions)
	for i := range ps {
		ps[i] = i
	}
	resp, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ps}})
	if err != nil {
		t.Fatalf("offset fetch: %v", err)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[topic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

// ReadToEnd reads every record of topic, all partitions, up to each partition's end offset
// at the time of the call.
func ReadToEnd(t testing.TB, brokers []string, topic string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	for _, p := range parts {
		last, err := LastOffset(ctx, brokers[0], topic, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		if last == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				_ = r.Close()
				t.Fatal(err)
			}
			out = append(out, m)
			if m.Offset >= last-1 {
				break
			}
		}
		_ = r.Close()
	}
	return out
}

// LastOffset asks the partition's leader for its end offset. A broker that has
// just created the topic may still answer "not leader" for a moment after the
// metadata names it, so temporary errors are retried until ctx ends.
func LastOffset(ctx context.Context, broker, topic string, partition int) (int64, error) {
	for {
		pc, err := kafka.DialLeader(ctx, "tcp", broker, topic, partition)
		if err == nil {
			var last int64
			last, err = pc.ReadLastOffset()
			_ = pc.Close()
			if err == nil {
				return last, nil
			}
		}
		var kerr kafka.Error
		if !errors.As(err, &kerr) || !kerr.Temporary() {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%s/%d: %w (%w)", topic, partition, err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// AssignedMembers is how many members of group hold partitions in a settled
// group: 0 while the group is empty, unknown or rebalancing. A test waits on
// it before pausing a consumer, so that the pause does not catch it joining.
func AssignedMembers(brokers []string, group string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// It is polled, so its client closes on return rather than at the test's end.
	c := kafkabus.NewClient(kafkabus.Plaintext(brokers), 10*time.Second)
	defer c.Close()
	resp, err := c.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil || len(resp.Groups) != 1 || resp.Groups[0].Error != nil || resp.Groups[0].GroupState != "Stable" {
		return 0
	}
	n := 0
	for _, m := range resp.Groups[0].Members {
		if len(m.MemberAssignments.Topics) > 0 {
			n++
		}
	}
	return n
}
