package stanza_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/announcer/announcer/pkg/stanza"
)

// addressCase is an address as a request gives it, the domain it is read
// with, and the answer wanted from NormalizeJID or CanonicalRecipient.
type addressCase struct {
	in, domain string
	want       string // "" means rejected
}

// checkAddress fails unless fn's answer (got, err) to tt is the one wanted:
// the address, or, for a refused one, a *stanza.ValidationError for the
// usernames field. It reports whether the answer was the one wanted.
func checkAddress(t *testing.T, fn string, tt addressCase, got string, err error) bool {
	t.Helper()
	if tt.want == "" {
		var ve *stanza.ValidationError
		if !errors.As(err, &ve) || ve.Field != "usernames" {
			t.Errorf("%s(%q, %q) = %q, %v; want *ValidationError for usernames", fn, tt.in, tt.domain, got, err)
			return false
		}
		return true
	}
	if err != nil || got != tt.want {
		t.Errorf("%s(%q, %q) = %q, %v; want %q", fn, tt.in, tt.domain, got, err, tt.want)
		return false
	}
	return true
}

func TestNormalizeJID(t *testing.T) {
	long := strings.Repeat("a", 1023)
	tests := []addressCase{
		{"alice", "example.com", "alice@example.com"},
		{"alice@other.org", "example.com", "alice@other.org"},
		{"alice@other.org/phone", "example.com", "alice@other.org/phone"},
		{"alice@other.org/with space/and/slash@at", "", "alice@other.org/with space/and/slash@at"},
		{"alice@other.org/<'\"&>", "", "alice@other.org/<'\"&>"},
		{"Alice@Example.COM", "", "Alice@Example.COM"},
		{"ünïcödé", "example.com", "ünïcödé@example.com"},
		{"a.b-c_d+e=f!#$%*[]{}|~", "example.com", "a.b-c_d+e=f!#$%*[]{}|~@example.com"},
		{"bob@127.0.0.1", "", "bob@127.0.0.1"},
		{"bob@[::1]", "", "bob@[::1]"},
		{"bob@[2001:db8::1]/r", "", "bob@[2001:db8::1]/r"},
		{"bob", "[::1]", "bob@[::1]"},
		{"bob@localhost", "", "bob@localhost"},
		{long, "d", long + "@d"},
		{long + "@" + strings.Repeat("a.", 511) + "b", "", long + "@" + strings.Repeat("a.", 511) + "b"},

		{"", "example.com", ""},
		{"@example.com", "", ""},
		{"alice@", "", ""},
		{"alice@example.com/", "", ""},
		{"alice/phone", "example.com", ""},
		{"alice", "", ""},
		{"alice", "bad domain", ""},
		{"a@b@c", "", ""},
		{long + "a", "d", ""},
		{"a@" + strings.Repeat("a", 64), "", ""},
		{"a@" + strings.Repeat("a.", 512) + "b", "", ""},
		{"a@example.com/" + strings.Repeat("r", 1024), "", ""},
		{"al ice", "d", ""},
		{"alice ", "d", ""},
		{"al\tice", "d", ""},
		{"al\u00a0ice", "d", ""},
		{"al\u3000ice", "d", ""},
		{"al\x00ice", "d", ""},
		{"al\x7fice", "d", ""},
		{"al\u0085ice", "d", ""},
		{"al\uFFFEice", "d", ""},
		{"al\xffice", "d", ""},
		{"al\uFFFDice", "d", ""}, // what JSON makes of "al\xffice"
		{`al"ice`, "d", ""},
		{"al&ice", "d", ""},
		{"al'ice", "d", ""},
		{"al:ice", "d", ""},
		{"al<ice", "d", ""},
		{"al>ice", "d", ""},
		{"<x/>", "d", ""},
		{"a@exa_mple.com", "", ""},
		{"a@example..com", "", ""},
		{"a@.example.com", "", ""},
		{"a@example.com.", "", ""},
		{"a@example.com:5222", "", ""},
		{"a@ex<ample.com", "", ""},
		{"a@exämple.com", "", ""},
		{"a@[::1", "", ""},
		{"a@[1.2.3.4]", "", ""},
		{"a@[fe80::1%eth0]", "", ""},
		{"a@[nonsense]", "", ""},
		{"a@d/r\x00", "", ""},
		{"a@d/r\nx", "", ""},
		{"a@d/r\u0085", "", ""},
		{"a@d/\xff", "", ""},
	}
	for _, tt := range tests {
		got, err := stanza.NormalizeJID(tt.in, tt.domain)
		checkAddress(t, "NormalizeJID", tt, got, err)
		if tt.want == "" {
			if b, err := stanza.AppendJID([]byte("keep"), tt.in, tt.domain); err == nil || string(b) != "keep" {
				t.Errorf("AppendJID(%q, %q) = %q, %v; want dst unchanged and an error", tt.in, tt.domain, b, err)
			}
		} else if b, err := stanza.AppendJID([]byte("x,"), tt.in, tt.domain); err != nil || string(b) != "x,"+tt.want {
			t.Errorf("AppendJID(%q, %q) = %q, %v; want %q", tt.in, tt.domain, b, err, "x,"+tt.want)
		}
	}
}

