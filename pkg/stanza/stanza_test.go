package stanza_test

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/announcer/announcer/pkg/stanza"
)

// firstGen is the template the first generation's operators send.
const firstGen = `<message xml:lang='en' to='%s' from="USERNAME@s/announcer" type='chat' id='ID_NUMBER' xmlns='jabber:client'><body>MESSAGE_CONTENT</body><body xml:lang='REPLY_ON_THREAD_ID'>989198872580</body></message>`

const component = "announcer.localhost"

// parseRoot decodes doc with encoding/xml's namespace-aware Token and
// returns its single root, failing on anything but exactly one root.
func parseRoot(doc []byte) (xml.StartElement, string, error) {
	d := xml.NewDecoder(bytes.NewReader(doc))
	var root xml.StartElement
	var text strings.Builder
	roots, depth := 0, 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return root, "", err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				roots++
				root = t.Copy()
			}
			depth++
		case xml.EndElement:
			depth--
		case xml.CharData:
			if depth == 0 && len(bytes.TrimSpace(t)) > 0 {
				return root, "", fmt.Errorf("text outside root: %q", t)
			}
			if depth > 0 {
				text.Write(t)
			}
		case xml.Comment, xml.ProcInst, xml.Directive:
			return root, "", fmt.Errorf("unexpected %T", t)
		}
	}
	if roots != 1 {
		return root, "", fmt.Errorf("%d root elements", roots)
	}
	return root, text.String(), nil
}

func attr(e xml.StartElement, local string) (string, bool) {
	for _, a := range e.Attr {
		if a.Name.Space == "" && a.Name.Local == local {
			return a.Value, true
		}
	}
	return "", false
}

