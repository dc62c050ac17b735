package announce

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/stanza"
)

// Request is one decoded body: a channel body (Channel set) or a users body
// (Usernames set). It is what both transports hand to the use case.
type Request struct {
	Channel   *announcement.ChannelRef
	Usernames []string
	Message   string
	Persist   *bool   // nil = the body type's default (channel false, users true)
	Priority  *string // nil = the body type's default (channel normal, users high)
	DryRun    bool    // count the audience, send nothing
	Ignored   int     // fields of a Kafka input body that no body has (ignored, counted)
}

// channelBody and usersBody are the wire forms of the two REST bodies.
// Pointers tell "absent" (or null) from a zero value.
type channelBody struct {
	ChannelID *announcement.ChannelRef `json:"channel_id"`
	bodyFields
}

type usersBody struct {
	Usernames *[]string `json:"usernames"`
	bodyFields
}

// bodyFields are the fields every body has.
type bodyFields struct {
	Message  *string `json:"message"`
	Persist  *bool   `json:"persist"`
	Priority *string `json:"priority"`
	DryRun   *bool   `json:"dry_run"`
}

// Field names of the bodies, exactly as the API document spells them.
var (
	channelFields = []string{"channel_id", "message", "persist", "priority", "dry_run"}
	usersFields   = []string{"usernames", "message", "persist", "priority", "dry_run"}
	anyFields     = []string{"channel_id", "usernames", "message", "persist", "priority", "dry_run"}
)

// DecodeChannel parses a POST /v1/announce/channel body.
func DecodeChannel(body []byte) (Request, error) { return decode[channelBody](body, channelFields) }

// DecodeUsers parses a POST /v1/announce/users body.
func DecodeUsers(body []byte) (Request, error) { return decode[usersBody](body, usersFields) }

// Decode parses either body, as the Kafka input receives them: a body with
// channel_id is a channel body, one with usernames a users body. It reads a
// record as the first generation did (encoding/json's defaults), since its
// producers were written against that, and a record it refuses only reaches
// the dead-letter topic, never the producer: names match case-insensitively,
// unknown fields are ignored (counted in Request.Ignored), a key given twice
// takes its last value, and null or a "" channel_id means absent (what a
// struct without omitempty writes for the audience it does not use).
func Decode(body []byte) (Request, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return Request{}, invalid("body", "want a JSON object")
	}
	var b inputBody
	if err := json.Unmarshal(trimmed, &b); err != nil {
		return Request{}, jsonError(err)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &members); err != nil {
		return Request{}, jsonError(err)
	}
	ignored := 0
	for name := range members {
		if !slices.ContainsFunc(anyFields, func(f string) bool { return strings.EqualFold(f, name) }) {
			ignored++
		}
	}
	r, err := b.request()
	r.Ignored = ignored
	return r, err
}

// inputBody is a Kafka input record's body; see Decode.
type inputBody struct {
	ChannelID json.RawMessage `json:"channel_id"`
	Usernames []string        `json:"usernames"`
	bodyFields
}

func (b inputBody) request() (Request, error) {
	var channel *announcement.ChannelRef
	if id := string(b.ChannelID); id != "" && id != "null" && id != `""` {
		channel = new(announcement.ChannelRef)
		if err := json.Unmarshal(b.ChannelID, channel); err != nil {
			return Request{}, jsonError(err)
		}
	}
	switch {
	case channel != nil && len(b.Usernames) > 0:
		return Request{}, invalid("body", "has both channel_id and usernames; send one of them")
	case channel == nil && b.Usernames == nil:
		return Request{}, invalid("body", "has neither channel_id nor usernames")
	case channel != nil:
		return b.complete(Request{Channel: channel})
	}
	return b.complete(Request{Usernames: b.Usernames})
}

// decode parses a body of type B, whose only fields are fields, into a Request.
func decode[B interface{ request() (Request, error) }](body []byte, fields []string) (Request, error) {
	var b B
	if err := decodeStrict(body, &b, fields); err != nil {
		return Request{}, err
	}
	return b.request()
}

func (b channelBody) request() (Request, error) {
	if b.ChannelID == nil {
		return Request{}, invalid("channel_id", "required: the numeric channel id, its string id, or a negative number for every online user")
	}
	return b.complete(Request{Channel: b.ChannelID})
}

func (b usersBody) request() (Request, error) {
	if b.Usernames == nil {
		return Request{}, invalid("usernames", "required: a non-empty array of usernames")
	}
	return b.complete(Request{Usernames: nonNil(*b.Usernames)})
}

// complete checks the fields every body has and sets them on r, whose
// audience is set.
func (f bodyFields) complete(r Request) (Request, error) {
	if f.Message == nil {
		return Request{}, invalid("message", "required: the base64 of one XML stanza containing %s")
	}
	r.Message, r.Persist, r.Priority, r.DryRun = *f.Message, f.Persist, f.Priority, f.DryRun != nil && *f.DryRun
	return r, nil
}

// nonNil keeps "usernames": [] distinguishable from an absent field after decoding.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// decodeStrict decodes exactly one JSON object, rejecting unknown fields and
// trailing data, and turns encoding/json's errors into ones that name the field.
// Beyond encoding/json it holds the body to the API document: field names match
// exactly (not case-insensitively), none is given twice, and none is null.
func decodeStrict(body []byte, v any, fields []string) error {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return invalid("body", "empty; want a JSON object")
	}
	if trimmed[0] != '{' {
		return invalid("body", "want a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("body", "trailing data after the JSON object")
	}
	return checkFields(trimmed, fields)
}

// checkFields walks the top-level members of a well-formed object: encoding/json
// lets the last of two equal keys win, matches names case-insensitively and
// takes null for "absent", and the document allows none of that.
func checkFields(object []byte, fields []string) error {
	dec := json.NewDecoder(bytes.NewReader(object))
	if _, err := dec.Token(); err != nil { // {
		return invalid("body", "want a JSON object")
	}
	seen := make(map[string]bool, len(fields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return invalid("body", clipErr(err))
		}
		key, _ := tok.(string)
		if !slices.Contains(fields, key) {
			return invalid(stanza.Clip(key), "unknown field (names are case-sensitive)")
		}
		if seen[key] {
			return invalid(key, "given twice")
		}
		seen[key] = true
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return invalid(key, clipErr(err))
		}
		if string(value) == "null" {
			return invalid(key, "null; leave the field out instead")
		}
	}
	return nil
}

func clipErr(err error) string { return stanza.Clip(err.Error()) }

func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return invalid("body", fmt.Sprintf("malformed JSON at byte %d: %s", syn.Offset, syn.Error()))
	case errors.As(err, &typ):
		// The fields every body has are embedded: encoding/json names
		// them after their struct ("bodyFields.persist").
		field := strings.TrimPrefix(typ.Field, "bodyFields.")
		if field == "" {
			field = "body"
		}
		return invalid(field, fmt.Sprintf("want %s, got JSON %s", typ.Type, typ.Value))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("body", "truncated JSON")
	}
	msg := err.Error()
	// encoding/json has no typed error for unknown fields.
	if rest, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		if name := strings.Trim(rest, `"`); name != "" {
			return invalid(stanza.Clip(name), "unknown field")
		}
		return invalid("body", `unknown field ""`)
	}
	// Errors from ChannelRef.UnmarshalJSON arrive wrapped without a field name.
	if strings.Contains(msg, "channel id") {
		return invalid("channel_id", strings.TrimPrefix(msg, "channel id: "))
	}
	return invalid("body", stanza.Clip(msg))
}