func TestJIDErrorIsBounded(t *testing.T) {
	_, err := stanza.NormalizeJID(strings.Repeat("<", 100000), "d")
	if err == nil || len(err.Error()) > 300 {
		t.Errorf("error = %.300v (len %d)", err, len(err.Error()))
	}
}

func TestAppendJIDAllocs(t *testing.T) {
	buf := make([]byte, 0, 256)
	for _, in := range []string{"user123456", "user@example.com/res", "bob@[2001:db8::1]"} {
		allocs := testing.AllocsPerRun(1000, func() {
			var err error
			buf, err = stanza.AppendJID(buf[:0], in, "example.com")
			if err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("AppendJID(%q) allocates %.1f times per run, want 0", in, allocs)
		}
	}
}

func TestAppendEscaped(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"plain@example.com", "plain@example.com"},
		{`&<>'"`, "&amp;&lt;&gt;&apos;&quot;"},
		{"a\tb\nc\rd", "a&#x9;b&#xA;c&#xD;d"},
		{"nul\x00esc\x1b", "nul\uFFFDesc\uFFFD"},
		{"bad\xffutf8\xc3", "bad\uFFFDutf8\uFFFD"},
		{"non\uFFFEchar\uFFFF", "non\uFFFDchar\uFFFD"},
		{"ünï\U0001F600\u007f", "ünï\U0001F600\u007f"},
		{"]]>", "]]&gt;"},
	}
	for _, tt := range tests {
		if got := string(stanza.AppendEscaped([]byte("pre"), tt.in)); got != "pre"+tt.want {
			t.Errorf("AppendEscaped(%q) = %q, want %q", tt.in, got, "pre"+tt.want)
		}
	}
}

func TestCanonicalRecipient(t *testing.T) {
	tests := []addressCase{
		{"alice", "localhost", "alice"},
		{"Alice", "localhost", "Alice"},
		{"alice@localhost", "localhost", "alice"},
		{"Alice@localhost", "localhost", "Alice"},
		{"alice@LOCALHOST", "localhost", "alice"},
		{"alice@localhost", "LocalHost", "alice"},
		{"alice@localhost/phone", "localhost", "alice@localhost/phone"},
		{"alice@localhost/a@b/c", "localhost", "alice@localhost/a@b/c"},
		{"bob@other.example", "localhost", "bob@other.example"},
		{"bob@other.example/r", "localhost", "bob@other.example/r"},
		{"bob@localhost.evil", "localhost", "bob@localhost.evil"},
		{"bob@host", "localhost", "bob@host"},
		{"bob@[::1]", "[::1]", "bob"},
		{"bob@[::a]", "[::A]", "bob"},
		{"bob@[0::1]", "[::1]", "bob@[0::1]"}, // same address, other spelling: left alone
		{"ünï@localhost", "localhost", "ünï"},
		{"bob@other.example", "", "bob@other.example"},

		{"", "localhost", ""},
		{"alice", "", ""},
		{"alice", "bad domain", ""},
		{"alice/phone", "localhost", ""},
		{"alice@", "localhost", ""},
		{"@localhost", "localhost", ""},
		{"alice@localhost/", "localhost", ""},
		{"al ice@localhost", "localhost", ""},
		{"a@b@localhost", "localhost", ""},
	}
	for _, tt := range tests {
		got, err := stanza.CanonicalRecipient(tt.in, tt.domain)
		if checkAddress(t, "CanonicalRecipient", tt, got, err) && tt.want == "" {
			// A refused address is refused for the reason NormalizeJID gives.
			if _, nerr := stanza.NormalizeJID(tt.in, tt.domain); nerr == nil || err.Error() != nerr.Error() {
				t.Errorf("CanonicalRecipient(%q, %q) error %v differs from NormalizeJID's %v", tt.in, tt.domain, err, nerr)
			}
		}
	}
}

