// Package stanza validates the announcement template once and renders it
// per recipient without allocating.
//
// The template is the first generation's contract: one XML stanza in which
// the first "%s" becomes the recipient's JID and every "[inc_id]" becomes a
// per-recipient sequence number. Validation is strict because a single bad
// stanza on a XEP-0114 connection makes ejabberd close the whole stream, and
// everything in flight behind it has to be resent; rendering is split into precompiled
// literal segments so the sender's hot path is a handful of memmoves.
//
// Placeholder rules: only the exact bytes "%s" and "[inc_id]" are special.
// There is no fmt-style processing ("%%" or "%d" stay literal); a second
// "%s" stays literal text.
//
// Template restrictions (RFC 6120 §11.1 restricted XML, plus what would
// break the stream):
//   - exactly one root element (message, presence or iq); whitespace around
//     it is tolerated and trimmed (Raw returns the trimmed bytes);
//   - no XML declaration, comments, processing instructions or DOCTYPE,
//     anywhere: RFC 6120 has the receiver close the stream for them, and an
//     XML declaration cannot appear in the middle of an open stream;
//   - only the five predefined entities and character references that
//     denote XML characters;
//   - no duplicate attributes, no unbound namespace prefixes (expat, which
//     ejabberd uses, rejects both; encoding/xml does not);
//   - the recipient "%s" sits in an attribute value or in text content, not
//     in a name, a reference or a CDATA section (where escaping would show);
//     in text it must not be followed by '>' or ']', because a JID ending in
//     "]]" would then complete the forbidden "]]>";
//   - "[inc_id]" sits in an attribute value, text content or CDATA;
//   - no placeholder in a namespace declaration (xmlns, xmlns:p);
//   - no element in the XMPP streams namespace
//     (http://etherx.jabber.org/streams): bounced back inside an error, it
//     would read as stream-level markup to a careless receiver;
//   - component mode: the root has `to` and a placeholder-free `from` whose
//     domain equals the component domain (ASCII case-insensitively);
//   - client mode: `to` is optional, and the root's `from`, when present and
//     not empty, is placeholder-free and names the sending account, bare or
//     with any resource (ASCII case-insensitively). A resource is dropped:
//     c2s takes only the session's own, which the sender chooses.
package stanza

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// DefaultMaxBytes is the decoded template size limit when Options.MaxBytes
// is not set: it leaves room for the longest JID (3 KiB, up to 6× when
// escaped) under the max_stanza_size values deployments configure
// (ejabberd's example config uses 262144 for c2s).
const DefaultMaxBytes = 65536

// Placeholders, exactly as the first generation's clients send them.
const (
	PlaceholderJID   = "%s"
	PlaceholderIncID = "[inc_id]"
)

// sampleJID stands in for the recipient when the template is checked with
// encoding/xml; any JID works because rendering escapes it.
const sampleJID = "sample@example.com/res"

// ValidationError is what every rejection returns; Field names the request
// field ("message", "usernames", ...) so the API can answer 400 with it.
type ValidationError struct {
	Field, Reason string
}

func (e *ValidationError) Error() string {
	return "invalid " + e.Field + ": " + e.Reason
}

// Options tune Parse. ComponentDomain and ClientJID select the connection
// mode the templates are sent on, so at most one of them may be set; see
// Validate.
type Options struct {
	MaxBytes        int    // decoded template size limit; <= 0 means DefaultMaxBytes
	ComponentDomain string // non-empty in component mode: the root's `from` must be a JID whose domain part equals this domain
	ClientJID       string // non-empty in client mode: the sending account's bare JID ("announcer@localhost"); the root's `from` must be absent, empty or this account (a resource is dropped)
	// AnyFrom, in component mode, lets `from` be any valid JID: what an
	// ejabberd listener with check_from: false accepts. A `from` and a `to`
	// are still required.
	AnyFrom bool
}

// Validate reports options no template could be checked against: both
// modes at once, or a ClientJID that is not a bare user@domain JID. Parse
// calls it first. Its errors are plain errors, not *ValidationError: the
// configuration is at fault, not the template, so services should call it
// at start-up and refuse to run.
func (o Options) Validate() error {
	if o.ComponentDomain != "" && o.ClientJID != "" {
		return errors.New("stanza: Options.ComponentDomain (component mode) and Options.ClientJID (client mode) are mutually exclusive")
	}
	if o.ClientJID != "" {
		if reason := checkBareJID(o.ClientJID); reason != "" {
			return fmt.Errorf("stanza: Options.ClientJID %q is not a bare JID: %s", Clip(o.ClientJID), reason)
		}
	}
	return nil
}