// reference is the naive renderer the fast one must match byte for byte
// when the JID needs no escaping.
func reference(tpl, jid string, incID uint64) string {
	s := strings.ReplaceAll(tpl, "[inc_id]", strconv.FormatUint(incID, 10))
	return strings.Replace(s, "%s", jid, 1)
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		tpl  string
		opt  stanza.Options
	}{
		{"first generation", firstGen, stanza.Options{}},
		{"component from domain", `<message to='%s' from='announcer.localhost' type='headline'><body>hi</body></message>`, stanza.Options{ComponentDomain: component}},
		{"component from with user and resource", `<message to='%s' from='bot@announcer.localhost/x'><body>hi</body></message>`, stanza.Options{ComponentDomain: component}},
		{"component domain case-insensitive", `<message to='%s' from='Announcer.LOCALHOST'/>`, stanza.Options{ComponentDomain: component}},
		{"presence", `<presence to='%s' type='subscribe'/>`, stanza.Options{}},
		{"iq", `<iq to='%s' type='get' id='p[inc_id]'><ping xmlns='urn:xmpp:ping'/></iq>`, stanza.Options{}},
		{"surrounding whitespace", "\n\t <message to='%s'/>\r\n ", stanza.Options{}},
		{"recipient in text", `<message to='a@b'><body>hello %s!</body></message>`, stanza.Options{}},
		{"recipient followed by text", `<message to='a@b'><body>%s</body></message>`, stanza.Options{}},
		{"predefined entities and char refs", `<message to='%s'><body>&lt;&gt;&amp;&apos;&quot;&#65;&#x1F600;</body></message>`, stanza.Options{}},
		{"inc_id in CDATA", `<message to='%s'><body><![CDATA[<n>[inc_id]]]></body></message>`, stanza.Options{}},
		{"inc_id before ]> in CDATA", `<message to='%s'><body><![CDATA[[inc_id]]>x]]></body></message>`, stanza.Options{}},
		{"prefixed root with declaration", `<c:message xmlns:c='jabber:client' to='%s'/>`, stanza.Options{}},
		{"declared attribute prefix", `<message xmlns:h='urn:x' h:a='1' a='2' to='%s'/>`, stanza.Options{}},
		{"second %s stays literal", `<message to='%s'><body>50%s off</body></message>`, stanza.Options{}},
		{"percent signs", `<message to='%s'><body>100%% %d</body></message>`, stanza.Options{}},
		{"]] before %s in text", `<message to='a'><body>]]%s</body></message>`, stanza.Options{}},
		{"[inc_id] then ]> in text", `<message to='%s'><body>[inc_id]]></body></message>`, stanza.Options{}},
		{"double-quoted and spaced attributes", "<message  to = \"%s\"\n\ttype='chat' ></message >", stanza.Options{}},
		{"streams namespace declared, no element in it", `<message to='%s' xmlns:s='http://etherx.jabber.org/streams'><body>x</body></message>`, stanza.Options{}},
		{"stream error conditions namespace", `<message to='%s'><x><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></x></message>`, stanza.Options{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tpl, err := stanza.Parse([]byte(tt.tpl), tt.opt)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got, want := string(tpl.Raw()), strings.Trim(tt.tpl, " \t\r\n"); got != want {
				t.Errorf("Raw() = %q, want %q", got, want)
			}
			out := tpl.AppendRender(nil, "bob@example.com", 42)
			if _, _, err := parseRoot(out); err != nil {
				t.Errorf("rendered %q: %v", out, err)
			}
			if err := stanza.WellFormed(out); err != nil {
				t.Errorf("rendered %q: %v", out, err)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	big := "<message to='%s'><body>" + strings.Repeat("x", 100) + "</body></message>"
	cd := stanza.Options{ComponentDomain: component}
	testParse(t, []parseCase{
		{"empty", "", stanza.Options{}, "empty"},
		{"only whitespace", " \n\t", stanza.Options{}, "empty"},
		{"too large", big, stanza.Options{MaxBytes: 100}, "limit is 100"},
		{"too large default", "<message to='%s'>" + strings.Repeat("x", 65536) + "</message>", stanza.Options{}, "limit is 65536"},
		{"invalid UTF-8", "<message to='%s'>\xff</message>", stanza.Options{}, "UTF-8"},
		{"no placeholder", `<message to='x@y'/>`, stanza.Options{}, "no %s"},
		{"not closed", `<message to='%s'><body>x</body>`, stanza.Options{}, "not closed"},
		{"mismatched end tag", `<message to='%s'><body>x</bod></message>`, stanza.Options{}, "does not match"},
		{"two roots", `<message to='%s'/><message to='%s'/>`, stanza.Options{}, "more than one root"},
		{"text before root", `hi<message to='%s'/>`, stanza.Options{}, "text before the root"},
		{"text after root", `<message to='%s'/>hi`, stanza.Options{}, "text after the root"},
		{"xml declaration", `<?xml version='1.0'?><message to='%s'/>`, stanza.Options{}, "XML declaration"},
		{"processing instruction", `<message to='%s'><?pi x?></message>`, stanza.Options{}, "processing instructions"},
		{"comment outside", `<!-- hi --><message to='%s'/>`, stanza.Options{}, "comments"},
		{"comment after", `<message to='%s'/><!-- hi -->`, stanza.Options{}, "comments"},
		{"comment inside", `<message to='%s'><!-- hi --></message>`, stanza.Options{}, "comments"},
		{"doctype", `<!DOCTYPE message><message to='%s'/>`, stanza.Options{}, "DOCTYPE"},
		{"byte order mark", "\uFEFF<message to='%s'/>", stanza.Options{}, "byte order mark"},
		{"wrong root", `<foo to='%s'/>`, stanza.Options{}, "root element is <foo>"},
		{"%s in element name", `<message to='x'><b%s/></message>`, stanza.Options{}, "%s must be inside an attribute value or text content"},
		{"%s as element name", `<message to='x'><%s/></message>`, stanza.Options{}, "%s must be inside"},
		{"%s in attribute name", `<message %s='x'/>`, stanza.Options{}, "%s must be inside"},
		{"%s glued to attribute name", `<message to%s='x'/>`, stanza.Options{}, "%s must be inside"},
		{"%s in entity", `<message to='x'>&%s;</message>`, stanza.Options{}, "%s must be inside"},
		{"%s in CDATA", `<message to='x'><![CDATA[%s]]></message>`, stanza.Options{}, "CDATA"},
		{"%s in end tag", `<message to='x'></message%s>`, stanza.Options{}, "%s must be inside"},
		{"%s inside comment", `<message to='x'><!-- %s --></message>`, stanza.Options{}, "comments"},
		{"%s followed by >", `<message to='x'><body>%s></body></message>`, stanza.Options{}, "must not be followed by '>' or ']'"},
		{"%s followed by ]", `<message to='x'><body>%s]]</body></message>`, stanza.Options{}, "must not be followed by '>' or ']'"},
		{"[inc_id] in element name", `<message to='%s'><x[inc_id]/></message>`, stanza.Options{}, "[inc_id] must be inside"},
		{"[inc_id] in char ref", `<message to='%s'>&#[inc_id];</message>`, stanza.Options{}, "[inc_id] must be inside"},
		{"%s in default namespace", `<message xmlns='%s'/>`, stanza.Options{}, "namespace declarations"},
		{"[inc_id] in prefix declaration", `<message to='%s' xmlns:p='urn:[inc_id]'/>`, stanza.Options{}, "namespace declarations"},
		{"unknown entity", `<message to='%s'>&nbsp;</message>`, stanza.Options{}, "unknown entity &nbsp;"},
		{"bare ampersand", `<message to='%s'>a & b</message>`, stanza.Options{}, "&amp;"},
		{"NUL char ref", `<message to='%s'>&#0;</message>`, stanza.Options{}, "not an XML character"},
		{"surrogate char ref", `<message to='%s'>&#xD800;</message>`, stanza.Options{}, "not an XML character"},
		{"huge char ref", `<message to='%s'>&#99999999999999999999;</message>`, stanza.Options{}, "not an XML character"},
		{"control char", "<message to='%s'>\x01</message>", stanza.Options{}, "illegal character"},
		{"]]> in text", `<message to='%s'>a]]>b</message>`, stanza.Options{}, `"]]>" is not allowed`},
		{"< in attribute", `<message to='%s' a='<'/>`, stanza.Options{}, "'<' must be escaped"},
		{"unquoted attribute", `<message to=x b='%s'/>`, stanza.Options{}, "must be quoted"},
		{"no space between attributes", `<message to='%s'type='chat'/>`, stanza.Options{}, "expected whitespace"},
		{"duplicate attribute", `<message to='%s' to='x'/>`, stanza.Options{}, "duplicate attribute"},
		{"duplicate expanded attribute", `<message xmlns:a='u' xmlns:b='u' a:x='1' b:x='2' to='%s'/>`, stanza.Options{}, "duplicate attribute"},
		{"unbound element prefix", `<c:message to='%s'/>`, stanza.Options{}, "not declared"},
		{"unbound attribute prefix", `<message h:a='1' to='%s'/>`, stanza.Options{}, "not declared"},
		{"empty prefix binding", `<message xmlns:h='' to='%s'/>`, stanza.Options{}, "empty name"},
		{"stream error in the payload", `<message to='%s'><error xmlns='http://etherx.jabber.org/streams'><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></error></message>`, stanza.Options{}, "<error> is in the XMPP streams namespace"},
		{"prefixed streams element", `<message to='%s' xmlns:stream='http://etherx.jabber.org/streams'><body>x</body><stream:features/></message>`, stanza.Options{}, "<stream:features> is in the XMPP streams namespace"},
		{"streams element deep down", `<message to='%s'><a xmlns:s='http://etherx.jabber.org/streams'><b><s:x/></b></a></message>`, stanza.Options{}, "streams namespace"},
		{"streams default namespace inherited", `<message to='%s'><a xmlns='http://etherx.jabber.org/streams' xmlns:c='jabber:client'><c:b/></a></message>`, stanza.Options{}, "<a> is in the XMPP streams namespace"},
		{"root in the streams namespace", `<s:message xmlns:s='http://etherx.jabber.org/streams' to='%s'/>`, stanza.Options{}, "streams namespace"},
		{"invalid name char", "<message to='%s'><b\u00a0/></message>", stanza.Options{}, "not well-formed"},
		{"component: first generation", firstGen, cd, "not in the component domain"},
		{"component: no from", `<message to='%s'/>`, cd, "needs a from"},
		{"component: no to", `<message from='announcer.localhost'><body>%s</body></message>`, cd, "needs a to"},
		{"component: from in other domain", `<message to='%s' from='x@localhost'/>`, cd, "not in the component domain"},
		{"component: subdomain is not the domain", `<message to='%s' from='a.announcer.localhost'/>`, cd, "not in the component domain"},
		{"component: from with placeholder", `<message to='x' from='%s'/>`, cd, "must not contain placeholders"},
		{"component: from with inc_id", `<message to='%s' from='announcer.localhost/[inc_id]'/>`, cd, "must not contain placeholders"},
		{"component: invalid from", `<message to='%s' from='a@@announcer.localhost'/>`, cd, "not a valid JID"},
	})
}

// parseCase is a template, the options to Parse it with, and the outcome
// wanted: "" for accepted, else a substring of the refusal's Reason.
type parseCase struct {
	name string
	tpl  string
	opt  stanza.Options
	want string
}

// testParse runs Parse on each case: what it accepts must render
// well-formed; what it refuses, with a message *ValidationError.
func testParse(t *testing.T, tests []parseCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tpl, err := stanza.Parse([]byte(tt.tpl), tt.opt)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if out := tpl.AppendRender(nil, "bob@example.com", 1); stanza.WellFormed(out) != nil {
					t.Errorf("rendered %q is not well-formed", out)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse accepted %q", tpl.Raw())
			}
			ve := wantValidationError(t, err, "message")
			if !strings.Contains(ve.Reason, tt.want) {
				t.Errorf("Reason = %q, want it to contain %q", ve.Reason, tt.want)
			}
		})
	}
}

