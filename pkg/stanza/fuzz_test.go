package stanza_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/announcer/announcer/pkg/stanza"
)

// hostileJIDs are valid recipients chosen to break a template that lets
// the JID escape its context.
var hostileJIDs = []string{
	"a@b",
	"x]]@example.com",
	"]]@d/]]",
	`u@d/'"<>&`,
	"u@d/--",
	"u@d/?>",
	"[inc_id]@d/%s",
	"u@d/\u00e9\U0001F600",
}

func FuzzParse(f *testing.F) {
	seeds := []string{
		firstGen,
		benchTemplate(),
		`<message to='%s'/>`,
		`<iq to='%s' type='get' id='p[inc_id]'><ping xmlns='urn:xmpp:ping'/></iq>`,
		`<message to='x'><body>]]%s</body></message>`,
		`<message to='%s'><body><![CDATA[[inc_id]]]></body></message>`,
		`<c:message xmlns:c='jabber:client' to='%s' c:x='1'/>`,
		`<message to='%s' from='announcer.localhost'><body>&lt;&#x1F600;</body></message>`,
		`<message to='x'><b%s/></message>`,
		`<?xml version='1.0'?><message to='%s'/>`,
		`<message to='%s'><!-- c --></message>`,
		`<message to='%s' from='Announcer@LOCALHOST/x'><body/></message>`,
		`<message from='announcer@localhost'><body>%s</body></message>`,
		`<message to='x' from='announcer@localhost/%s'/>`,
		`<message to='%s' from='announcer&#64;localhost/[inc_id]'/>`,
		`<presence to='%s' from=''/>`,
		`<message to='%s'><error xmlns='http://etherx.jabber.org/streams'><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></error></message>`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), "bob", uint64(1))
	}
	f.Add([]byte(`<presence to='%s'>[inc_id]</presence>`), "x]]@d/]]", uint64(1<<64-1))
	f.Add([]byte(`<message to='a' xmlns:p='%s'/>`), "", uint64(0))
	f.Add([]byte(`<message to='a'><b>]]%s</b></message>`), "", uint64(0))
	f.Fuzz(func(t *testing.T, raw []byte, user string, incID uint64) {
		for _, opt := range []stanza.Options{{}, {ComponentDomain: component}, {ClientJID: clientAccount}} {
			tpl, err := stanza.Parse(raw, opt)
			if err != nil {
				wantValidationError(t, err, "message")
				continue
			}
			jids := hostileJIDs
			if jid, err := stanza.NormalizeJID(user, "example.com"); err == nil {
				jids = append(jids[:len(jids):len(jids)], jid)
			}
			for _, jid := range jids {
				out := tpl.AppendRender(nil, jid, incID)
				root, _, err := parseRoot(out)
				if err != nil {
					t.Fatalf("template %q, jid %q: rendered %q is not one well-formed element: %v", tpl.Raw(), jid, out, err)
				}
				if err := stanza.WellFormed(out); err != nil {
					t.Fatalf("template %q, jid %q: rendered %q fails the strict check: %v", tpl.Raw(), jid, out, err)
				}
				if tpl.RecipientOnlyInTo() {
					if to, _ := attr(root, "to"); to != jid {
						t.Fatalf("template %q: to = %q, want %q", tpl.Raw(), to, jid)
					}
				}
				if opt.ComponentDomain != "" {
					from, _ := attr(root, "from")
					_, dom, _ := strings.Cut(strings.SplitN(from, "/", 2)[0], "@")
					if dom == "" {
						dom = strings.SplitN(from, "/", 2)[0]
					}
					if !strings.EqualFold(dom, opt.ComponentDomain) {
						t.Fatalf("template %q: from %q outside %q", tpl.Raw(), from, opt.ComponentDomain)
					}
				}
				if opt.ClientJID != "" {
					// The bare account, or nothing: c2s takes no resource but its session's own.
					if from, _ := attr(root, "from"); from != "" && !equalFoldASCII(from, opt.ClientJID) {
						t.Fatalf("template %q: from %q is not the bare account %q", tpl.Raw(), from, opt.ClientJID)
					}
				}
				if !strings.ContainsAny(jid, `&<>'"`) && !strings.Contains(jid, "[inc_id]") {
					if want := reference(string(tpl.Raw()), jid, incID); string(out) != want {
						t.Fatalf("render differs from reference:\n got %q\nwant %q", out, want)
					}
				}
			}
			// Rendering is well-formed even for strings that are not JIDs.
			if out := tpl.AppendRender(nil, user, incID); stanza.WellFormed(out) != nil {
				t.Fatalf("template %q, raw user %q: rendered %q is not well-formed", tpl.Raw(), user, out)
			}
			if tpl.Multicast() {
				checkMulticast(t, tpl, append(jids, user))
			}
			// What a stage sends on is what every later stage parses: the same.
			if again, err := stanza.Parse(tpl.Raw(), opt); err != nil || !bytes.Equal(again.Raw(), tpl.Raw()) {
				t.Fatalf("template %q parsed again: %v", tpl.Raw(), err)
			}
		}
		checkClientModel(t, raw)
	})
}