func messageErr(format string, args ...any) error {
	return &ValidationError{Field: "message", Reason: fmt.Sprintf(format, args...)}
}

// DecodeBase64 accepts standard base64 with or without padding, and
// tolerates surrounding whitespace and line breaks inside (MIME-style
// wrapping). Spaces inside are rejected rather than skipped: they are
// almost always '+' characters mangled by form/URL decoding, and skipping
// them would silently corrupt the template.
func DecodeBase64(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, messageErr("empty")
	}
	if i := strings.IndexAny(s, " \t\v\f"); i >= 0 {
		return nil, messageErr("base64 contains whitespace at offset %d (a '+' turned into ' ' by URL/form decoding?)", i)
	}
	enc := base64.RawStdEncoding
	if strings.HasSuffix(s, "=") {
		enc = base64.StdEncoding
	}
	b, err := enc.DecodeString(s)
	if err != nil {
		hint := ""
		if strings.ContainsAny(s, "-_") {
			hint = " (URL-safe alphabet is not accepted, use standard base64)"
		}
		return nil, messageErr("not valid base64: %v%s", err, hint)
	}
	if len(b) == 0 {
		return nil, messageErr("empty")
	}
	return b, nil
}

type hole uint8

const (
	holeNone hole = iota // last segment: literal only
	holeJID
	holeIncID
)

// segment is a literal run followed by the hole that comes after it.
type segment struct {
	lit  []byte
	hole hole
}

// Template is a validated, precompiled stanza template. It is immutable
// and safe for concurrent use.
type Template struct {
	raw      []byte
	segs     []segment
	static   int // total literal bytes
	nInc     int
	onlyInTo bool
	// open is where the root's children start in the literal after the
	// recipient (segs[1].lit), for a multicast's <addresses/>; -1 when the
	// template cannot go out as a multicast.
	open int
}

// Raw returns the template as validated: the decoded bytes with the
// surrounding whitespace trimmed. The caller must not modify it.
func (t *Template) Raw() []byte { return t.raw }

// HasIncID reports whether the template contains [inc_id], i.e. whether
// recipients get different payloads beyond the JID.
func (t *Template) HasIncID() bool { return t.nInc > 0 }

// RecipientOnlyInTo reports whether %s appears exactly once, as the whole
// value of the root's `to` attribute, and there is no [inc_id]: then every
// recipient gets the same payload and the stanza can go out as one XEP-0033
// multicast instead of one copy per recipient.
func (t *Template) RecipientOnlyInTo() bool { return t.onlyInTo }

// NSAddress is XEP-0033's namespace.
const NSAddress = "http://jabber.org/protocol/address"

// Multicast reports whether the template can go out as one XEP-0033
// multicast for many recipients: a <message> (with children) whose only
// placeholder is the whole `to`.
func (t *Template) Multicast() bool { return t.open >= 0 }

// From returns the root's `from` attribute as ejabberd reads it (entities
// decoded, placeholders left as they are), or "" when it is absent or
// empty. A multicast's errors go to this address.
func (t *Template) From() string {
	// Parse validated raw, and it begins with the root's start tag: only
	// that tag is read.
	tok, err := xml.NewDecoder(bytes.NewReader(t.raw)).RawToken()
	if se, ok := tok.(xml.StartElement); ok && err == nil {
		for _, a := range se.Attr {
			if a.Name.Space == "" && a.Name.Local == "from" {
				return a.Value
			}
		}
	}
	return ""
}

// AppendMulticastHead starts a multicast of the template: the root start
// tag addressed to service (the multicast service's JID), then the opening
// of its <addresses/> block. Append each recipient with AppendBcc, then
// close with AppendMulticastTail. Only for templates where Multicast holds.
func (t *Template) AppendMulticastHead(dst []byte, service string) []byte {
	dst = append(dst, t.segs[0].lit...)
	dst = AppendEscaped(dst, service)
	dst = append(dst, t.segs[1].lit[:t.open]...)
	return append(dst, "<addresses xmlns='"+NSAddress+"'>"...)
}

// AppendBcc appends one blind-copy recipient of a multicast.
func AppendBcc(dst []byte, jid string) []byte {
	dst = append(dst, "<address type='bcc' jid='"...)
	dst = AppendEscaped(dst, jid)
	return append(dst, "'/>"...)
}

