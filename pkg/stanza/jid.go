package stanza

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxPart is RFC 7622's limit for each of localpart, domainpart and resourcepart.
const maxPart = 1023

func jidErr(username, reason string) error {
	return &ValidationError{Field: "usernames", Reason: fmt.Sprintf("%q: %s", Clip(username), reason)}
}

// NormalizeJID returns "user@defaultDomain" for a bare username, else the
// JID as given (resource kept, no case folding), after validation. The
// rules are RFC 7622 made pragmatic: they keep out everything that could
// change the stanza's meaning or make ejabberd bounce it, without a full
// PRECIS implementation. Errors are *ValidationError{Field: "usernames"}.
func NormalizeJID(username, defaultDomain string) (string, error) {
	addDomain, reason := checkRecipient(username, defaultDomain)
	if reason != "" {
		return "", jidErr(username, reason)
	}
	if !addDomain {
		return username, nil
	}
	return username + "@" + defaultDomain, nil
}

// AppendJID is NormalizeJID for the hot path: it appends the normalized
// JID to dst and does not allocate on success when dst has capacity. On
// error dst is returned unchanged.
func AppendJID(dst []byte, username, defaultDomain string) ([]byte, error) {
	addDomain, reason := checkRecipient(username, defaultDomain)
	if reason != "" {
		return dst, jidErr(username, reason)
	}
	dst = append(dst, username...)
	if addDomain {
		dst = append(dst, '@')
		dst = append(dst, defaultDomain...)
	}
	return dst, nil
}

// checkRecipient validates "user", "user@domain" or "user@domain/resource"
// and reports whether the default domain must be appended.
func checkRecipient(username, defaultDomain string) (addDomain bool, reason string) {
	bare, resource, hasResource := strings.Cut(username, "/")
	local, domain, hasDomain := strings.Cut(bare, "@")
	if r := checkLocal(local); r != "" {
		return false, r
	}
	if !hasDomain {
		if hasResource {
			return false, "a resource needs a domain: write user@domain/resource"
		}
		if defaultDomain == "" {
			return false, "no domain given and no default domain configured"
		}
		if r := checkDomain(defaultDomain); r != "" {
			return false, "default domain: " + r
		}
		return true, ""
	}
	return false, checkDomainResource(domain, resource, hasResource)
}

// jidDomain validates a full JID whose localpart is optional ("domain",
// "domain/resource" and "user@domain..." are all addresses) and returns
// its domain part, or a non-empty reason.
func jidDomain(s string) (string, string) {
	bare, resource, hasResource := strings.Cut(s, "/")
	local, domain, hasLocal := strings.Cut(bare, "@")
	if !hasLocal {
		domain = local
	} else if r := checkLocal(local); r != "" {
		return "", r
	}
	if r := checkDomainResource(domain, resource, hasResource); r != "" {
		return "", r
	}
	return domain, ""
}

// checkDomainResource checks what follows a JID's '@' (or all of a JID
// without one): the domainpart and, when hasResource, the resourcepart.
func checkDomainResource(domain, resource string, hasResource bool) string {
	if r := checkDomain(domain); r != "" {
		return r
	}
	if hasResource {
		return checkResource(resource)
	}
	return ""
}

// checkLocal returns "" when s is an acceptable localpart, else why not.
// The reasons are built only on failure so the happy path stays
// allocation-free.
func checkLocal(s string) string {
	if s == "" {
		return "empty username (localpart)"
	}
	if len(s) > maxPart {
		return "username (localpart) is longer than 1023 bytes"
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c <= ' ' || c == 0x7f:
				return fmt.Sprintf("username contains whitespace or control character %U", rune(c))
			case c == '"' || c == '&' || c == '\'' || c == '/' || c == ':' || c == '<' || c == '>' || c == '@':
				return fmt.Sprintf("username contains forbidden character %q", rune(c))
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			return "username is not valid UTF-8"
		}
		if unicode.IsSpace(r) || unicode.Is(unicode.Cc, r) || !isXMLChar(r) {
			return fmt.Sprintf("username contains whitespace, control or non-XML character %U", r)
		}
		// JSON decoding turns bytes that are not UTF-8 into U+FFFD, which no
		// localpart may hold (nodeprep and PRECIS both prohibit it): refused
		// here, not bounced by ejabberd for an account that cannot exist.
		if r == utf8.RuneError {
			return "username contains U+FFFD (what bytes that are not UTF-8 become)"
		}
		i += size
	}
	return ""
}