// checkClientModel holds client mode to an independent model of the rule:
// a template passes in client mode exactly when it passes without a mode
// and its root's from is absent, empty, or a fixed valid JID whose bare
// part is the account. A from that differs between two renderings
// contains a placeholder.
func checkClientModel(t *testing.T, raw []byte) {
	t.Helper()
	_, clientErr := stanza.Parse(raw, stanza.Options{ClientJID: clientAccount})
	plain, err := stanza.Parse(raw, stanza.Options{})
	if err != nil {
		if clientErr == nil {
			t.Fatalf("client mode accepted %q, which fails without a mode: %v", raw, err)
		}
		return
	}
	fromOf := func(jid string, incID uint64) string {
		root, _, err := parseRoot(plain.AppendRender(nil, jid, incID))
		if err != nil {
			t.Fatalf("template %q: %v", plain.Raw(), err)
		}
		from, _ := attr(root, "from")
		return from
	}
	from := fromOf("a@b", 1)
	want := true
	switch {
	case from != fromOf("c@d/e", 2):
		want = false
	case from == "":
	default:
		_, err := stanza.NormalizeJID(from, "")
		want = err == nil && equalFoldASCII(strings.SplitN(from, "/", 2)[0], clientAccount)
	}
	if (clientErr == nil) != want {
		t.Fatalf("template %q with from %q: client mode error %v, want accepted = %v", plain.Raw(), from, clientErr, want)
	}
}

// equalFoldASCII is the test's own ASCII-only case folding.
func equalFoldASCII(a, b string) bool {
	lower := func(s string) string {
		b := []byte(s)
		for i, c := range b {
			if 'A' <= c && c <= 'Z' {
				b[i] = c + 'a' - 'A'
			}
		}
		return string(b)
	}
	return lower(a) == lower(b)
}

// wantValidationError fails t unless err is a *stanza.ValidationError for
// field, and returns it.
func wantValidationError(t *testing.T, err error, field string) *stanza.ValidationError {
	t.Helper()
	var ve *stanza.ValidationError
	if !errors.As(err, &ve) || ve.Field != field {
		t.Fatalf("error %T %v is not a %s *ValidationError", err, err, field)
	}
	return ve
}