// AppendMulticastTail closes the <addresses/> block and the rest of the template.
func (t *Template) AppendMulticastTail(dst []byte) []byte {
	dst = append(dst, "</addresses>"...)
	return append(dst, t.segs[1].lit[t.open:]...)
}

// AppendRender appends the stanza for one recipient: the first %s becomes
// the XML-escaped jid, every [inc_id] the decimal incID. It does not
// allocate when dst has capacity. The output is well-formed for any jid
// string (escaping makes even invalid input inert); pass JIDs from
// AppendJID/NormalizeJID so the recipient is also meaningful. jid is only
// read during the call, so it may view a reused scratch buffer.
func (t *Template) AppendRender(dst []byte, jid string, incID uint64) []byte {
	dst = slices.Grow(dst, t.static+len(jid)+t.nInc*20)
	var num [20]byte
	var digits []byte
	if t.nInc > 0 {
		digits = strconv.AppendUint(num[:0], incID, 10)
	}
	for i := range t.segs {
		s := &t.segs[i]
		dst = append(dst, s.lit...)
		switch s.hole {
		case holeJID:
			dst = AppendEscaped(dst, jid)
		case holeIncID:
			dst = append(dst, digits...)
		}
	}
	return dst
}

// isXMLSpace is the XML S production; unicode spaces are not markup-neutral.
func isXMLSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r' || c == '\n'
}

// Parse validates the decoded template and precompiles it. Every rejection
// of the template is a *ValidationError with Field "message" whose Reason
// says what to fix; invalid options (see Options.Validate) give a plain
// error instead. See the package documentation for the rules.
func Parse(raw []byte, opt Options) (*Template, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	limit := opt.MaxBytes
	if limit <= 0 {
		limit = DefaultMaxBytes
	}
	if len(raw) > limit {
		return nil, messageErr("template is %d bytes, the limit is %d", len(raw), limit)
	}
	start, end := 0, len(raw)
	for start < end && isXMLSpace(raw[start]) {
		start++
	}
	for end > start && isXMLSpace(raw[end-1]) {
		end--
	}
	if start == end {
		return nil, messageErr("template is empty")
	}
	src := bytes.Clone(raw[start:end])
	if !utf8.Valid(src) {
		return nil, messageErr("template is not valid UTF-8")
	}
	jidAt := bytes.Index(src, []byte(PlaceholderJID))
	if jidAt < 0 {
		return nil, messageErr("template has no %s placeholder for the recipient JID", PlaceholderJID)
	}

	phs := findPlaceholders(src, jidAt)
	sc := newScanner(src, start, phs)
	if err := sc.run(); err != nil {
		return nil, err
	}

	t := &Template{raw: src}
	prev := 0
	for _, p := range phs {
		t.segs = append(t.segs, segment{lit: src[prev:p.pos:p.pos], hole: p.kind})
		t.static += p.pos - prev
		if p.kind == holeIncID {
			t.nInc++
		}
		prev = p.end()
	}
	t.segs = append(t.segs, segment{lit: src[prev:len(src):len(src)]})
	t.static += len(src) - prev

	// Second opinion from encoding/xml on a rendered sample: it checks
	// names, character ranges and entity syntax the scanner leaves alone.
	root, err := checkXML(t.AppendRender(nil, sampleJID, 0))
	if err != nil {
		return nil, err
	}
	switch root.Name.Local {
	case "message", "presence", "iq":
	default:
		return nil, messageErr("root element is <%s>; want message, presence or iq", Clip(root.Name.Local))
	}

	switch {
	case opt.ComponentDomain != "":
		if err := checkComponent(sc, root.Attr, opt.ComponentDomain, opt.AnyFrom); err != nil {
			return nil, err
		}
	case opt.ClientJID != "":
		bare, err := checkClient(sc, root.Attr, opt.ClientJID)
		if err != nil {
			return nil, err
		}
		if bare != "" {
			// c2s refuses a from whose resource is not the session's own, and
			// the sender's resources are its own, one per connection: a
			// first-generation from='account/resource' (its one session's
			// resource) goes out as the bare account, which c2s completes.
			from, _ := sc.rootAttr("from")
			fixed := append(AppendEscaped(bytes.Clone(src[:from.start]), bare), src[from.end:]...)
			return Parse(fixed, opt)
		}
	}

	t.open = -1
	if to, ok := sc.rootAttr("to"); ok && t.nInc == 0 &&
		bytes.Count(src, []byte(PlaceholderJID)) == 1 &&
		to.start == jidAt && to.end == jidAt+len(PlaceholderJID) {
		t.onlyInTo = true
		if !sc.rootEmpty && root.Name.Local == "message" {
			t.open = sc.rootOpen - (jidAt + len(PlaceholderJID))
		}
	}
	return t, nil
}

