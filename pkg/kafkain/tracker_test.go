package kafkain

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/segmentio/kafka-go"
)

// step is one event: "f" fetched, "d" finished, "c" commit what is committable.
type step struct {
	op        string
	partition int
	offset    int64
}

func TestTrackerCommitsInPartitionOrder(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
		want  []string // commit points ("partition:offset", what kafka-go will store) per "c" step
	}{
		{
			name:  "in order",
			steps: []step{{"f", 0, 0}, {"f", 0, 1}, {"d", 0, 0}, {op: "c"}, {"d", 0, 1}, {op: "c"}},
			want:  []string{"0:1", "0:2"},
		},
		{
			name:  "a later offset finishing first waits for the earlier one",
			steps: []step{{"f", 0, 0}, {"f", 0, 1}, {"f", 0, 2}, {"d", 0, 2}, {op: "c"}, {"d", 0, 1}, {op: "c"}, {"d", 0, 0}, {op: "c"}},
			want:  []string{"", "", "0:3"},
		},
		{
			name:  "partitions are independent",
			steps: []step{{"f", 0, 0}, {"f", 1, 7}, {"d", 1, 7}, {op: "c"}, {"d", 0, 0}, {op: "c"}},
			want:  []string{"1:8", "0:1"},
		},
		{
			name:  "gaps in offsets (compaction) do not block",
			steps: []step{{"f", 0, 10}, {"f", 0, 12}, {"d", 0, 12}, {"d", 0, 10}, {op: "c"}},
			want:  []string{"0:13"},
		},
		{
			name:  "an offset fetched twice (rebalance) is done when both copies are",
			steps: []step{{"f", 0, 5}, {"f", 0, 6}, {"f", 0, 5}, {"d", 0, 5}, {"d", 0, 6}, {op: "c"}, {"d", 0, 5}, {op: "c"}},
			want:  []string{"", "0:7"},
		},
		{
			name:  "nothing finished, nothing committed",
			steps: []step{{"f", 0, 3}, {op: "c"}},
			want:  []string{""},
		},
		{
			name:  "no commit twice",
			steps: []step{{"f", 0, 0}, {"d", 0, 0}, {op: "c"}, {op: "c"}, {"f", 0, 1}, {op: "c"}},
			want:  []string{"0:1", "", ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker()
			var got []string
			for _, s := range tt.steps {
				m := kafka.Message{Topic: "t", Partition: s.partition, Offset: s.offset}
				switch s.op {
				case "f":
					tr.fetched(m)
				case "d":
					tr.finished(m)
				case "c":
					ms := tr.committable()
					var points []string
					for _, m := range ms {
						points = append(points, strconv.Itoa(m.Partition)+":"+strconv.FormatInt(m.Offset+1, 10))
					}
					slices.Sort(points)
					got = append(got, strings.Join(points, ","))
					tr.committed(ms)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("commit points %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTrackerForgetsIdlePartitions(t *testing.T) {
	tr := newTracker()
	for p := range 100 {
		m := kafka.Message{Topic: "t", Partition: p, Offset: 1}
		tr.fetched(m)
		tr.finished(m)
	}
	tr.committed(tr.committable())
	if len(tr.parts) != 0 {
		t.Fatalf("%d partitions still tracked after everything was committed", len(tr.parts))
	}
}
