package stanza

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"strings"
)

type xmlAttr = xml.Attr

const (
	nsXML     = "http://www.w3.org/XML/1998/namespace"
	nsXMLNS   = "http://www.w3.org/2000/xmlns/"
	nsStreams = "http://etherx.jabber.org/streams"
)

type span struct{ start, end int }

type rawAttr struct {
	name []byte
	val  span // raw value bytes, between the quotes
}

// scanner is a strict lexer for the restricted XML of XMPP stanzas. It runs
// on the raw template and treats placeholders as atomic, inert text, which
// is what lets it prove where each placeholder sits; encoding/xml can only
// see a rendered sample, where the placeholders are gone.
type scanner struct {
	src   []byte
	base  int // offset of src in the caller's input, for error positions
	pos   int
	phs   []placeholder
	marks []hole // marks[i] = placeholder starting at i; nil when there are none

	rootAttrs []rawAttr
	// rootOpen is the offset just past the root's start tag; rootEmpty says
	// it was self-closing ("/>").
	rootOpen  int
	rootEmpty bool
}

func newScanner(src []byte, base int, phs []placeholder) *scanner {
	s := &scanner{src: src, base: base, phs: phs}
	if len(phs) > 0 {
		s.marks = make([]hole, len(src))
		for _, p := range phs {
			s.marks[p.pos] = p.kind
		}
	}
	return s
}

func (s *scanner) at(i int) hole {
	if s.marks == nil {
		return holeNone
	}
	return s.marks[i]
}

func phLen(h hole) int {
	if h == holeJID {
		return len(PlaceholderJID)
	}
	return len(PlaceholderIncID)
}

// fail reports a syntax error at the current position; when that position
// is a placeholder the real mistake is the placeholder's location, so say so.
func (s *scanner) fail(reason string) error {
	for _, p := range s.phs {
		if p.pos <= s.pos && s.pos < p.end() {
			if p.kind == holeJID {
				return s.failAt(p.pos, PlaceholderJID+" must be inside an attribute value or text content")
			}
			return s.failAt(p.pos, PlaceholderIncID+" must be inside an attribute value, text content or CDATA")
		}
	}
	return s.failAt(s.pos, reason)
}

func (s *scanner) failAt(pos int, reason string) error {
	return messageErr("%s (at byte %d)", reason, pos+s.base)
}

func (s *scanner) rootAttr(name string) (span, bool) {
	for _, a := range s.rootAttrs {
		if string(a.name) == name {
			return a.val, true
		}
	}
	return span{}, false
}

func (s *scanner) hasPlaceholderIn(start, end int) bool {
	for _, p := range s.phs {
		if p.pos >= start && p.pos < end {
			return true
		}
	}
	return false
}

func (s *scanner) skipSpace() bool {
	start := s.pos
	for s.pos < len(s.src) && isXMLSpace(s.src[s.pos]) {
		s.pos++
	}
	return s.pos > start
}

// Name bytes as encoding/xml's readName delimits them; encoding/xml then
// checks the Unicode classes of the non-ASCII ones.
func isNameStart(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '_' || c == ':' || c >= 0x80
}

func isNameByte(c byte) bool {
	return isNameStart(c) || '0' <= c && c <= '9' || c == '.' || c == '-'
}

func (s *scanner) name() ([]byte, error) {
	start := s.pos
	if s.pos >= len(s.src) || !isNameStart(s.src[s.pos]) {
		return nil, s.fail("expected a name")
	}
	for s.pos < len(s.src) && isNameByte(s.src[s.pos]) {
		s.pos++
	}
	return s.src[start:s.pos], nil
}

