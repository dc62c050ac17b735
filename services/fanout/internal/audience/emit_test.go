package audience

import (
	"encoding/json"
	"testing"
)

// jsonLen must never undercount: a batch cut by it must fit a Kafka message.
func FuzzJSONLen(f *testing.F) {
	for _, s := range []string{"", "alice", `a"b\c`, "<&>", "\x00\x1f", "é", "\u2028", "\xff\xfe", "日本"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if jsonLen(s) < len(b) {
			t.Fatalf("jsonLen(%q) = %d < %d", s, jsonLen(s), len(b))
		}
	})
}
