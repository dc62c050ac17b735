package kafkatest_test

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

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