func (s *scanner) run() error {
	src := s.src
	if bytes.HasPrefix(src, []byte("\uFEFF")) {
		return s.fail("byte order mark is not allowed: the stanza goes into an open stream")
	}
	var stack [][]byte
	rootDone := false
	for s.pos < len(src) {
		if rootDone {
			s.skipSpace()
			if s.pos == len(src) {
				break
			}
			if src[s.pos] != '<' {
				return s.fail("text after the root element")
			}
			if s.pos+1 < len(src) && isNameStart(src[s.pos+1]) {
				return s.fail("more than one root element: a template is exactly one stanza")
			}
		}
		if src[s.pos] != '<' {
			if len(stack) == 0 {
				return s.fail("text before the root element")
			}
			if err := s.text(); err != nil {
				return err
			}
			continue
		}
		rest := src[s.pos:]
		switch {
		case bytes.HasPrefix(rest, []byte("</")):
			if len(stack) == 0 {
				return s.fail("end tag without a start tag")
			}
			s.pos += 2
			name, err := s.name()
			if err != nil {
				return err
			}
			s.skipSpace()
			if s.pos >= len(src) || src[s.pos] != '>' {
				return s.fail("expected '>' to end the end tag")
			}
			s.pos++
			top := stack[len(stack)-1]
			if !bytes.Equal(name, top) {
				return s.fail(fmt.Sprintf("end tag </%s> does not match <%s>", Clip(string(name)), Clip(string(top))))
			}
			stack = stack[:len(stack)-1]
			rootDone = len(stack) == 0
		case bytes.HasPrefix(rest, []byte("<!--")):
			return s.fail("comments are not allowed in stanzas (RFC 6120 §11.1)")
		case bytes.HasPrefix(rest, []byte("<![CDATA[")):
			if len(stack) == 0 {
				return s.fail("CDATA section outside the root element")
			}
			if err := s.cdata(); err != nil {
				return err
			}
		case bytes.HasPrefix(rest, []byte("<!")):
			return s.fail("DOCTYPE and markup declarations are not allowed in stanzas (RFC 6120 §11.1)")
		case bytes.HasPrefix(rest, []byte("<?xml")) && len(rest) > 5 && (isXMLSpace(rest[5]) || rest[5] == '?'):
			return s.fail("XML declaration is not allowed: the stanza is sent inside an already open stream")
		case bytes.HasPrefix(rest, []byte("<?")):
			return s.fail("processing instructions are not allowed in stanzas (RFC 6120 §11.1)")
		default:
			s.pos++
			name, err := s.name()
			if err != nil {
				return err
			}
			root := len(stack) == 0
			selfClosing, err := s.attributes(root)
			if err != nil {
				return err
			}
			if root {
				s.rootOpen, s.rootEmpty = s.pos, selfClosing
			}
			if !selfClosing {
				stack = append(stack, name)
			} else if root {
				rootDone = true
			}
		}
	}
	if len(stack) > 0 {
		return s.fail(fmt.Sprintf("element <%s> is not closed", Clip(string(stack[len(stack)-1]))))
	}
	if !rootDone {
		return s.fail("no root element")
	}
	return nil
}

func (s *scanner) attributes(root bool) (selfClosing bool, err error) {
	src := s.src
	for {
		hadSpace := s.skipSpace()
		if s.pos >= len(src) {
			return false, s.fail("unexpected end inside a start tag")
		}
		switch c := src[s.pos]; {
		case c == '>':
			s.pos++
			return false, nil
		case c == '/':
			if s.pos+1 < len(src) && src[s.pos+1] == '>' {
				s.pos += 2
				return true, nil
			}
			return false, s.fail("expected '/>'")
		case !hadSpace:
			return false, s.fail("expected whitespace, '>' or '/>' in a start tag")
		}
		name, err := s.name()
		if err != nil {
			return false, err
		}
		s.skipSpace()
		if s.pos >= len(src) || src[s.pos] != '=' {
			return false, s.fail("expected '=' after an attribute name")
		}
		s.pos++
		s.skipSpace()
		if s.pos >= len(src) || src[s.pos] != '"' && src[s.pos] != '\'' {
			return false, s.fail("attribute values must be quoted")
		}
		q := src[s.pos]
		s.pos++
		start := s.pos
		if err := s.attrValue(q); err != nil {
			return false, err
		}
		if isNSDecl(name) && s.hasPlaceholderIn(start, s.pos) {
			// A recipient-dependent namespace is meaningless, and an empty
			// or reserved value would make the stanza ill-formed.
			return false, s.failAt(start, "placeholders are not allowed in namespace declarations")
		}
		if root {
			s.rootAttrs = append(s.rootAttrs, rawAttr{name: name, val: span{start, s.pos}})
		}
		s.pos++ // closing quote
	}
}

func isNSDecl(name []byte) bool {
	return string(name) == "xmlns" || bytes.HasPrefix(name, []byte("xmlns:"))
}

func (s *scanner) attrValue(q byte) error {
	src := s.src
	for {
		if s.pos >= len(src) {
			return s.fail("unterminated attribute value")
		}
		if h := s.at(s.pos); h != holeNone {
			s.pos += phLen(h)
			continue
		}
		switch src[s.pos] {
		case q:
			return nil
		case '<':
			return s.fail("'<' must be escaped as &lt; in attribute values")
		case '&':
			if err := s.ref(); err != nil {
				return err
			}
			continue
		}
		s.pos++
	}
}

