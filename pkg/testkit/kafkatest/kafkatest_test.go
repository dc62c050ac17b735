package kafkatest_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/testkit"
	"github.com/announcer/announcer/pkg/testkit/kafkatest"
	"github.com/announcer/announcer/pkg/testkit/stacktest"
)

// A group counts its member only once the member holds partitions, and not
// after the member left.
func TestAssignedMembers(t *testing.T) {
	env := stacktest.Get(t)
	topic := kafkatest.Topics(t, env.KafkaBrokers, 2, "assigned")[0]
	group := stacktest.Name("assigned")
	kafkatest.DeleteGroupsAtEnd(t, env.KafkaBrokers, group)
	if n := kafkatest.AssignedMembers(env.KafkaBrokers, group); n != 0 {
		t.Fatalf("a group nobody joined has %d assigned members", n)
	}

	r := kafka.NewReader(kafka.ReaderConfig{Brokers: env.KafkaBrokers, GroupID: group, Topic: topic, MaxWait: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { // the reader joins its group when it is first read from
		defer close(done)
		_, _ = r.FetchMessage(ctx)
	}()
	testkit.Eventually(t, 30*time.Second, "the reader holding partitions", func() bool {
		return kafkatest.AssignedMembers(env.KafkaBrokers, group) == 1
	})
	cancel()
	<-done
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the group empty after the reader left", func() bool {
		return kafkatest.AssignedMembers(env.KafkaBrokers, group) == 0
	})
}

// Every topic and group under the prefix goes when the test ends, priority
// lanes included; a name that only shares part of the prefix stays.
func TestDeletePrefixedAtEnd(t *testing.T) {
	env := stacktest.Get(t)
	c := kafkabus.NewClient(kafkabus.Plaintext(env.KafkaBrokers), 10*time.Second)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	prefix := stacktest.Name("prefixed") + "_"
	// Topics names each one prefix_<what>_<unique>, and deletes it at the end if this test fails.
	mine := kafkatest.Topics(t, env.KafkaBrokers, 1, prefix+"announcements", prefix+"deliveries.node1.priority")
	neighbour := kafkatest.Topics(t, env.KafkaBrokers, 1, strings.TrimSuffix(prefix, "_")+"x")[0]
	group := prefix + "sender_node1"
	kafkatest.DeleteGroupsAtEnd(t, env.KafkaBrokers, group)
	testkit.Eventually(t, 30*time.Second, "an offset committed for the group", func() bool {
		res, err := c.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1,
			Topics: map[string][]kafka.OffsetCommit{mine[0]: {{Partition: 0, Offset: 0}}}})
		return err == nil && res.Topics[mine[0]][0].Error == nil
	})

	t.Run("test", func(t *testing.T) { kafkatest.DeletePrefixedAtEnd(t, env.KafkaBrokers, prefix) })

	exists := func(name string) bool {
		md, err := c.Metadata(ctx, &kafka.MetadataRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(md.Topics, func(tp kafka.Topic) bool { return tp.Name == name && tp.Error == nil })
	}
	testkit.Eventually(t, 30*time.Second, "the prefixed topics gone", func() bool {
		return !exists(mine[0]) && !exists(mine[1])
	})
	if !exists(neighbour) {
		t.Errorf("topic %s does not start with %s but was deleted", neighbour, prefix)
	}
	groups, err := c.ListGroups(ctx, &kafka.ListGroupsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups.Groups {
		if g.GroupID == group {
			t.Errorf("group %s is left", group)
		}
	}
}