// addAddressSeeds seeds a fuzzer of (address, default or users' domain)
// pairs, as NormalizeJID and CanonicalRecipient take them: every address
// with two domains, and a few pairs with unusual domains.
func addAddressSeeds(f *testing.F) {
	for _, s := range []string{
		"alice", "alice@example.com", "alice@example.com/phone", "alice@localhost", "alice@LOCALHOST", "alice@localhost/phone",
		"bob@other.example", "bob@[::1]", "a@[::1]/r", "@localhost", "a@b@c", "<x>", "al ice", "a/b", "\xff", "a@d/\u0085", "",
		"Alice@LocalHost/Phone", "ÜNÏ@Example.COM", "İ@[::A]",
	} {
		f.Add(s, "example.com")
		f.Add(s, "localhost")
	}
	f.Add("bob", "")
	f.Add("bob", "[::1]")
	f.Add("bob@[::A]", "[::a]")
}

func FuzzNormalizeJID(f *testing.F) {
	addAddressSeeds(f)
	f.Fuzz(func(t *testing.T, user, domain string) {
		jid, err := stanza.NormalizeJID(user, domain)
		b, err2 := stanza.AppendJID(nil, user, domain)
		if (err == nil) != (err2 == nil) || jid != string(b) {
			t.Fatalf("NormalizeJID = %q, %v but AppendJID = %q, %v", jid, err, b, err2)
		}
		if err != nil {
			wantValidationError(t, err, "usernames")
			return
		}
		if !utf8.ValidString(jid) {
			t.Fatalf("accepted invalid UTF-8 %q", jid)
		}
		bare, resource, hasRes := strings.Cut(jid, "/")
		local, dom, ok := strings.Cut(bare, "@")
		if !ok || local == "" || dom == "" || hasRes && resource == "" {
			t.Fatalf("accepted %q without localpart@domain", jid)
		}
		if strings.ContainsAny(local, "\"&'/:<>@") || strings.ContainsFunc(local, func(r rune) bool {
			return unicode.IsSpace(r) || unicode.IsControl(r)
		}) {
			t.Fatalf("accepted forbidden character in localpart of %q", jid)
		}
		if strings.ContainsFunc(resource, unicode.IsControl) {
			t.Fatalf("accepted control character in resource of %q", jid)
		}
		if !strings.Contains(user, "@") && jid != user+"@"+domain {
			t.Fatalf("bare %q with domain %q normalized to %q", user, domain, jid)
		}
		if strings.Contains(user, "@") && jid != user {
			t.Fatalf("full JID %q changed to %q", user, jid)
		}
		// Escaping must be lossless for every accepted JID.
		doc := stanza.AppendEscaped([]byte(`<message to='`), jid)
		doc = append(doc, `'/>`...)
		root, _, err := parseRoot(doc)
		if err != nil {
			t.Fatalf("%q escaped to %q: %v", jid, doc, err)
		}
		if to, _ := attr(root, "to"); to != jid {
			t.Fatalf("%q round-tripped as %q", jid, to)
		}
	})
}

func FuzzDecodeBase64(f *testing.F) {
	for _, s := range []string{"PG1lc3NhZ2UvPg==", "PG1lc3NhZ2UvPg", " YQ==\n", "YW\r\nI=", "", "====", "-_", "Y", "YQ=", "a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := stanza.DecodeBase64(s)
		if err != nil {
			wantValidationError(t, err, "message")
			return
		}
		if len(b) == 0 {
			t.Fatalf("accepted %q as empty", s)
		}
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding} {
			again, err := stanza.DecodeBase64("\n " + enc.EncodeToString(b) + " \r\n")
			if err != nil || string(again) != string(b) {
				t.Fatalf("round trip of %q: %q, %v", b, again, err)
			}
		}
	})
}

