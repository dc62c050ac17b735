// Package announcement defines the messages the services exchange over Kafka:
// announcement events (ingress → fanout) and delivery batches (fanout → sender, archiver).
//
// Both are JSON. Decoding validates, because a Kafka payload is a trust boundary:
// anything that passes Decode* is safe for the next stage to act on.
package announcement

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Kind is the audience of an announcement.
type Kind string

const (
	KindChannel   Kind = "channel"    // online members of a channel
	KindAllOnline Kind = "all_online" // every online user
	KindUsers     Kind = "users"      // exactly the listed users, online or not
	KindShard     Kind = "channel_shard"
)

// ChannelRef is a channel by numeric id or by string id (ws_channel_data.channel_channelid).
// In JSON it is a number or a string, as in the REST body.
type ChannelRef struct {
	ID       int64
	StringID string
	IsString bool
}

func (c ChannelRef) MarshalJSON() ([]byte, error) {
	if c.IsString {
		// Unescaped like the records around it; json.Marshal callers still
		// get \u003c, because they re-escape what a Marshaler returns.
		return encodeJSON(c.StringID)
	}
	return strconv.AppendInt(nil, c.ID, 10), nil
}

func (c *ChannelRef) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		if s == "" {
			return errors.New("channel id: empty string")
		}
		*c = ChannelRef{StringID: s, IsString: true}
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("channel id: want a number or a string")
	}
	id, err := n.Int64()
	if err != nil {
		return fmt.Errorf("channel id: want an integer: %v", err)
	}
	*c = ChannelRef{ID: id}
	return nil
}

func (c ChannelRef) String() string {
	if c.IsString {
		return strconv.Quote(c.StringID)
	}
	return strconv.FormatInt(c.ID, 10)
}

// Shard is one member-id range of a giant channel: [FromMemberID, ToMemberID).
// ToMemberID 0 means "to the end" in the last shard (Index Count-1) only;
// in any other it is a real bound (ids that cross zero).
type Shard struct {
	ChannelID    int64 `json:"channel_id"`
	Index        int   `json:"index"`
	Count        int   `json:"count"`
	FromMemberID int64 `json:"from_member_id"`
	ToMemberID   int64 `json:"to_member_id"`
}

// Event is one accepted announcement, or one shard task of it.
type Event struct {
	ID        string      `json:"id"`
	Kind      Kind        `json:"kind"`
	Channel   *ChannelRef `json:"channel_id,omitempty"`
	Usernames []string    `json:"usernames,omitempty"`
	Template  string      `json:"template"` // decoded XML
	Persist   bool        `json:"persist"`
	CreatedAt time.Time   `json:"created_at"`
	Source    string      `json:"source"` // "rest" or "kafka:<topic>"
	Shard     *Shard      `json:"shard,omitempty"`
	// Priority is PriorityHigh for the priority lane ("" = normal).
	Priority string `json:"priority,omitempty"`
	// DryRun asks fanout to count the audience and send nothing. A reader
	// that ignored it would send, so such events carry version 2.
	DryRun bool `json:"dry_run,omitempty"`
	// Version is the version a reader must understand (Version when written
	// by this code; absent in records of earlier versions, meaning 1).
	Version int `json:"version,omitempty"`
}

// Batch is up to [fanout] batch_size recipients of one announcement on one node.
type Batch struct {
	AnnouncementID string    `json:"announcement_id"`
	Shard          int       `json:"shard"`
	Seq            int       `json:"seq"`
	Node           string    `json:"node"`
	Template       string    `json:"template"`
	Persist        bool      `json:"persist"`
	FirstIncID     uint64    `json:"first_inc_id"` // recipient i gets [inc_id] = FirstIncID + i
	Recipients     []string  `json:"recipients"`
	CreatedAt      time.Time `json:"created_at"`
	Priority       string    `json:"priority,omitempty"` // PriorityHigh: the priority lane
	Version        int       `json:"version,omitempty"`  // as Event.Version
}

// HeaderPersist repeats a delivery batch's persist flag ("1" or "0") in a
// record header, so the archiver passes over the batches it does not store
// without decoding them. The value's field stays the reference.
const HeaderPersist = "x-announcer-persist"

// Key spreads batches of one announcement over partitions (and so over sender replicas).
func (b *Batch) Key() []byte {
	return fmt.Appendf(nil, "%s/%d/%d", b.AnnouncementID, b.Shard, b.Seq)
}

// Version is the record version this code understands. Writers add fields
// without raising a record's version (readers ignore fields they do not
// know, so a rolling upgrade goes through); a record carries a higher
// version only when an older reader would act on it wrongly by ignoring a
// field: version 2 is a dry run, which a version-1 reader would send.
const Version = 2

