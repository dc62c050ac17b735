package stanza_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/announcer/announcer/pkg/stanza"
)

const benchJID = "user123456@example.com"

// benchTemplate is a 600-byte chat message with the recipient in `to` and
// the sequence number in the id, the shape production sends.
func benchTemplate() string {
	head := `<message xml:lang='en' to='%s' from='announcer.localhost' type='chat' id='ann-7f3a-[inc_id]' xmlns='jabber:client'><body>`
	tail := `</body><store xmlns='urn:xmpp:hints'/></message>`
	body := strings.Repeat("Maintenance tonight from 02:00 to 03:00 UTC. ", 20)
	return head + body[:600-len(head)-len(tail)] + tail
}

func TestBenchTemplateSize(t *testing.T) {
	if n := len(benchTemplate()); n != 600 {
		t.Fatalf("bench template is %d bytes, want 600", n)
	}
}

func BenchmarkAppendRender(b *testing.B) {
	tpl, err := stanza.Parse([]byte(benchTemplate()), stanza.Options{ComponentDomain: "announcer.localhost"})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, 4096)
	b.SetBytes(int64(len(tpl.AppendRender(nil, benchJID, 0))))
	b.ReportAllocs()
	var id uint64
	for b.Loop() {
		id++
		buf = tpl.AppendRender(buf[:0], benchJID, id)
	}
}

// BenchmarkRenderSprintfReplaceAll is the first generation's renderer, the
// baseline AppendRender is measured against.
func BenchmarkRenderSprintfReplaceAll(b *testing.B) {
	tpl := benchTemplate()
	b.SetBytes(int64(len(reference(tpl, benchJID, 0))))
	b.ReportAllocs()
	var id uint64
	var sink string
	for b.Loop() {
		id++
		sink = strings.ReplaceAll(fmt.Sprintf(tpl, benchJID), "[inc_id]", strconv.FormatUint(id, 10))
	}
	_ = sink
}

func BenchmarkAppendJIDAndRender(b *testing.B) {
	tpl, err := stanza.Parse([]byte(benchTemplate()), stanza.Options{})
	if err != nil {
		b.Fatal(err)
	}
	jid := make([]byte, 0, 256)
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	var id uint64
	for b.Loop() {
		id++
		jid, err = stanza.AppendJID(jid[:0], "user123456", "example.com")
		if err != nil {
			b.Fatal(err)
		}
		// A real sender keeps the JID as a string from its batch; the
		// conversion here is only to feed the []byte through.
		buf = tpl.AppendRender(buf[:0], string(jid), id)
	}
}

func BenchmarkParse(b *testing.B) {
	raw := []byte(benchTemplate())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := stanza.Parse(raw, stanza.Options{ComponentDomain: "announcer.localhost"}); err != nil {
			b.Fatal(err)
		}
	}
}
