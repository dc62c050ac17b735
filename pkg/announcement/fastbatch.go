package announcement

import (
	"encoding/json"
	"strconv"
)

// decodeBatchFast decodes a delivery batch of the shape this version writes
// in one pass, without encoding/json's scanner and reflection: every sender
// and archiver decodes each batch of a thousand recipients, and the general
// path spent about a quarter of a microsecond per recipient doing it.
//
// It takes only a strict subset of JSON: the known field names spelled as
// written, each value of its field's type, plain integers, nothing after the
// object. For anything else it reports ok == false and the caller decodes
// with encoding/json, which gives the verdict. So this path never accepts a
// record encoding/json refuses, nor decodes one differently (the fuzz test
// holds it to that).
func decodeBatchFast(p []byte) (b Batch, ok bool) {
	d := fastDecoder{p: p}
	if !d.byte('{') {
		return Batch{}, false
	}
	if !d.byte('}') {
		for {
			key, ok := d.str()
			if !ok || !d.byte(':') || !d.field(&b, key) {
				return Batch{}, false
			}
			if d.byte('}') {
				break
			}
			if !d.byte(',') {
				return Batch{}, false
			}
		}
	}
	d.space()
	if d.i != len(d.p) {
		return Batch{}, false
	}
	return b, true
}

type fastDecoder struct {
	p []byte
	i int
}

// space skips JSON white space.
func (d *fastDecoder) space() {
	for d.i < len(d.p) {
		switch d.p[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// byte skips white space and then c, reporting whether c was there.
func (d *fastDecoder) byte(c byte) bool {
	d.space()
	if d.i < len(d.p) && d.p[d.i] == c {
		d.i++
		return true
	}
	return false
}

// field decodes the value of key into b; false for a name it does not know.
func (d *fastDecoder) field(b *Batch, key string) bool {
	d.space()
	var ok bool
	switch key {
	case "announcement_id":
		b.AnnouncementID, ok = d.str()
	case "shard":
		b.Shard, ok = d.int()
	case "seq":
		b.Seq, ok = d.int()
	case "node":
		b.Node, ok = d.str()
	case "template":
		b.Template, ok = d.str()
	case "persist":
		b.Persist, ok = d.bool()
	case "first_inc_id":
		b.FirstIncID, ok = d.uint()
	case "recipients":
		b.Recipients, ok = d.strings()
	case "created_at":
		start := d.i
		if d.skipString() {
			// time.Time's own decoder, as encoding/json calls it.
			ok = b.CreatedAt.UnmarshalJSON(d.p[start:d.i]) == nil
		}
	case "priority":
		b.Priority, ok = d.str()
	case "version":
		b.Version, ok = d.int()
	}
	return ok
}

// skipString moves past a string token, escapes included, without decoding it.
func (d *fastDecoder) skipString() bool {
	if d.i >= len(d.p) || d.p[d.i] != '"' {
		return false
	}
	for j := d.i + 1; j < len(d.p); j++ {
		switch d.p[j] {
		case '\\':
			j++
		case '"':
			d.i = j + 1
			return true
		}
	}
	return false
}

// str decodes a string token. Printable ASCII without escapes is copied as
// it stands; a string with escapes, control or non-ASCII bytes is decoded by
// encoding/json (its handling of surrogates and invalid UTF-8 is the rule).
func (d *fastDecoder) str() (string, bool) { return d.strIn("", -1) }

// strIn is str, taking a plain string as a substring of whole, which holds
// d.p from offset base on, instead of copying it (base < 0: no whole).
func (d *fastDecoder) strIn(whole string, base int) (string, bool) {
	d.space()
	if d.i >= len(d.p) || d.p[d.i] != '"' {
		return "", false
	}
	start := d.i
	for j := start + 1; j < len(d.p); j++ {
		c := d.p[j]
		if c == '"' {
			d.i = j + 1
			if base >= 0 && start >= base && j-base <= len(whole) {
				return whole[start+1-base : j-base], true
			}
			return string(d.p[start+1 : j]), true
		}
		if c == '\\' || c < 0x20 || c >= 0x80 {
			if !d.skipString() {
				return "", false
			}
			var s string
			if json.Unmarshal(d.p[start:d.i], &s) != nil {
				return "", false
			}
			return s, true
		}
	}
	return "", false
}

// strings decodes an array of strings. Its plain strings are substrings of
// one copy of the array's bytes: a thousand recipients cost two allocations.
func (d *fastDecoder) strings() ([]string, bool) {
	if !d.byte('[') {
		return nil, false
	}
	// First the closing bracket (the first ']' outside a string) and the
	// number of strings; the second pass checks the structure.
	base, end, n, inString := d.i, -1, 0, false
	for j := base; j < len(d.p) && end < 0; j++ {
		switch c := d.p[j]; {
		case inString && c == '\\':
			j++
		case c == '"':
			inString = !inString
			if inString {
				n++
			}
		case !inString && c == ']':
			end = j
		}
	}
	if end < 0 {
		return nil, false
	}
	whole := string(d.p[base:end])
	out := make([]string, 0, n)
	if d.byte(']') {
		return out, true
	}
	for {
		s, ok := d.strIn(whole, base)
		if !ok {
			return nil, false
		}
		out = append(out, s)
		if d.byte(']') {
			return out, true
		}
		if !d.byte(',') {
			return nil, false
		}
	}
}

// int decodes a plain integer (no fraction or exponent) that fits an int.
func (d *fastDecoder) int() (int, bool) {
	lit, ok := d.integer(true)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseInt(lit, 10, strconv.IntSize)
	return int(v), err == nil
}

// uint decodes a plain non-negative integer that fits a uint64.
func (d *fastDecoder) uint() (uint64, bool) {
	lit, ok := d.integer(false)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseUint(lit, 10, 64)
	return v, err == nil
}

// integer returns the literal of a JSON integer: an optional minus (when
// signed), then 0 or a digit 1-9 followed by digits, and no '.', 'e' or 'E'.
func (d *fastDecoder) integer(signed bool) (string, bool) {
	start := d.i
	if signed && d.i < len(d.p) && d.p[d.i] == '-' {
		d.i++
	}
	digits := d.i
	for d.i < len(d.p) && d.p[d.i] >= '0' && d.p[d.i] <= '9' {
		d.i++
	}
	n := d.i - digits
	if n == 0 || (n > 1 && d.p[digits] == '0') {
		return "", false
	}
	if d.i < len(d.p) {
		switch d.p[d.i] {
		case '.', 'e', 'E':
			return "", false
		}
	}
	return string(d.p[start:d.i]), true
}

// bool decodes true or false.
func (d *fastDecoder) bool() (bool, bool) {
	rest := d.p[d.i:]
	switch {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		d.i += 4
		return true, true
	case len(rest) >= 5 && string(rest[:5]) == "false":
		d.i += 5
		return false, true
	}
	return false, false
}