// BatchVersion is the delivery batch version this code writes and understands.
const BatchVersion = 1

// Priorities of an event.
const (
	PriorityNormal = "normal"
	PriorityHigh   = "high"
)

// minVersion is the lowest version a reader of e must understand.
func (e *Event) minVersion() int {
	if e.DryRun {
		return 2
	}
	return 1
}

// Encode returns the JSON form: one JSON value, no trailing newline, '<',
// '>' and '&' left as they are (see encodeJSON), Version stamped.
func (e *Event) Encode() ([]byte, error) {
	c := *e
	if c.Version == 0 {
		c.Version = e.minVersion()
	}
	p, err := encodeJSON(&c)
	if err != nil {
		return nil, fmt.Errorf("announcement event: %w", err)
	}
	return p, nil
}

// Encode returns the JSON form, as Event.Encode does.
func (b *Batch) Encode() ([]byte, error) {
	c := *b
	if c.Version == 0 {
		c.Version = BatchVersion
	}
	p, err := encodeJSON(&c)
	if err != nil {
		return nil, fmt.Errorf("delivery batch: %w", err)
	}
	return p, nil
}

// encodeJSON is json.Marshal without HTML escaping: templates are XML, and
// six bytes for every '<' would bloat every record and make it unreadable
// in Kafka tools, while nothing embeds these records in HTML. Records
// written escaped by earlier versions decode to the same values.
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	// Encode ends the value with '\n' for streams; a record is one value.
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// MaxIDLen bounds announcement ids.
const MaxIDLen = 128

// DecodeEvent parses and checks an event. Fields it does not know are
// ignored (a newer writer's, during a rolling upgrade); Decoder counts them.
func DecodeEvent(p []byte) (Event, error) { return (*Decoder)(nil).Event(p) }

// Check reports what makes the event unusable.
func (e *Event) Check() error {
	errs := checkIDAndTemplate("id", e.ID, e.Template)
	if e.Priority != "" && e.Priority != PriorityNormal && e.Priority != PriorityHigh {
		errs = append(errs, fmt.Errorf("priority %q: want normal or high", e.Priority))
	}
	switch e.Kind {
	case KindChannel:
		if e.Channel == nil {
			errs = append(errs, errors.New("channel_id: missing"))
		} else if !e.Channel.IsString && e.Channel.ID < 0 {
			errs = append(errs, errors.New("channel_id: negative (that is kind all_online)"))
		}
	case KindAllOnline:
	case KindUsers:
		if len(e.Usernames) == 0 {
			errs = append(errs, errors.New("usernames: empty"))
		}
	case KindShard:
		if e.Shard == nil {
			errs = append(errs, errors.New("shard: missing"))
		} else if e.Shard.Index < 0 || e.Shard.Count < 1 || e.Shard.Index >= e.Shard.Count ||
			(e.Shard.ToMemberID != 0 && e.Shard.ToMemberID <= e.Shard.FromMemberID) {
			errs = append(errs, fmt.Errorf("shard: inconsistent %+v", *e.Shard))
		}
	default:
		errs = append(errs, fmt.Errorf("kind %q: unknown", e.Kind))
	}
	return joinErrors("announcement event", errs)
}

// DecodeBatch parses and checks a delivery batch, tolerantly as DecodeEvent.
func DecodeBatch(p []byte) (Batch, error) { return (*Decoder)(nil).Batch(p) }

// check reports what makes the batch unusable.
func (b *Batch) check() error {
	errs := checkIDAndTemplate("announcement_id", b.AnnouncementID, b.Template)
	if len(b.Recipients) == 0 {
		errs = append(errs, errors.New("recipients: empty"))
	}
	if b.Seq < 0 || b.Shard < 0 {
		errs = append(errs, errors.New("seq/shard: negative"))
	}
	return joinErrors("delivery batch", errs)
}

// checkIDAndTemplate checks what events and batches both carry: the
// announcement's id (in the record's field idField) and its template.
func checkIDAndTemplate(idField, id, template string) []error {
	var errs []error
	if id == "" || len(id) > MaxIDLen {
		errs = append(errs, fmt.Errorf("%s: want 1..%d bytes", idField, MaxIDLen))
	}
	if template == "" {
		errs = append(errs, errors.New("template: empty"))
	}
	return errs
}

// joinErrors is nil without errs, else one error naming the record.
func joinErrors(record string, errs []error) error {
	if len(errs) > 0 {
		return fmt.Errorf("%s: %w", record, errors.Join(errs...))
	}
	return nil
}