func TestPresenceKey(t *testing.T) {
	tests := []struct {
		in, domain string
		key        string
		ok         bool
	}{
		{"alice", "localhost", "alice", true},
		{"Alice", "localhost", "Alice", true},
		{"alice", "", "alice", true},
		{"alice@localhost", "localhost", "alice", true},
		{"alice@LOCALHOST", "localhost", "alice", true},
		{"alice@localhost/phone", "localhost", "alice", true},
		{"alice@localhost/a@other.example", "localhost", "alice", true},
		{"bob@other.example", "localhost", "", false},
		{"bob@other.example/r", "localhost", "", false},
		{"bob@localhost.evil", "localhost", "", false},
		{"bob@localhost", "", "", false},
		// Not addresses: no key rather than a wrong one.
		{"", "localhost", "", false},
		{"@localhost", "localhost", "", false},
		{"alice/phone", "localhost", "", false},
	}
	for _, tt := range tests {
		key, ok := stanza.PresenceKey(tt.in, tt.domain)
		if key != tt.key || ok != tt.ok {
			t.Errorf("PresenceKey(%q, %q) = %q, %v; want %q, %v", tt.in, tt.domain, key, ok, tt.key, tt.ok)
		}
	}
}

func TestRecipientKey(t *testing.T) {
	tests := []struct{ in, want string }{
		{"alice", "alice"},
		{"Alice", "alice"},
		{"ALICE", "alice"},
		{"ÜNÏ", "ünï"},
		{"bob@Other.Example", "bob@other.example"},
		{"Bob@other.example", "bob@other.example"},
		{"alice@LOCALHOST/phone", "alice@localhost/phone"},
		{"Alice@localhost/Phone", "alice@localhost/Phone"}, // a resource keeps its case
		{"alice@localhost/A@B/C", "alice@localhost/A@B/C"},
		{"bob@[::A]", "bob@[::a]"},
	}
	for _, tt := range tests {
		if got := stanza.RecipientKey(tt.in); got != tt.want {
			t.Errorf("RecipientKey(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	// The list is deduplicated on this key per username: a folded one costs nothing.
	for _, in := range []string{"alice", "bob@other.example/Phone"} {
		if allocs := testing.AllocsPerRun(1000, func() { _ = stanza.RecipientKey(in) }); allocs != 0 {
			t.Errorf("RecipientKey(%q) allocates %.1f times per run, want 0", in, allocs)
		}
	}
}

func TestCanonicalRecipientAllocs(t *testing.T) {
	for _, in := range []string{"alice", "alice@localhost", "bob@other.example/r"} {
		allocs := testing.AllocsPerRun(1000, func() {
			c, err := stanza.CanonicalRecipient(in, "localhost")
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := stanza.PresenceKey(c, "localhost"); !ok && c != in {
				t.Fatal("no presence key")
			}
		})
		if allocs != 0 {
			t.Errorf("CanonicalRecipient+PresenceKey(%q) allocates %.1f times per run, want 0", in, allocs)
		}
	}
}
