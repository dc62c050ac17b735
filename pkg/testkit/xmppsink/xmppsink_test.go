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

// Wherever reads cut the stream, the sink counts each message once and
// answers each ping once, with its id.
func TestScanAcrossReads(t *testing.T) {
	stream := []byte(`<message to='a@x'><body>1/2 </body></message><iq type='get' id='p1' to='x'><ping xmlns='urn:xmpp:ping'/></iq>` +
		`<message to="b@x"/><iq type='set' id='s1'><q/></iq><message to='c@x' type='chat'><body>a</body><body>b</body></message>` +
		`<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>`)
	for cut := 1; cut < len(stream); cut++ {
		var buf, replies []byte
		var messages, pings int64
		for _, read := range [][]byte{stream[:cut], stream[cut:]} {
			buf = append(buf, read...)
			m, p, used, reply := scan(buf, nil)
			messages, pings = messages+m, pings+p
			replies = append(replies, reply...)
			buf = buf[used:]
		}
		want := `<iq type='result' id='p1' from='sink'/><iq type='result' id='p2' from='sink'/>`
		if messages != 2 || pings != 2 || string(replies) != want || len(buf) != 0 {
			t.Fatalf("cut at %d: %d messages, %d pings, replies %q, %d bytes left", cut, messages, pings, replies, len(buf))
		}
	}
}