// checkComponent enforces what ejabberd's check_from does on a XEP-0114
// stream: a missing or foreign `from`, or a missing `to`, closes the
// connection for every stanza queued behind this one.
func checkComponent(sc *scanner, attrs []xmlAttr, domain string, anyFrom bool) error {
	fromSpan, ok := sc.rootAttr("from")
	if !ok {
		return messageErr("component mode: the root element needs a from attribute in %q", Clip(domain))
	}
	if _, ok := sc.rootAttr("to"); !ok {
		return messageErr("component mode: the root element needs a to attribute (ejabberd closes the stream without one)")
	}
	if sc.hasPlaceholderIn(fromSpan.start, fromSpan.end) {
		return messageErr("component mode: the root's from attribute must not contain placeholders")
	}
	from := attrByName(attrs, "from")
	d, reason := jidDomain(from)
	if reason != "" {
		return messageErr("component mode: from %q is not a valid JID: %s", Clip(from), reason)
	}
	if !anyFrom && !strings.EqualFold(d, domain) {
		return messageErr("component mode: from %q is not in the component domain %q "+
			"(an ejabberd listener with check_from: false accepts it: say so with [component] check_from = false)", Clip(from), Clip(domain))
	}
	return nil
}

// checkClient enforces what ejabberd's c2s does with `from`: anything but
// the session's own account, bare or with the session's own resource,
// closes the stream (invalid-from) for every stanza queued behind this one.
// An absent or empty from is stamped by the server, and c2s needs no `to`.
// It returns the bare account when from names it with a resource, which
// the template must then carry instead.
func checkClient(sc *scanner, attrs []xmlAttr, account string) (bare string, err error) {
	fromSpan, ok := sc.rootAttr("from")
	if !ok {
		return "", nil
	}
	if sc.hasPlaceholderIn(fromSpan.start, fromSpan.end) {
		return "", messageErr("client mode: the root's from attribute must not contain placeholders; drop it or set it to %q", Clip(account))
	}
	// The decoded value, as ejabberd sees it: entities are expanded.
	from := attrByName(attrs, "from")
	if from == "" {
		return "", nil
	}
	if _, reason := jidDomain(from); reason != "" {
		return "", messageErr("client mode: from %q is not a valid JID: %s", Clip(from), reason)
	}
	bare, _, hasResource := strings.Cut(from, "/")
	if !equalFoldASCII(bare, account) {
		return "", messageErr("client mode: from %q is not the sending account %q (ejabberd closes the stream for any other from); drop the attribute or set it to the account", Clip(from), Clip(account))
	}
	if !hasResource {
		return "", nil
	}
	return bare, nil
}

// attrByName returns the decoded value of the unprefixed attribute local, or
// "" when there is none (checkXML has ruled out duplicates).
func attrByName(attrs []xmlAttr, local string) string {
	for _, a := range attrs {
		if a.Name.Space == "" && a.Name.Local == local {
			return a.Value
		}
	}
	return ""
}

type placeholder struct {
	pos  int
	kind hole
}

func (p placeholder) end() int {
	if p.kind == holeJID {
		return p.pos + len(PlaceholderJID)
	}
	return p.pos + len(PlaceholderIncID)
}

// findPlaceholders lists the first %s and every [inc_id] in order. The two
// patterns cannot overlap ('%' and '[' start them and appear in neither's
// tail), so the list is a clean partition of src.
func findPlaceholders(src []byte, jidAt int) []placeholder {
	var phs []placeholder
	inserted := false
	for off := 0; ; {
		i := bytes.Index(src[off:], []byte(PlaceholderIncID))
		if i < 0 {
			break
		}
		i += off
		if !inserted && jidAt < i {
			phs = append(phs, placeholder{jidAt, holeJID})
			inserted = true
		}
		phs = append(phs, placeholder{i, holeIncID})
		off = i + len(PlaceholderIncID)
	}
	if !inserted {
		phs = append(phs, placeholder{jidAt, holeJID})
	}
	return phs
}

// Clip keeps error messages bounded when input is hostile: at most 64 bytes,
// cut at a rune boundary, with "…" when cut.
func Clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
