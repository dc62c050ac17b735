package kafkasink

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
)

func TestSinkAgainstKafka(t *testing.T) {
	env, ctx := stacktest.GetWithTimeout(t, 40*time.Second)
	topics := Topics{
		Deliveries:    map[string]string{"n1": stacktest.Name("fanout_del_n1"), "n2": stacktest.Name("fanout_del_n2")},
		Announcements: stacktest.Name("fanout_ann"),
	}
	all := []string{topics.Deliveries["n1"], topics.Deliveries["n2"], topics.Announcements}
	var kt []kafkabus.Topic
	for _, n := range all {
		kt = append(kt, kafkabus.Topic{Name: n, Partitions: 4, ReplicationFactor: 1})
	}
	if err := kafkabus.EnsureTopics(ctx, kafkabus.Plaintext(env.KafkaBrokers), kt...); err != nil {
		t.Fatal(err)
	}
	kafkatest.DeleteAtEnd(t, env.KafkaBrokers, all...)

	hashed := kafkabus.NewWriter(kafkabus.Plaintext(env.KafkaBrokers), kafkabus.WriterOptions{WriteTimeout: 10 * time.Second})
	defer hashed.Close()
	spread := kafkabus.NewWriter(kafkabus.Plaintext(env.KafkaBrokers), kafkabus.WriterOptions{WriteTimeout: 10 * time.Second, RoundRobin: true})
	defer spread.Close()
	p := New(hashed, spread, topics)
	now := time.Now().UTC().Truncate(time.Millisecond)
	batches := []announcement.Batch{
		{AnnouncementID: "a", Seq: 0, Node: "n1", Template: "<message to='%s'/>", Persist: true, FirstIncID: 1, Recipients: []string{"x", "y"}, CreatedAt: now},
		{AnnouncementID: "a", Seq: 1, Node: "n2", Template: "<message to='%s'/>", FirstIncID: 3, Recipients: []string{"z"}, CreatedAt: now},
	}
	if err := p.WriteBatches(ctx, batches); err != nil {
		t.Fatal(err)
	}
	if err := p.WriteBatches(ctx, []announcement.Batch{{Node: "nope"}}); err == nil {
		t.Fatal("batch for an unknown node accepted")
	}
	for i, node := range []string{"n1", "n2"} {
		msgs := kafkatest.ReadToEnd(t, env.KafkaBrokers, topics.Deliveries[node])
		if len(msgs) != 1 {
			t.Fatalf("%s: %d records", node, len(msgs))
		}
		b, err := announcement.DecodeBatch(msgs[0].Value)
		if err != nil {
			t.Fatal(err)
		}
		if string(msgs[0].Key) != string(batches[i].Key()) || b.Seq != batches[i].Seq || len(b.Recipients) != len(batches[i].Recipients) || !b.CreatedAt.Equal(now) {
			t.Fatalf("%s: got %+v key %s", node, b, msgs[0].Key)
		}
		want := map[bool]string{true: "1", false: "0"}[b.Persist]
		if len(msgs[0].Headers) != 1 || msgs[0].Headers[0].Key != announcement.HeaderPersist || string(msgs[0].Headers[0].Value) != want {
			t.Fatalf("%s: headers %v, want %s = %q", node, msgs[0].Headers, announcement.HeaderPersist, want)
		}
	}

	// Shard tasks spread over the partitions (round robin), so several workers share a channel.
	var tasks []announcement.Event
	for i := range 8 {
		tasks = append(tasks, announcement.Event{ID: "big", Kind: announcement.KindShard, Template: "t",
			Shard: &announcement.Shard{ChannelID: 1, Index: i, Count: 8, FromMemberID: int64(i * 10), ToMemberID: int64(i*10 + 10)}})
	}
	if err := p.WriteTasks(ctx, tasks); err != nil {
		t.Fatal(err)
	}
	perPartition := map[int]int{}
	for _, m := range kafkatest.ReadToEnd(t, env.KafkaBrokers, topics.Announcements) {
		if _, err := announcement.DecodeEvent(m.Value); err != nil {
			t.Fatal(err)
		}
		perPartition[m.Partition]++
	}
	if len(perPartition) != 4 {
		t.Fatalf("8 shard tasks on partitions %v, want all 4 used", perPartition)
	}
}

// Kafka acknowledges the batches of a write partition by partition: when
// some fail (here, one too large for its topic's max.message.bytes) the sink
// says which, and the others are in their topic already.
func TestPartialWriteNamesTheFailedBatches(t *testing.T) {
	env := stacktest.Get(t)
	good := kafkatest.Topics(t, env.KafkaBrokers, 1, "fanout_partial")[0]
	small := stacktest.Name("fanout_small")
	c := kafkabus.NewClient(kafkabus.Plaintext(env.KafkaBrokers), 10*time.Second)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: small, NumPartitions: 1, ReplicationFactor: 1,
		ConfigEntries: []kafka.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: "2048"}}}}})
	if err != nil || resp.Errors[small] != nil {
		t.Fatalf("create %s: %v %v", small, err, resp)
	}
	kafkatest.DeleteAtEnd(t, env.KafkaBrokers, small)
	if err := kafkabus.AwaitTopics(ctx, kafkabus.Plaintext(env.KafkaBrokers), small); err != nil {
		t.Fatal(err)
	}
	w := kafkabus.NewWriter(kafkabus.Plaintext(env.KafkaBrokers), kafkabus.WriterOptions{WriteTimeout: 5 * time.Second, MaxAttempts: 1})
	defer w.Close()
	p := New(w, w, Topics{Deliveries: map[string]string{"n1": good, "n2": small}})
	err = p.WriteBatches(ctx, []announcement.Batch{
		{AnnouncementID: "p", Seq: 0, Node: "n1", Template: "t", Recipients: []string{"a"}},
		{AnnouncementID: "p", Seq: 1, Node: "n2", Template: "t", Recipients: []string{strings.Repeat("b", 4096)}},
		{AnnouncementID: "p", Seq: 2, Node: "n1", Template: "t", Recipients: []string{"c"}},
	})
	var partial *kafkabus.PartialWriteError
	if !errors.As(err, &partial) || fmt.Sprint(partial.Failed) != "[1]" {
		t.Fatalf("err = %v, want a partial failure of batch 1", err)
	}
	if got := kafkatest.ReadAll(t, env.KafkaBrokers, good, 2, 10*time.Second); len(got) != 2 {
		t.Fatalf("%d batches in n1's topic, want the 2 acknowledged", len(got))
	}
}