func TestRenderMatchesReference(t *testing.T) {
	templates := []string{
		firstGen,
		`<message to='%s' id='[inc_id]'><body>[inc_id] of [inc_id]</body><thread>[inc_id]</thread></message>`,
		`<message to='%s'><body>%s and %s stay</body></message>`,
		`<iq to='%s' id='[inc_id][inc_id]'/>`,
		`<message to='x' id='[inc_id]'><body>hello %s</body></message>`,
		`<message to='%s'><body><![CDATA[[inc_id]]]></body></message>`,
	}
	jids := []string{"bob@example.com", "bob@example.com/phone", "a.b-c_d@xmpp.example.org/res with space", "[inc_id]@x.y", "ü@example.com"}
	ids := []uint64{0, 1, 42, 1<<64 - 1}
	for _, tplText := range templates {
		tpl, err := stanza.Parse([]byte(tplText), stanza.Options{})
		if err != nil {
			t.Fatalf("Parse(%q): %v", tplText, err)
		}
		for _, jid := range jids {
			for _, id := range ids {
				got := string(tpl.AppendRender(nil, jid, id))
				if want := reference(tplText, jid, id); got != want {
					t.Errorf("render(%q, %q, %d)\n got %q\nwant %q", tplText, jid, id, got, want)
				}
			}
		}
	}
}