// text scans character data up to the next '<'. "]]>" is forbidden there
// (expat rejects it). Placeholders end a run of ']': digits never contain
// one, and the JID case is closed off by refusing '>' or ']' right after
// %s (the JID escapes its own '>', so only template bytes could finish it).
func (s *scanner) text() error {
	src := s.src
	brackets := 0
	for s.pos < len(src) {
		if h := s.at(s.pos); h != holeNone {
			if h == holeJID {
				if after := s.pos + len(PlaceholderJID); after < len(src) && (src[after] == '>' || src[after] == ']') {
					return s.failAt(after, "in text content "+PlaceholderJID+" must not be followed by '>' or ']': a JID ending in \"]]\" would form \"]]>\" (escape it as &gt; or &#93;)")
				}
			}
			s.pos += phLen(h)
			brackets = 0
			continue
		}
		switch src[s.pos] {
		case '<':
			return nil
		case '&':
			if err := s.ref(); err != nil {
				return err
			}
			brackets = 0
			continue
		case ']':
			brackets++
		case '>':
			if brackets >= 2 {
				return s.fail("\"]]>\" is not allowed in text content")
			}
			brackets = 0
		default:
			brackets = 0
		}
		s.pos++
	}
	return nil
}

// cdata skips a CDATA section. Its end is searched placeholder-aware so a
// "[inc_id]" followed by "]>" is not mistaken for the terminator.
func (s *scanner) cdata() error {
	src := s.src
	open := s.pos
	s.pos += len("<![CDATA[")
	brackets := 0
	for s.pos < len(src) {
		if h := s.at(s.pos); h != holeNone {
			if h == holeJID {
				return s.failAt(s.pos, PlaceholderJID+" must not be inside a CDATA section: the escaped JID would show literally")
			}
			s.pos += phLen(h)
			brackets = 0
			continue
		}
		switch src[s.pos] {
		case ']':
			brackets++
		case '>':
			if brackets >= 2 {
				s.pos++
				return nil
			}
			brackets = 0
		default:
			brackets = 0
		}
		s.pos++
	}
	return s.failAt(open, "unterminated CDATA section")
}

// ref checks an entity or character reference: RFC 6120 allows only the
// predefined entities, and a reference to a non-character breaks expat.
func (s *scanner) ref() error {
	src := s.src
	start := s.pos
	s.pos++ // '&'
	if s.pos < len(src) && src[s.pos] == '#' {
		s.pos++
		base := uint64(10)
		if s.pos < len(src) && src[s.pos] == 'x' {
			base = 16
			s.pos++
		}
		var v uint64
		n := 0
		for ; s.pos < len(src); s.pos++ {
			d := digitVal(src[s.pos])
			if d >= base {
				break
			}
			if v <= 0x10FFFF {
				v = v*base + d
			}
			n++
		}
		if n == 0 || s.pos >= len(src) || src[s.pos] != ';' {
			return s.fail("malformed character reference")
		}
		s.pos++
		if v > 0x10FFFF || !isXMLChar(rune(v)) {
			return s.failAt(start, fmt.Sprintf("character reference %q is not an XML character", src[start:s.pos]))
		}
		return nil
	}
	nameStart := s.pos
	if s.pos >= len(src) || !isNameStart(src[s.pos]) {
		return s.fail("'&' must be escaped as &amp;")
	}
	for s.pos < len(src) && isNameByte(src[s.pos]) {
		s.pos++
	}
	if s.pos >= len(src) || src[s.pos] != ';' {
		return s.fail("'&' must be escaped as &amp; (or the entity reference lacks ';')")
	}
	name := string(src[nameStart:s.pos])
	s.pos++
	switch name {
	case "lt", "gt", "amp", "apos", "quot":
		return nil
	}
	return s.failAt(start, fmt.Sprintf("unknown entity &%s; (only lt, gt, amp, apos and quot are allowed)", Clip(name)))
}

