package stage

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/segmentio/kafka-go"
)

// step is one event: "f" fetched (admitted unless a copy is known), "d" finished, "c" commit what is committable.
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
			name:  "an offset fetched twice (rebalance) is handled once",
			steps: []step{{"f", 0, 5}, {"f", 0, 6}, {"f", 0, 5}, {"d", 0, 5}, {"d", 0, 6}, {op: "c"}},
			want:  []string{"0:7"},
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
					tr.admit(m)
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

func TestTrackerFreesCommittedRecords(t *testing.T) {
	tr := newTracker()
	for p := range 100 {
		m := kafka.Message{Topic: "t", Partition: p, Offset: 1}
		tr.admit(m)
		tr.finished(m)
	}
	if freed := tr.committed(tr.committable()); freed != 100 {
		t.Fatalf("commit freed %d records, want 100", freed)
	}
	if n := tr.uncommitted(); n != 0 {
		t.Fatalf("%d records still uncommitted", n)
	}
}

// After a broker restart kafka-go re-reads from the last commit: what this
// process is handling, has handled or has committed is not handled again.
func TestTrackerAdmitsEachRecordOnce(t *testing.T) {
	tr := newTracker()
	at := func(off int64) kafka.Message { return kafka.Message{Topic: "t", Partition: 0, Offset: off} }
	for off := range int64(4) {
		if !tr.admit(at(off)) {
			t.Fatalf("first fetch of %d refused", off)
		}
	}
	tr.finished(at(0))
	tr.finished(at(1))
	if freed := tr.committed(tr.committable()); freed != 2 {
		t.Fatalf("freed %d, want 2", freed)
	}
	tr.finished(at(2))
	for off, why := range map[int64]string{0: "committed", 1: "committed", 2: "done, not committed", 3: "in flight"} {
		if tr.admit(at(off)) {
			t.Errorf("offset %d (%s) admitted again", off, why)
		}
	}
	if n := tr.uncommitted(); n != 2 {
		t.Fatalf("%d uncommitted, want 2 (one done, one in flight)", n)
	}
	if !tr.admit(at(4)) {
		t.Fatal("a new offset refused")
	}
}

// oldest is where a group with no commit yet starts being behind (depth).
func TestTrackerOldestHeldOffset(t *testing.T) {
	tr := newTracker()
	k := topicPartition{"t", 0}
	if _, ok := tr.oldest(k); ok {
		t.Fatal("an unknown partition holds an offset")
	}
	for _, o := range []int64{7, 5, 9} {
		tr.admit(kafka.Message{Topic: "t", Partition: 0, Offset: o})
	}
	tr.finished(kafka.Message{Topic: "t", Partition: 0, Offset: 5})
	if o, ok := tr.oldest(k); !ok || o != 5 {
		t.Fatalf("oldest %d %v, want 5 (finished, not committed)", o, ok)
	}
	tr.committed(tr.committable())
	if o, ok := tr.oldest(k); !ok || o != 7 {
		t.Fatalf("oldest after committing 5: %d %v, want 7", o, ok)
	}
}
