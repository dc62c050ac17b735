package apiclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// State is where an announcement is in its life.
type State string

// The states of the API document.
const (
	StateAccepted  State = "accepted"
	StateResolving State = "resolving"
	StateSending   State = "sending"
	StateDone      State = "done"
	StateCancelled State = "cancelled"
	StateRejected  State = "rejected"
	StateFailed    State = "failed"
)

// States lists every state the API document names, in life order.
var States = []State{StateAccepted, StateResolving, StateSending, StateDone, StateCancelled, StateRejected, StateFailed}

// Terminal reports whether s is final. A state this client does not know is
// not: following it keeps polling rather than stopping on a guess.
func (s State) Terminal() bool {
	switch s {
	case StateDone, StateCancelled, StateRejected, StateFailed:
		return true
	}
	return false
}

// Kinds of announcement.
const (
	KindChannel   = "channel"
	KindAllOnline = "all_online"
	KindUsers     = "users"
)

// Announcement is what GET /v1/announcements/{id} answers.
type Announcement struct {
	ID        string     `json:"id"`
	State     State      `json:"state"`
	Reason    string     `json:"reason,omitempty"`
	Kind      string     `json:"kind,omitempty"`
	ChannelID *ChannelID `json:"channel_id,omitempty"`
	Priority  string     `json:"priority,omitempty"`
	DryRun    bool       `json:"dry_run"`
	Persist   bool       `json:"persist"`
	Source    string     `json:"source,omitempty"`
	Audience  Audience   `json:"audience"`
	Batches   Batches    `json:"batches"`
	Stanzas   Stanzas    `json:"stanzas"`
	Shards    Shards     `json:"shards"`
	Times     Times      `json:"times"`

	// Raw is the JSON as the server sent it (Get and Cancel fill it), for --json.
	Raw json.RawMessage `json:"-"`
}

// Audience is who the announcement reaches. Final once Times.Resolved is set;
// before that it counts what was resolved so far.
type Audience struct {
	Members    int64            `json:"members"`
	Online     int64            `json:"online"`
	Recipients int64            `json:"recipients"`
	PerNode    map[string]int64 `json:"per_node,omitempty"`
}

// Batches counts delivery batches.
type Batches struct {
	Planned int64 `json:"planned"`
	Emitted int64 `json:"emitted"`
	Done    int64 `json:"done"`
	Resent  int64 `json:"resent"`
}

// Stanzas counts stanzas.
type Stanzas struct {
	Sent         int64 `json:"sent"`
	Confirmed    int64 `json:"confirmed"`
	DeadLettered int64 `json:"dead_lettered"`
	Persisted    int64 `json:"persisted"`
	Invalid      int64 `json:"invalid"` // not valid JIDs: skipped, never sent
}

// Shards counts the channel shards resolved.
type Shards struct {
	Total int64 `json:"total"`
	Done  int64 `json:"done"`
}

// Times are when each stage was reached; a zero time is a stage not reached.
type Times struct {
	Accepted  time.Time `json:"accepted,omitzero"`
	Resolving time.Time `json:"resolving,omitzero"`
	Sending   time.Time `json:"sending,omitzero"`
	Resolved  time.Time `json:"resolved,omitzero"`
	Done      time.Time `json:"done,omitzero"`
	Cancelled time.Time `json:"cancelled,omitzero"`
}

// Resolved reports whether the audience and the planned batches are final.
func (a *Announcement) Resolved() bool { return !a.Times.Resolved.IsZero() }

// Progress is how many recipients are settled (confirmed, dead-lettered, or
// skipped as invalid) out of how many: an announcement is done when every
// recipient is settled, so a skipped one must count or the bar never fills.
func (a *Announcement) Progress() (settled, total int64) {
	return a.Stanzas.Confirmed + a.Stanzas.DeadLettered + a.Stanzas.Invalid, a.Audience.Recipients
}

// DecodeAnnouncement parses and checks one Announcement from the server. What
// the server sends is checked as input: a missing id or state, or a negative
// count, is an error rather than something to display.
func DecodeAnnouncement(data []byte) (*Announcement, error) {
	var a Announcement
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("decoding announcement: %w", err)
	}
	if err := a.check(); err != nil {
		return nil, fmt.Errorf("decoding announcement: %w", err)
	}
	a.Raw = bytes.TrimSpace(data)
	return &a, nil
}

func (a *Announcement) check() error {
	if a.ID == "" {
		return errors.New(`no "id"`)
	}
	if a.State == "" {
		return errors.New(`no "state"`)
	}
	counts := []struct {
		name string
		n    int64
	}{
		{"audience.members", a.Audience.Members}, {"audience.online", a.Audience.Online},
		{"audience.recipients", a.Audience.Recipients},
		{"batches.planned", a.Batches.Planned}, {"batches.emitted", a.Batches.Emitted},
		{"batches.done", a.Batches.Done}, {"batches.resent", a.Batches.Resent},
		{"stanzas.sent", a.Stanzas.Sent}, {"stanzas.confirmed", a.Stanzas.Confirmed},
		{"stanzas.dead_lettered", a.Stanzas.DeadLettered}, {"stanzas.persisted", a.Stanzas.Persisted},
		{"stanzas.invalid", a.Stanzas.Invalid},
		{"shards.total", a.Shards.Total}, {"shards.done", a.Shards.Done},
	}
	for _, c := range counts {
		if c.n < 0 {
			return fmt.Errorf("%s is negative (%d)", c.name, c.n)
		}
	}
	for node, n := range a.Audience.PerNode {
		if n < 0 {
			return fmt.Errorf("audience.per_node[%q] is negative (%d)", node, n)
		}
	}
	// Settled can then overflow only past 2^63, which no audience reaches;
	// refusing it keeps Progress meaningful.
	if a.Stanzas.Confirmed > (1<<63-1)-a.Stanzas.DeadLettered-a.Stanzas.Invalid || a.Stanzas.DeadLettered > (1<<63-1)-a.Stanzas.Invalid {
		return errors.New("stanza counts overflow")
	}
	return nil
}

// ChannelID is a channel's id as the API spells it: a JSON integer, or a JSON
// string for a channel's string id. The zero value is the integer 0.
type ChannelID struct {
	num   int64
	str   string
	isStr bool
}

// NumericChannel is a channel by its numeric id; -1 means every online user.
func NumericChannel(id int64) ChannelID { return ChannelID{num: id} }

// NamedChannel is a channel by its string id.
func NamedChannel(id string) ChannelID { return ChannelID{str: id, isStr: true} }

// ParseChannelID is the id an operator typed: an integer if it parses as one,
// else a string id.
func ParseChannelID(s string) ChannelID {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return NumericChannel(n)
	}
	return NamedChannel(s)
}

// String is the id as typed: digits, or the string id unquoted.
func (c ChannelID) String() string {
	if c.isStr {
		return c.str
	}
	return strconv.FormatInt(c.num, 10)
}

// IsString reports whether the id is a string id.
func (c ChannelID) IsString() bool { return c.isStr }

func (c ChannelID) MarshalJSON() ([]byte, error) {
	if c.isStr {
		return json.Marshal(c.str)
	}
	return strconv.AppendInt(nil, c.num, 10), nil
}

func (c *ChannelID) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("channel_id: %w", err)
		}
		*c = NamedChannel(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return errors.New("channel_id: want a number or a string")
	}
	id, err := n.Int64()
	if err != nil {
		return fmt.Errorf("channel_id: want an integer: %w", err)
	}
	*c = NumericChannel(id)
	return nil
}