func TestRenderOnlyFirstPlaceholder(t *testing.T) {
	tpl, err := stanza.Parse([]byte(`<message to='%s'><body>%s [inc_id] [inc_id]</body></message>`), stanza.Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := string(tpl.AppendRender([]byte("prefix:"), "u@d", 7))
	want := `prefix:<message to='u@d'><body>%s 7 7</body></message>`
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestRenderEscapesJID(t *testing.T) {
	templates := []string{
		`<message to='%s'/>`,
		`<message to="%s"/>`,
		`<message to='%s'><body>%s</body></message>`,
	}
	jids := []string{
		`user@example.com/a'b"c<d>e&f`,
		`user@example.com/'/><message to='evil@x'/><x a='`,
		`user@example.com/"/><message to="evil@x"/><x a="`,
		"user@example.com/spaces and\u00a0nbsp",
		"user@example.com/]]>",
		"user@example.com/&amp;",
	}
	for _, tplText := range templates {
		tpl, err := stanza.Parse([]byte(tplText), stanza.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, jid := range jids {
			if _, err := stanza.NormalizeJID(jid, ""); err != nil {
				t.Fatalf("test JID %q rejected: %v", jid, err)
			}
			out := tpl.AppendRender(nil, jid, 0)
			root, _, err := parseRoot(out)
			if err != nil {
				t.Errorf("render(%q, %q) = %q: %v", tplText, jid, out, err)
				continue
			}
			if to, _ := attr(root, "to"); to != jid {
				t.Errorf("render(%q, %q): to = %q", tplText, jid, to)
			}
			if err := stanza.WellFormed(out); err != nil {
				t.Errorf("render(%q, %q) = %q: %v", tplText, jid, out, err)
			}
		}
	}
}

func TestRenderInText(t *testing.T) {
	tpl, err := stanza.Parse([]byte(`<message to='x@y'><body>%s</body></message>`), stanza.Options{})
	if err != nil {
		t.Fatal(err)
	}
	jid := `u@d/<b>&'"]]`
	_, text, err := parseRoot(tpl.AppendRender(nil, jid, 0))
	if err != nil {
		t.Fatal(err)
	}
	if text != jid {
		t.Errorf("body = %q, want %q", text, jid)
	}
}

func TestRenderAnyStringIsWellFormed(t *testing.T) {
	tpl, err := stanza.Parse([]byte(`<message to='%s'><body>]]</body></message>`), stanza.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"", "\x00", "\xff\xfe", "\uFFFE", "a\x1bb", "]]>", "<", "\r\n"} {
		if out := tpl.AppendRender(nil, s, 0); stanza.WellFormed(out) != nil {
			t.Errorf("render(%q) = %q is not well-formed", s, out)
		}
	}
}

func TestRenderAllocs(t *testing.T) {
	tpl, err := stanza.Parse([]byte(benchTemplate()), stanza.Options{ComponentDomain: component})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 0, 4096)
	jids := []string{"user123456@example.com", `user@example.com/a'b"c<d>e&f`}
	for _, jid := range jids {
		allocs := testing.AllocsPerRun(1000, func() {
			buf = tpl.AppendRender(buf[:0], jid, 123456789)
		})
		if allocs != 0 {
			t.Errorf("AppendRender(%q) allocates %.1f times per run, want 0", jid, allocs)
		}
	}
}

func TestTemplateFlags(t *testing.T) {
	tests := []struct {
		tpl          string
		onlyTo, hasI bool
	}{
		{`<message to='%s' from='a@b'><body>hi</body></message>`, true, false},
		{`<message from='a@b' to="%s"/>`, true, false},
		{firstGen, true, false},
		{`<message to='%s' id='[inc_id]'/>`, false, true},
		{`<message to='%s'><body>%s</body></message>`, false, false},
		{`<message to='x@y'><body>%s</body></message>`, false, false},
		{`<message to='%s/r'/>`, false, false},
		{`<message to='%s'><x to='1'/></message>`, true, false},
		{`<message><x to='%s'/></message>`, false, false},
		{`<message to='a' b='%s'/>`, false, false},
		{`<message to='%s'><![CDATA[[inc_id]]]></message>`, false, true},
	}
	for _, tt := range tests {
		tpl, err := stanza.Parse([]byte(tt.tpl), stanza.Options{})
		if err != nil {
			t.Fatalf("Parse(%q): %v", tt.tpl, err)
		}
		if got := tpl.RecipientOnlyInTo(); got != tt.onlyTo {
			t.Errorf("RecipientOnlyInTo(%q) = %v, want %v", tt.tpl, got, tt.onlyTo)
		}
		if got := tpl.HasIncID(); got != tt.hasI {
			t.Errorf("HasIncID(%q) = %v, want %v", tt.tpl, got, tt.hasI)
		}
	}
}

func TestParseDoesNotAliasInput(t *testing.T) {
	raw := []byte(`<message to='%s'/>`)
	tpl, err := stanza.Parse(raw, stanza.Options{})
	if err != nil {
		t.Fatal(err)
	}
	copy(raw, "XXXXXXXX")
	if got := string(tpl.AppendRender(nil, "a@b", 0)); got != `<message to='a@b'/>` {
		t.Errorf("render after mutating the input = %q", got)
	}
}

func TestValidationErrorMessage(t *testing.T) {
	err := error(&stanza.ValidationError{Field: "usernames", Reason: "bad"})
	if got := err.Error(); !strings.Contains(got, "usernames") || !strings.Contains(got, "bad") {
		t.Errorf("Error() = %q", got)
	}
}

func TestDecodeBase64(t *testing.T) {
	const plain = "<message to='%s'>ok?</message>\n"
	std := "PG1lc3NhZ2UgdG89JyVzJz5vaz88L21lc3NhZ2U+Cg=="
	raw := strings.TrimRight(std, "=")
	tests := []struct {
		name, in string
		want     string // "" means error
		errHas   string
	}{
		{"padded", std, plain, ""},
		{"unpadded", raw, plain, ""},
		{"surrounding whitespace", " \n\t" + std + "\r\n ", plain, ""},
		{"wrapped lines", std[:20] + "\n" + std[20:40] + "\r\n" + std[40:], plain, ""},
		{"one byte padded", "YQ==", "a", ""},
		{"one byte unpadded", "YQ", "a", ""},
		{"two bytes padded", "YWI=", "ab", ""},
		{"two bytes unpadded", "YWI", "ab", ""},
		{"empty", "", "", "empty"},
		{"only whitespace", " \n ", "", "empty"},
		{"inner space (mangled +)", "PG1l c3Nh", "", "whitespace"},
		{"url-safe alphabet", "-_-_", "", "URL-safe"},
		{"wrong padding", "YQ=", "", "not valid base64"},
		{"too much padding", "YWI==", "", "not valid base64"},
		{"garbage", "!!!!", "", "not valid base64"},
		{"impossible length", "Y", "", "not valid base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := stanza.DecodeBase64(tt.in)
			if tt.want != "" {
				if err != nil || string(got) != tt.want {
					t.Fatalf("DecodeBase64(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
				}
				return
			}
			ve := wantValidationError(t, err, "message")
			if !strings.Contains(ve.Reason, tt.errHas) {
				t.Errorf("Reason = %q, want it to contain %q", ve.Reason, tt.errHas)
			}
		})
	}
}

// TestPlaceholderAtEveryOffset inserts a placeholder at every byte of rich
// templates: whatever Parse accepts must render well-formed for hostile
// JIDs. It is the deterministic core of FuzzParse.
func TestPlaceholderAtEveryOffset(t *testing.T) {
	bases := []string{
		`<c:message xmlns:c='jabber:client' xmlns:h="urn:h" to='x@y' h:a="v&amp;w" xml:lang='en'><body>a]]b&#x41;&lt;</body><h:x><![CDATA[d]]]]></h:x><e/></c:message>`,
		"<message to='x@y' from='announcer.localhost'>\n <body>]</body><body>]]</body><body>&gt;</body></message>",
		"<presence from='announcer@localhost/r' type='probe'><status>]</status></presence>",
	}
	jids := append([]string{"", "]]", ">", "&"}, hostileJIDs...)
	accepted := 0
	for _, base := range bases {
		for _, ph := range []string{"%s", "[inc_id]"} {
			for i := 0; i <= len(base); i++ {
				tplText := base[:i] + ph + base[i:]
				if ph == "[inc_id]" {
					tplText = strings.Replace(tplText, "to='x@y'", "to='%s'", 1)
				}
				for _, opt := range []stanza.Options{{}, {ComponentDomain: component}, {ClientJID: clientAccount}} {
					tpl, err := stanza.Parse([]byte(tplText), opt)
					if err != nil {
						continue
					}
					accepted++
					for _, jid := range jids {
						out := tpl.AppendRender(nil, jid, 1234)
						if err := stanza.WellFormed(out); err != nil {
							t.Fatalf("template %q, jid %q: %q: %v", tplText, jid, out, err)
						}
						if _, _, err := parseRoot(out); err != nil {
							t.Fatalf("template %q, jid %q: %q: %v", tplText, jid, out, err)
						}
					}
				}
			}
		}
	}
	if accepted == 0 {
		t.Fatal("no template accepted; the test checks nothing")
	}
	t.Logf("%d placements accepted", accepted)
}

// clientAccount is the sending account of the client-mode tests.
const clientAccount = "announcer@localhost"

// TestParseClientFrom covers client mode: ejabberd's c2s closes the stream
// when a stanza's from is anything but the session's own account.
func TestParseClientFrom(t *testing.T) {
	cl := stanza.Options{ClientJID: clientAccount}
	testParse(t, []parseCase{
		{"no from", `<message to='%s'><body/></message>`, cl, ""},
		{"empty from", `<message to='%s' from=''/>`, cl, ""},
		{"bare account", `<message to='%s' from='announcer@localhost'/>`, cl, ""},
		{"account with resource", `<message to='%s' from='announcer@localhost/bot'/>`, cl, ""},
		{"case difference", `<message to='%s' from='Announcer@LOCALHOST/Bot'/>`, cl, ""},
		{"case difference in the option", `<message to='%s' from='announcer@localhost'/>`, stanza.Options{ClientJID: "ANNOUNCER@LocalHost"}, ""},
		{"resource with slash and at", `<message to='%s' from='announcer@localhost/a/b@c'/>`, cl, ""},
		{"entity in from is decoded", `<message to='%s' from='announcer&#64;localhost'/>`, cl, ""},
		{"no to", `<message from='announcer@localhost'><body>%s</body></message>`, cl, ""},
		{"presence without to or from", `<presence><status>%s</status></presence>`, cl, ""},
		{"prefixed from is not the from", `<message xmlns:x='urn:x' x:from='other@localhost' to='%s'/>`, cl, ""},
		{"first generation with its own account", firstGen, stanza.Options{ClientJID: "username@s"}, ""},

		{"other account", `<message to='%s' from='other@localhost'/>`, cl, "not the sending account"},
		{"other account with resource", `<message to='%s' from='other@localhost/announcer'/>`, cl, "not the sending account"},
		{"same user in another domain", `<message to='%s' from='announcer@example.org'/>`, cl, "not the sending account"},
		{"domain only", `<message to='%s' from='localhost'/>`, cl, "not the sending account"},
		{"longer domain", `<message to='%s' from='announcer@localhost.evil'/>`, cl, "not the sending account"},
		{"component address", `<message to='%s' from='announcer.localhost'/>`, cl, "not the sending account"},
		{"first generation", firstGen, cl, "not the sending account"},
		// Only ASCII is folded: U+212A KELVIN SIGN is not "k" here.
		{"no Unicode folding", "<message to='%s' from='\u212Aelvin@localhost'/>", stanza.Options{ClientJID: "kelvin@localhost"}, "not the sending account"},
		{"recipient in from", `<message to='x@y' from='%s'/>`, cl, "must not contain placeholders"},
		{"recipient as resource", `<message to='x@y' from='announcer@localhost/%s'/>`, cl, "must not contain placeholders"},
		{"inc_id in from", `<message to='%s' from='announcer@localhost/[inc_id]'/>`, cl, "must not contain placeholders"},
		{"empty resource", `<message to='%s' from='announcer@localhost/'/>`, cl, "not a valid JID"},
		{"double at", `<message to='%s' from='announcer@@localhost'/>`, cl, "not a valid JID"},
		{"leading space", `<message to='%s' from=' announcer@localhost'/>`, cl, "not a valid JID"},
		// The template rules still apply in client mode.
		{"syntax still checked", `<message to='%s' from='announcer@localhost'>`, cl, "not closed"},
	})
}

// A from naming the account with a resource, as the first generation's
// templates do, goes out bare: c2s refuses any resource but the session's
// own (invalid-from, the stream closed for every stanza behind it), and the
// sender's sessions have resources of their own.
func TestParseClientFromDropsTheResource(t *testing.T) {
	for _, tc := range []struct{ name, tpl, account, want string }{
		{"account with resource", `<message to='%s' from='announcer@localhost/bot'/>`, clientAccount,
			`<message to='%s' from='announcer@localhost'/>`},
		{"case kept", `<message to='%s' from='Announcer@LOCALHOST/Bot'/>`, clientAccount,
			`<message to='%s' from='Announcer@LOCALHOST'/>`},
		{"resource with slash and at", `<message to='%s' from="announcer@localhost/a/b@c" type='chat'><body/></message>`, clientAccount,
			`<message to='%s' from="announcer@localhost" type='chat'><body/></message>`},
		{"entities in the account", `<message to='%s' from='announcer&#64;localhost/x'/>`, clientAccount,
			`<message to='%s' from='announcer@localhost'/>`},
		{"first generation", firstGen, "username@s", strings.Replace(firstGen, `"USERNAME@s/announcer"`, `"USERNAME@s"`, 1)},
		{"bare stays as written", `<message to='%s' from='announcer&#64;localhost'/>`, clientAccount,
			`<message to='%s' from='announcer&#64;localhost'/>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tpl, err := stanza.Parse([]byte(tc.tpl), stanza.Options{ClientJID: tc.account})
			if err != nil {
				t.Fatal(err)
			}
			if got := string(tpl.Raw()); got != tc.want {
				t.Fatalf("template %s, want %s", got, tc.want)
			}
			if _, err := stanza.Parse(tpl.Raw(), stanza.Options{ClientJID: tc.account}); err != nil {
				t.Fatalf("the template as sent does not parse again: %v", err)
			}
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opt  stanza.Options
		want string // "" = valid, else a substring of the error
	}{
		{"plain", stanza.Options{}, ""},
		{"component", stanza.Options{ComponentDomain: component}, ""},
		{"client", stanza.Options{ClientJID: clientAccount}, ""},
		{"both modes", stanza.Options{ComponentDomain: component, ClientJID: clientAccount}, "mutually exclusive"},
		{"client without domain", stanza.Options{ClientJID: "announcer"}, "want user@domain"},
		{"client with resource", stanza.Options{ClientJID: "announcer@localhost/r"}, "without a resource"},
		{"client without localpart", stanza.Options{ClientJID: "@localhost"}, "empty username"},
		{"client with empty domain", stanza.Options{ClientJID: "announcer@"}, "empty domain"},
		{"client with bad domain", stanza.Options{ClientJID: "a@b@c"}, "forbidden character"},
		{"client with space", stanza.Options{ClientJID: "an nouncer@localhost"}, "whitespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.opt.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tt.want)
			}
			// Parse reports the same configuration error, and not as a
			// template rejection: the API must not answer 400 for it.
			_, perr := stanza.Parse([]byte(`<message to='%s'/>`), tt.opt)
			var ve *stanza.ValidationError
			if perr == nil || errors.As(perr, &ve) || perr.Error() != err.Error() {
				t.Errorf("Parse = %v, want %v as a plain error", perr, err)
			}
		})
	}
}

// The first generation's documented template sends from a user's address,
// which only an ejabberd listener with check_from: false lets through.
func TestAnyFromIsCheckFromFalse(t *testing.T) {
	sample := `<message xml:lang='en' to='%s' from="USERNAME@s/announcer" type='chat' id='ID_NUMBER' xmlns='jabber:client'><body>MESSAGE_CONTENT</body><body xml:lang='MAJOR_TYPE'>SIMPLE_CHAT</body></message>`
	_, err := stanza.Parse([]byte(sample), stanza.Options{ComponentDomain: "announcer.soroush.ir"})
	var ve *stanza.ValidationError
	if !errors.As(err, &ve) || !strings.Contains(ve.Reason, "check_from = false") {
		t.Fatalf("err = %v, want a 400 naming the option that allows it", err)
	}
	if _, err := stanza.Parse([]byte(sample), stanza.Options{ComponentDomain: "announcer.soroush.ir", AnyFrom: true}); err != nil {
		t.Fatalf("with check_from false: %v", err)
	}
	for _, bad := range []string{
		`<message to='%s'><body>x</body></message>`,              // ejabberd still closes the stream without a from
		`<message from='a@b'><body>%s</body></message>`,          // or without a to
		`<message to='%s' from='a@b@c'><body>x</body></message>`, // or with a from that is no JID
	} {
		if _, err := stanza.Parse([]byte(bad), stanza.Options{ComponentDomain: "announcer.soroush.ir", AnyFrom: true}); err == nil {
			t.Errorf("%s accepted with check_from false", bad)
		}
	}
}
