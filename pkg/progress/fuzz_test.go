package progress

import (
	"encoding/json"
	"testing"
	"time"
)

// Redis values are read back as they are found: whatever a claim holds, it
// decodes or is refused, and a good one survives a round trip.
func FuzzDecodeClaim(f *testing.F) {
	f.Add("abc 1700000000000000000 0193b0c4-id")
	f.Add("d 0 ")
	f.Add("no-spaces")
	f.Add("d x id")
	f.Fuzz(func(t *testing.T, v string) {
		c, err := decodeClaim(v)
		if err != nil {
			return
		}
		back, err := decodeClaim(c.encode())
		if err != nil || back.Digest != c.Digest || back.ID != c.ID || !back.CreatedAt.Equal(c.CreatedAt) {
			t.Fatalf("%q: %+v → %+v, %v", v, c, back, err)
		}
	})
}

// Whatever a record's fields hold (a record written by another version, or
// by hand), reading it never fails and gives an announcement that encodes.
func FuzzFromRecord(f *testing.F) {
	f.Add("sending", "12", `"news"`, "node1", "5", "1764633600000")
	f.Add("", "x", "{", "", "-1", "not a time")
	f.Fuzz(func(t *testing.T, state, members, channel, node, perNode, done string) {
		a := fromRecord("id", map[string]string{"state": state, "members": members, "channel": channel,
			"n:" + node: perNode, "t_done": done, "dry_run": members})
		if _, err := json.Marshal(a); err != nil {
			t.Fatalf("%+v: %v", a, err)
		}
		if a.State == "" {
			t.Fatal("empty state")
		}
		if a.Times.Done != nil && a.Times.Done.Location() != time.UTC {
			t.Fatal("a time not in UTC")
		}
	})
}

// A recorded cut read back: any string parses to rising starts or an error,
// never a panic or an allocation beyond maxShards, and a plan reads back as
// itself.
func FuzzParseSplitPlan(f *testing.F) {
	for _, s := range []string{"1,45,89", "0", "1:44:4", "-5:10:3", "1:0:3", "5,3", "", "1:9223372036854775807:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseSplitPlan(s)
		if err != nil {
			return
		}
		if p.Shards() < 1 || p.Shards() > maxShards {
			t.Fatalf("%q: %d shards", s, p.Shards())
		}
		for i := 1; i < len(p.Starts); i++ {
			if p.Starts[i] <= p.Starts[i-1] {
				t.Fatalf("%q: starts %v do not rise", s, p.Starts)
			}
		}
		q, err := ParseSplitPlan(p.String())
		if err != nil || !q.Equal(p) {
			t.Fatalf("%q: %v read back as %v, %v", s, p, q, err)
		}
	})
}
