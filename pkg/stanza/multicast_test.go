package stanza_test

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/announcer/announcer/pkg/stanza"
)

// xmlText reports whether s is made of XML characters alone (XML 1.0 §2.2).
func xmlText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < ' ' && r != '\t' && r != '\n' && r != '\r' || r == 0xFFFE || r == 0xFFFF {
			return false
		}
	}
	return true
}

// multicastOf renders tpl as one multicast to service for jids.
func multicastOf(tpl *stanza.Template, service string, jids []string) []byte {
	out := tpl.AppendMulticastHead(nil, service)
	for _, j := range jids {
		out = stanza.AppendBcc(out, j)
	}
	return tpl.AppendMulticastTail(out)
}

// checkMulticast holds a multicast rendering to XEP-0033: one well-formed
// stanza to the service whose first child is <addresses/> with one bcc
// address per recipient, in order, followed by the template's own children.
// A recipient that is not XML text (invalid UTF-8, a control character) is
// escaped to U+FFFD on purpose: its address only has to be there, readable.
func checkMulticast(t *testing.T, tpl *stanza.Template, jids []string) {
	t.Helper()
	out := multicastOf(tpl, "multicast.localhost", jids)
	if err := stanza.WellFormed(out); err != nil {
		t.Fatalf("template %q: multicast %q is not well-formed: %v", tpl.Raw(), out, err)
	}
	d := xml.NewDecoder(bytes.NewReader(out))
	var root struct {
		XMLName   xml.Name
		To        string `xml:"to,attr"`
		Addresses struct {
			XMLName xml.Name
			List    []struct {
				Type string `xml:"type,attr"`
				JID  string `xml:"jid,attr"`
			} `xml:"address"`
		} `xml:"http://jabber.org/protocol/address addresses"`
		Inner []byte `xml:",innerxml"`
	}
	if err := d.Decode(&root); err != nil {
		t.Fatalf("template %q: multicast %q: %v", tpl.Raw(), out, err)
	}
	if root.To != "multicast.localhost" {
		t.Fatalf("template %q: multicast to %q", tpl.Raw(), root.To)
	}
	var got []string
	for _, a := range root.Addresses.List {
		if a.Type != "bcc" {
			t.Fatalf("address type %q", a.Type)
		}
		got = append(got, a.JID)
	}
	same := len(got) == len(jids)
	for i := 0; same && i < len(got); i++ {
		same = got[i] == jids[i] || !xmlText(jids[i]) && utf8.ValidString(got[i]) && strings.ContainsRune(got[i], utf8.RuneError)
	}
	if !same {
		t.Fatalf("template %q: addresses %q, want %q", tpl.Raw(), got, jids)
	}
	if !bytes.HasPrefix(bytes.TrimLeft(root.Inner, " \t\r\n"), []byte("<addresses")) {
		t.Fatalf("template %q: <addresses/> is not the first child: %q", tpl.Raw(), root.Inner)
	}
}

// Which templates go out as one multicast: a message with children whose
// only placeholder is the whole `to`.
func TestMulticastTemplates(t *testing.T) {
	for _, c := range []struct {
		tpl  string
		want bool
	}{
		{`<message to='%s' from='announcer.localhost' type='chat'><body>hi</body></message>`, true},
		{`<message from='announcer.localhost' to="%s"><body>a &gt; b</body><x xmlns='y' a='>'/></message>`, true},
		{`<message to='%s' from='announcer.localhost'/>`, false},                                    // nothing to carry
		{`<message to='%s' from='announcer.localhost'><body>#[inc_id]</body></message>`, false},     // per recipient
		{`<message to='%s' from='announcer.localhost'><body>for %s</body></message>`, false},        // a second %s is literal, but ambiguous to readers
		{`<message to='u@localhost/%s' from='announcer.localhost'><body>x</body></message>`, false}, // not the whole to
		{`<presence to='%s' from='announcer.localhost'><status>x</status></presence>`, false},       // XEP-0033 here is for messages
		{`<message from='announcer.localhost' to='x'><body>%s</body></message>`, false},
	} {
		tpl, err := stanza.Parse([]byte(c.tpl), stanza.Options{ComponentDomain: "announcer.localhost"})
		if err != nil {
			t.Fatalf("%s: %v", c.tpl, err)
		}
		if tpl.Multicast() != c.want {
			t.Errorf("%s: Multicast() = %v, want %v", c.tpl, tpl.Multicast(), c.want)
		}
		if tpl.Multicast() {
			checkMulticast(t, tpl, []string{"a@localhost", "b@localhost/r", `q'"<>&@localhost`})
		}
	}
	tpl, _ := stanza.Parse([]byte(`<message to='%s' from='announcer.localhost' id='m1'><body>hi</body></message>`), stanza.Options{})
	want := `<message to='multicast.localhost' from='announcer.localhost' id='m1'><addresses xmlns='http://jabber.org/protocol/address'>` +
		`<address type='bcc' jid='a@localhost'/><address type='bcc' jid='b@localhost'/></addresses><body>hi</body></message>`
	if got := string(multicastOf(tpl, "multicast.localhost", []string{"a@localhost", "b@localhost"})); got != want {
		t.Fatalf("multicast\n got %s\nwant %s", got, want)
	}
}