// checkDomain accepts DNS-style names (ASCII letters, digits, '-', labels
// of 1..63 bytes) and bracketed IPv6 literals. IDNs must arrive in their
// ASCII (punycode) form, which is what ejabberd's host list holds.
func checkDomain(s string) string {
	if s == "" {
		return "empty domain"
	}
	if len(s) > maxPart {
		return "domain is longer than 1023 bytes"
	}
	if s[0] == '[' {
		if s[len(s)-1] != ']' {
			return "unterminated IPv6 literal in domain"
		}
		inner := s[1 : len(s)-1]
		if strings.IndexByte(inner, '%') >= 0 {
			return "IPv6 literal with a zone is not a domain"
		}
		if a, err := netip.ParseAddr(inner); err != nil || !a.Is6() {
			return "invalid IPv6 literal in domain"
		}
		return ""
	}
	label := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-':
			label++
			if label > 63 {
				return "domain label longer than 63 bytes"
			}
		case c == '.':
			if label == 0 {
				return "empty label in domain"
			}
			label = 0
		default:
			if c >= utf8.RuneSelf {
				return "domain must be ASCII (use the punycode form)"
			}
			return fmt.Sprintf("domain contains forbidden character %q", rune(c))
		}
	}
	if label == 0 {
		return "empty label in domain"
	}
	return ""
}

// checkResource allows anything printable: resources are free-form, and
// escaping makes every XML character safe.
func checkResource(s string) string {
	if s == "" {
		return "empty resource after '/'"
	}
	if len(s) > maxPart {
		return "resource is longer than 1023 bytes"
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < ' ' || c == 0x7f {
				return fmt.Sprintf("resource contains control character %U", rune(c))
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			return "resource is not valid UTF-8"
		}
		if unicode.Is(unicode.Cc, r) || !isXMLChar(r) {
			return fmt.Sprintf("resource contains control or non-XML character %U", r)
		}
		i += size
	}
	return ""
}

// AppendEscaped appends s XML-escaped. It is safe in both attribute (either
// quote) and text context: & < > ' " become entities; tab, LF and CR become
// character references so attribute-value normalization cannot alter them;
// bytes that are not valid UTF-8 and runes that are not XML characters
// become U+FFFD, so arbitrary input cannot make the document ill-formed.
func AppendEscaped(dst []byte, s string) []byte {
	last := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= ' ' && c != '&' && c != '<' && c != '>' && c != '\'' && c != '"' {
				i++
				continue
			}
			dst = append(dst, s[last:i]...)
			switch c {
			case '&':
				dst = append(dst, "&amp;"...)
			case '<':
				dst = append(dst, "&lt;"...)
			case '>':
				dst = append(dst, "&gt;"...)
			case '\'':
				dst = append(dst, "&apos;"...)
			case '"':
				dst = append(dst, "&quot;"...)
			case '\t':
				dst = append(dst, "&#x9;"...)
			case '\n':
				dst = append(dst, "&#xA;"...)
			case '\r':
				dst = append(dst, "&#xD;"...)
			default:
				dst = append(dst, "\uFFFD"...)
			}
			i++
			last = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r == 0xFFFE || r == 0xFFFF {
			dst = append(dst, s[last:i]...)
			dst = append(dst, "\uFFFD"...)
			i += size
			last = i
			continue
		}
		i += size
	}
	return append(dst, s[last:]...)
}

