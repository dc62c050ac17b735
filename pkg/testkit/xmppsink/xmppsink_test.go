package xmppsink

import (
	"slices"
	"testing"
)

// eachTo finds the `to` of every message start tag, in either quote style,
// and skips tags without one.
func TestEachTo(t *testing.T) {
	var got []string
	eachTo([]byte(`<message to='a@x' from='c'><body>to='no'</body></message><iq type='get' id='1'/>`+
		`<message from='c' to="b@x/r"/><message from='c'/><message type='chat' to='c@x'>`), func(to []byte) {
		got = append(got, string(to))
	})
	if want := []string{"a@x", "b@x/r", "c@x"}; !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}