func digitVal(c byte) uint64 {
	switch {
	case '0' <= c && c <= '9':
		return uint64(c - '0')
	case 'a' <= c && c <= 'f':
		return uint64(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return uint64(c-'A') + 10
	}
	return 99
}

// isXMLChar is the Char production of XML 1.0.
func isXMLChar(r rune) bool {
	return r == 0x09 || r == 0x0A || r == 0x0D ||
		r >= 0x20 && r <= 0xD7FF ||
		r >= 0xE000 && r <= 0xFFFD ||
		r >= 0x10000 && r <= 0x10FFFF
}

// checkXML runs encoding/xml over a complete document and adds the
// namespace rules expat enforces and encoding/xml does not (unbound
// prefixes, duplicate attributes). It returns the root start element.
func checkXML(doc []byte) (xml.StartElement, error) {
	type binding struct {
		prefix, uri string
		depth       int
	}
	var (
		root  xml.StartElement
		roots int
		stack []xml.Name
		scope []binding
		seen  = map[string]struct{}{}
	)
	uri := func(prefix string) (string, bool) {
		for i := len(scope) - 1; i >= 0; i-- {
			if scope[i].prefix == prefix {
				return scope[i].uri, true
			}
		}
		if prefix == "xml" {
			return nsXML, true
		}
		return "", false
	}
	d := xml.NewDecoder(bytes.NewReader(doc))
	for {
		tok, err := d.RawToken()
		if err == io.EOF {
			break
		}
		if err != nil {
			return root, messageErr("not well-formed XML: %v", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if len(stack) == 0 {
				roots++
				if roots > 1 {
					return root, messageErr("more than one root element: a template is exactly one stanza")
				}
				root = t.Copy()
			}
			stack = append(stack, t.Name)
			depth := len(stack)
			for _, a := range t.Attr {
				switch {
				case a.Name.Space == "" && a.Name.Local == "xmlns":
					if a.Value == nsXML || a.Value == nsXMLNS {
						return root, messageErr("the default namespace cannot be %q", a.Value)
					}
					scope = append(scope, binding{"", a.Value, depth})
				case a.Name.Space == "xmlns":
					switch {
					case a.Value == "":
						return root, messageErr("namespace prefix %q cannot be bound to the empty name", Clip(a.Name.Local))
					case a.Name.Local == "xmlns", a.Value == nsXMLNS:
						return root, messageErr("the xmlns prefix and namespace are reserved")
					case (a.Name.Local == "xml") != (a.Value == nsXML):
						return root, messageErr("the xml prefix and namespace are reserved to each other")
					}
					scope = append(scope, binding{a.Name.Local, a.Value, depth})
				}
			}
			if err := checkQName(t.Name); err != nil {
				return root, err
			}
			if t.Name.Space == "xmlns" {
				return root, messageErr("element <xmlns:%s> uses the reserved xmlns prefix", Clip(t.Name.Local))
			}
			if t.Name.Space != "" {
				if _, ok := uri(t.Name.Space); !ok {
					return root, messageErr("namespace prefix %q of <%s:%s> is not declared", Clip(t.Name.Space), Clip(t.Name.Space), Clip(t.Name.Local))
				}
			}
			// Readers that apply the stream rules at every depth (mellium's,
			// for one) take such an element for the stream's own: a copy,
			// or its bounce, could end a recipient's or the sender's
			// connection as a stream error.
			if u, _ := uri(t.Name.Space); u == nsStreams {
				return root, messageErr("element <%s> is in the XMPP streams namespace (%s), which only the stream itself may use", Clip(qname(t.Name)), nsStreams)
			}
			clear(seen)
			for _, a := range t.Attr {
				if err := checkQName(a.Name); err != nil {
					return root, err
				}
				key := "\x00" + a.Name.Local
				switch a.Name.Space {
				case "":
				case "xmlns":
					key = "xmlns\x00" + a.Name.Local
				default:
					u, ok := uri(a.Name.Space)
					if !ok {
						return root, messageErr("namespace prefix %q of attribute %s:%s is not declared", Clip(a.Name.Space), Clip(a.Name.Space), Clip(a.Name.Local))
					}
					key = u + "\x00" + a.Name.Local
				}
				if _, dup := seen[key]; dup {
					return root, messageErr("duplicate attribute %q on <%s>", Clip(qname(a.Name)), Clip(qname(t.Name)))
				}
				seen[key] = struct{}{}
			}
		case xml.EndElement:
			if len(stack) == 0 || stack[len(stack)-1] != t.Name {
				return root, messageErr("end tag </%s> does not match", Clip(qname(t.Name)))
			}
			depth := len(stack)
			for len(scope) > 0 && scope[len(scope)-1].depth == depth {
				scope = scope[:len(scope)-1]
			}
			stack = stack[:depth-1]
		case xml.CharData:
			if len(stack) == 0 && len(bytes.Trim(t, " \t\r\n")) > 0 {
				return root, messageErr("text outside the root element")
			}
		case xml.Comment:
			return root, messageErr("comments are not allowed in stanzas (RFC 6120 §11.1)")
		case xml.ProcInst:
			return root, messageErr("processing instructions and XML declarations are not allowed in stanzas")
		case xml.Directive:
			return root, messageErr("DOCTYPE and markup declarations are not allowed in stanzas (RFC 6120 §11.1)")
		}
	}
	if len(stack) > 0 {
		return root, messageErr("element <%s> is not closed", Clip(qname(stack[len(stack)-1])))
	}
	if roots == 0 {
		return root, messageErr("no root element")
	}
	return root, nil
}

// checkQName rejects what encoding/xml leaves as a colon inside Local:
// names like "a:" or ":a", which are not namespace-well-formed.
func checkQName(n xml.Name) error {
	if strings.Contains(n.Local, ":") {
		return messageErr("%q is not a valid qualified name", Clip(qname(n)))
	}
	return nil
}

func qname(n xml.Name) string {
	if n.Space == "" {
		return n.Local
	}
	return n.Space + ":" + n.Local
}

// wellFormed applies the template rules to a finished document (no
// placeholders); tests use it to check rendered output.
func wellFormed(doc []byte) error {
	if err := newScanner(doc, 0, nil).run(); err != nil {
		return err
	}
	_, err := checkXML(doc)
	return err
}