// CanonicalRecipient returns the one form internal topics carry a recipient
// in: the bare username when s is an account of userDomain without a
// resource ("alice@localhost" → "alice"), else s as NormalizeJID returns
// it ("bob@other.example", "carol@localhost/phone"); a bare username stays
// as it is. One form per address lets every stage deduplicate and look up
// presence by plain string comparison.
//
// Validation and errors are exactly NormalizeJID's. The domain is compared
// ASCII case-insensitively (domain parts are case-insensitive, RFC 7622
// §3.2), so "alice@LOCALHOST" becomes "alice" too and AppendJID renders it
// with userDomain's spelling; for every other input AppendJID of the result
// is byte for byte NormalizeJID(s, userDomain).
func CanonicalRecipient(s, userDomain string) (string, error) {
	if _, reason := checkRecipient(s, userDomain); reason != "" {
		return "", jidErr(s, reason)
	}
	if strings.IndexByte(s, '/') >= 0 {
		return s, nil
	}
	local, domain, hasDomain := strings.Cut(s, "@")
	if hasDomain && equalFoldASCII(domain, userDomain) {
		return local, nil
	}
	return s, nil
}

// RecipientKey returns the key under which the case variants of one
// recipient compare equal: the localpart lower-cased (ejabberd's nodeprep
// folds it; Unicode lower case stands in for the full mapping), the domain
// ASCII lower-cased (domains are case-insensitive and ASCII here), the
// resource as written (resources are case-sensitive). "ALICE" and "alice",
// or "bob@Other.example" and "bob@other.example", get one key. It is for
// comparing only, never for sending. It expects a recipient that
// CanonicalRecipient returned (so "alice@localhost" of the users' domain is
// already "alice"), does not validate, and returns recipient itself when it
// is already folded.
func RecipientKey(recipient string) string {
	bare, resource, hasResource := strings.Cut(recipient, "/")
	local, domain, hasDomain := strings.Cut(bare, "@")
	fl, fd := strings.ToLower(local), toLowerASCII(domain)
	if fl == local && fd == domain {
		return recipient
	}
	var b strings.Builder
	b.Grow(len(recipient) + len(fl) - len(local))
	b.WriteString(fl)
	if hasDomain {
		b.WriteByte('@')
		b.WriteString(fd)
	}
	if hasResource {
		b.WriteByte('/')
		b.WriteString(resource)
	}
	return b.String()
}

// toLowerASCII lower-cases ASCII letters only; s itself when it has none.
func toLowerASCII(s string) string {
	i := 0
	for i < len(s) && (s[i] < 'A' || s[i] > 'Z') {
		i++
	}
	if i == len(s) {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if 'A' <= b[i] && b[i] <= 'Z' {
			b[i] += 'a' - 'A'
		}
	}
	return string(b)
}

// PresenceKey returns the key of recipient in the Redis presence model
// (GET <username>): the localpart when recipient is a bare username or an
// address in userDomain (compared ASCII case-insensitively, resource
// ignored). ok is false for an address of another domain, which has no
// presence there, and for strings that are no address at all (empty
// localpart, a resource without a domain). It expects a recipient that
// CanonicalRecipient or NormalizeJID accepted, does not validate beyond
// that and does not allocate.
func PresenceKey(recipient, userDomain string) (key string, ok bool) {
	bare, _, hasResource := strings.Cut(recipient, "/")
	local, domain, hasDomain := strings.Cut(bare, "@")
	switch {
	case local == "", !hasDomain && hasResource:
		return "", false
	case hasDomain && !equalFoldASCII(domain, userDomain):
		return "", false
	}
	return local, true
}

// checkBareJID returns "" when s is "user@domain", else why not.
func checkBareJID(s string) string {
	local, domain, ok := strings.Cut(s, "@")
	if !ok {
		return "want user@domain"
	}
	if strings.IndexByte(s, '/') >= 0 {
		return "want user@domain without a resource"
	}
	if r := checkLocal(local); r != "" {
		return r
	}
	return checkDomain(domain)
}

// equalFoldASCII is strings.EqualFold limited to ASCII letters: domains
// are ASCII anyway, and folding other scripts in a localpart is PRECIS's
// job, which this package does not pretend to do; there a missed equality
// only makes client mode reject a from ejabberd might have accepted.
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
