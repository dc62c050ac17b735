package kafkabus

import (
	"testing"

	"github.com/segmentio/kafka-go/protocol"
	"github.com/segmentio/kafka-go/protocol/listoffsets"
)

// One request per leader, holding every partition it leads, whatever the
// order asked; a partition the metadata does not know goes on its own.
func TestOffsetsAskEachLeaderOnce(t *testing.T) {
	cluster := protocol.Cluster{Brokers: map[int32]protocol.Broker{1: {ID: 1}, 2: {ID: 2}}, Topics: map[string]protocol.Topic{
		"a": {Partitions: map[int32]protocol.Partition{0: {ID: 0, Leader: 1}, 1: {ID: 1, Leader: 2}, 2: {ID: 2, Leader: 1}}},
		"b": {Partitions: map[int32]protocol.Partition{0: {ID: 0, Leader: 2}}},
	}}
	at := func(ps ...int32) []listoffsets.RequestPartition {
		out := make([]listoffsets.RequestPartition, len(ps))
		for i, p := range ps {
			out[i] = listoffsets.RequestPartition{Partition: p, Timestamp: -1}
		}
		return out
	}
	req := &leaderOffsets{Request: listoffsets.Request{ReplicaID: -1, Topics: []listoffsets.RequestTopic{
		{Topic: "a", Partitions: at(0, 1, 2)}, {Topic: "b", Partitions: at(0)}, {Topic: "gone", Partitions: at(0)},
	}}}
	msgs, merger, err := req.Split(cluster)
	if err != nil || merger == nil {
		t.Fatalf("split: %v, merger %v", err, merger)
	}
	got := map[int32]string{}
	for _, m := range msgs {
		r := m.(*listoffsets.Request)
		leader, err := r.Broker(cluster)
		if err != nil {
			t.Fatal(err)
		}
		s := ""
		for _, tp := range r.Topics {
			s += tp.Topic + ":"
			for _, p := range tp.Partitions {
				s += string(rune('0' + p.Partition))
			}
			s += " "
		}
		if _, dup := got[leader.ID]; dup {
			t.Fatalf("two requests for leader %d", leader.ID)
		}
		got[leader.ID] = s
	}
	want := map[int32]string{1: "a:02 ", 2: "a:1 b:0 ", -1: "gone:0 "}
	if len(got) != len(want) {
		t.Fatalf("requests by leader %q, want %q", got, want)
	}
	for id, s := range want {
		if got[id] != s {
			t.Errorf("leader %d asked for %q, want %q", id, got[id], s)
		}
	}
}
