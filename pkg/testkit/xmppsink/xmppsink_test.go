package xmppsink

import (
	"slices"
	"testing"
)

// eachMessage finds the `to` and `from` of every message start tag, in either
// quote style, and skips tags without a `to`.
func TestEachMessage(t *testing.T) {
	var got []string
	eachMessage([]byte(`<message to='a@x' from='c/1'><body>to='no'</body></message><iq type='get' id='1'/>`+
		`<message from="c" to="b@x/r"/><message from='c'/><message type='chat' to='c@x'>`), func(to, from []byte) {
		got = append(got, string(to)+" "+string(from))
	})
	if want := []string{"a@x c/1", "b@x/r c", "c@x "}; !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}
