package audience

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/announcer/announcer/pkg/announcement"
)

// jsonLen must never undercount: a batch cut by it must fit a Kafka message.
// It measures against the encoding batches really get (no HTML escaping).
func FuzzJSONLen(f *testing.F) {
	for _, s := range []string{"", "alice", `a"b\c`, "<&>", "\x00\x1f", "é", "\u2028", "\xff\xfe", "日本"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		if n := buf.Len() - 1; jsonLen(s) < n {
			t.Fatalf("jsonLen(%q) = %d < %d", s, jsonLen(s), n)
		}
	})
}

// A template's markup costs what it weighs: <, > and & are not escaped on
// the topics, so they must not eat six bytes of the batch budget each.
func TestJSONLenOfMarkupIsExact(t *testing.T) {
	tmpl := "<message to='%s' from='a.b'><body>x &amp; y</body></message>"
	b := announcement.Batch{Template: tmpl}
	v, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(v, []byte(tmpl)) {
		t.Fatalf("the batch encoding escapes the template: %s", v)
	}
	if got, want := jsonLen(tmpl), len(tmpl)+2; got != want {
		t.Fatalf("jsonLen = %d, want %d", got, want)
	}
}
