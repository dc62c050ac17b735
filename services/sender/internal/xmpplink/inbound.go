package xmpplink

import (
	"encoding/xml"
)

// Namespaces the read side looks for.
const (
	nsStanzas = "urn:ietf:params:xml:ns:xmpp-stanzas"
	nsPing    = "urn:xmpp:ping"
)

// maxAttrLen bounds the attribute values the read side keeps (ids, JIDs):
// what ejabberd sends back is a trust boundary like any other input.
const maxAttrLen = 3071

// inbound is what the connection needs to know about one top-level element
// ejabberd sent: enough to correlate ping results, count errors and answer IQs.
type inbound struct {
	name      string // message, presence, iq or anything else
	typ       string
	id        string
	from, to  string
	errType   string // <error type=...>
	condition string // the defined condition inside <error>
	ping      bool   // an IQ carrying <ping xmlns='urn:xmpp:ping'/>
}

// readElement consumes the element that start opened, up to and including its
// end tag, and extracts the fields of inbound. It walks tokens instead of
// decoding into structs: a bounced stanza carries the whole original payload,
// and reflection over it would cost more than the send did.
func readElement(tr xml.TokenReader, start xml.StartElement) (inbound, error) {
	in := inbound{name: start.Name.Local}
	for _, a := range start.Attr {
		if a.Name.Space != "" {
			continue
		}
		switch a.Name.Local {
		case "type":
			in.typ = clip(a.Value)
		case "id":
			in.id = clip(a.Value)
		case "from":
			in.from = clip(a.Value)
		case "to":
			in.to = clip(a.Value)
		}
	}
	depth := 1
	// inside the stanza's own <error> (in a stanza namespace: an <error> of
	// another namespace is payload, like a stream error a user nested)
	inError := false
	for depth > 0 {
		tok, err := tr.Token()
		if err != nil {
			return in, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			switch {
			case depth == 2 && t.Name.Local == "error" && (t.Name.Space == start.Name.Space || stanzaNS(t.Name.Space)):
				inError = true
				for _, a := range t.Attr {
					if a.Name.Space == "" && a.Name.Local == "type" {
						in.errType = clip(a.Value)
					}
				}
			case depth == 2 && t.Name.Local == "ping" && t.Name.Space == nsPing:
				in.ping = true
			case depth == 3 && inError && in.condition == "" &&
				t.Name.Space == nsStanzas && t.Name.Local != "text":
				in.condition = clip(t.Name.Local)
			}
		case xml.EndElement:
			depth--
			if depth == 1 {
				inError = false
			}
		}
	}
	return in, nil
}

func clip(s string) string {
	if len(s) > maxAttrLen {
		return s[:maxAttrLen]
	}
	return s
}

// conditions are RFC 6120's stanza error conditions: the only values the
// errors metric's condition label takes, so a hostile peer cannot inflate it.
var conditions = map[string]bool{
	"bad-request": true, "conflict": true, "feature-not-implemented": true, "forbidden": true,
	"gone": true, "internal-server-error": true, "item-not-found": true, "jid-malformed": true,
	"not-acceptable": true, "not-allowed": true, "not-authorized": true, "policy-violation": true,
	"recipient-unavailable": true, "redirect": true, "registration-required": true,
	"remote-server-not-found": true, "remote-server-timeout": true, "resource-constraint": true,
	"service-unavailable": true, "subscription-required": true, "undefined-condition": true,
	"unexpected-request": true,
}

// conditionLabel maps an inbound condition onto the bounded label set.
func conditionLabel(c string) string {
	switch {
	case c == "":
		return "none"
	case conditions[c]:
		return c
	default:
		return "other"
	}
}

// kindLabel maps an element name onto the bounded label set.
func kindLabel(name string) string {
	switch name {
	case "message", "presence", "iq":
		return name
	default:
		return "other"
	}
}

// stanzaNS reports whether ns is a namespace stanzas are written in: a
// server may name the one it means on an element it adds (an error).
func stanzaNS(ns string) bool {
	return ns == "jabber:client" || ns == "jabber:server" || ns == "jabber:component:accept"
}