// FuzzCanonicalRecipient checks that the canonical form changes nothing
// that reaches ejabberd: AppendJID(CanonicalRecipient(x)) is
// NormalizeJID(x), except that an address in the users' domain spelled in
// another case comes out with the users' domain's spelling. It also checks
// that every form of one address has the same presence key, and that its
// case variants have the same RecipientKey (a variant of its resource does not).
func FuzzCanonicalRecipient(f *testing.F) {
	addAddressSeeds(f)
	f.Fuzz(func(t *testing.T, s, domain string) {
		c, err := stanza.CanonicalRecipient(s, domain)
		n, nerr := stanza.NormalizeJID(s, domain)
		if (err == nil) != (nerr == nil) {
			t.Fatalf("CanonicalRecipient(%q, %q) = %q, %v but NormalizeJID = %q, %v", s, domain, c, err, n, nerr)
		}
		if err != nil {
			if err.Error() != nerr.Error() {
				t.Fatalf("errors differ: %v vs %v", err, nerr)
			}
			wantValidationError(t, err, "usernames")
			return
		}
		bare, _, hasRes := strings.Cut(n, "/")
		local, dom, _ := strings.Cut(bare, "@")
		inUserDomain := equalFoldASCII(dom, domain)

		want := n
		if inUserDomain && !hasRes {
			want = local + "@" + domain
		}
		r, err := stanza.AppendJID(nil, c, domain)
		if err != nil || string(r) != want {
			t.Fatalf("AppendJID(CanonicalRecipient(%q, %q) = %q) = %q, %v; want %q (NormalizeJID gives %q)", s, domain, c, r, err, want, n)
		}
		if again, err := stanza.CanonicalRecipient(c, domain); err != nil || again != c {
			t.Fatalf("CanonicalRecipient is not idempotent: %q → %q → %q, %v", s, c, again, err)
		}
		if wantBare := inUserDomain && !hasRes; strings.Contains(c, "@") == wantBare {
			t.Fatalf("CanonicalRecipient(%q, %q) = %q; bare username expected: %v", s, domain, c, wantBare)
		}

		key, ok := stanza.PresenceKey(c, domain)
		if ok != inUserDomain || ok && key != local || !ok && key != "" {
			t.Fatalf("PresenceKey(%q, %q) = %q, %v; want %q, %v", c, domain, key, ok, local, inUserDomain)
		}
		for _, form := range []string{s, n} {
			if k, o := stanza.PresenceKey(form, domain); k != key || o != ok {
				t.Fatalf("PresenceKey(%q) = %q, %v but PresenceKey(%q) = %q, %v", form, k, o, c, key, ok)
			}
		}

		rk := stanza.RecipientKey(c)
		if again := stanza.RecipientKey(rk); again != rk {
			t.Fatalf("RecipientKey is not idempotent: %q → %q → %q", c, rk, again)
		}
		_, cRes, cHasRes := strings.Cut(c, "/")
		if _, kRes, kHasRes := strings.Cut(rk, "/"); kHasRes != cHasRes || kRes != cRes ||
			strings.Contains(rk, "@") != strings.Contains(c, "@") {
			t.Fatalf("RecipientKey(%q) = %q changed the address's shape or its resource", c, rk)
		}
		sBare, sRes, sHasRes := strings.Cut(s, "/")
		variant := swapCaseASCII(sBare)
		if sHasRes {
			variant += "/" + sRes
		}
		vc, err := stanza.CanonicalRecipient(variant, domain)
		if err != nil || stanza.RecipientKey(vc) != rk {
			t.Fatalf("case variant %q of %q: CanonicalRecipient %q, %v, RecipientKey %q; want %q",
				variant, s, vc, err, stanza.RecipientKey(vc), rk)
		}
		if sHasRes && swapCaseASCII(sRes) != sRes {
			other := sBare + "/" + swapCaseASCII(sRes)
			if oc, err := stanza.CanonicalRecipient(other, domain); err != nil || stanza.RecipientKey(oc) == rk {
				t.Fatalf("%q and %q differ in the resource's case but share RecipientKey %q (%v)", s, other, rk, err)
			}
		}
	})
}

// swapCaseASCII swaps the case of ASCII letters.
func swapCaseASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case 'a' <= c && c <= 'z':
			b[i] = c - ('a' - 'A')
		case 'A' <= c && c <= 'Z':
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}
