package progress

import (
	"encoding/json"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Announcement is one announcement as the API shows it.
type Announcement struct {
	ID        string          `json:"id"`
	State     string          `json:"state"`
	Reason    string          `json:"reason,omitempty"`
	Kind      string          `json:"kind,omitempty"`
	ChannelID json.RawMessage `json:"channel_id,omitempty"` // a number or a string, as posted
	Priority  string          `json:"priority,omitempty"`
	DryRun    bool            `json:"dry_run"`
	Persist   bool            `json:"persist"`
	Source    string          `json:"source,omitempty"`
	Audience  Audience        `json:"audience"`
	Batches   Batches         `json:"batches"`
	Stanzas   Stanzas         `json:"stanzas"`
	Shards    Shards          `json:"shards"`
	Times     Times           `json:"times"`
}

// Audience is what fanout resolved; final once Times.Resolved is set.
type Audience struct {
	Members    int64            `json:"members"`    // channel members read, users listed, online users scanned
	Online     int64            `json:"online"`     // of them online
	Recipients int64            `json:"recipients"` // put into batches: the stanzas to send
	PerNode    map[string]int64 `json:"per_node"`
}

// Batches are the delivery batches: planned once resolved, emitted (acknowledged
// by Kafka), done (fenced or dead-lettered), and resends after a lost connection.
type Batches struct {
	Planned int64 `json:"planned"`
	Emitted int64 `json:"emitted"`
	Done    int64 `json:"done"`
	Resent  int64 `json:"resent"`
}

// Stanzas count recipients: sent (written to ejabberd, resends included),
// confirmed (processed by ejabberd, proven by a fence), dead-lettered,
// persisted (on the storage topic), invalid (not a JID, skipped).
type Stanzas struct {
	Sent         int64 `json:"sent"`
	Confirmed    int64 `json:"confirmed"`
	DeadLettered int64 `json:"dead_lettered"`
	Persisted    int64 `json:"persisted"`
	Invalid      int64 `json:"invalid"`
}

// Shards of a channel (1 for everything else).
type Shards struct {
	Total int64 `json:"total"`
	Done  int64 `json:"done"`
}

// Times are when each stage was reached; nil = not (yet).
type Times struct {
	Accepted  *time.Time `json:"accepted,omitempty"`
	Resolving *time.Time `json:"resolving,omitempty"`
	Sending   *time.Time `json:"sending,omitempty"`
	Resolved  *time.Time `json:"resolved,omitempty"`
	Done      *time.Time `json:"done,omitempty"`
	Cancelled *time.Time `json:"cancelled,omitempty"`
}

func fromRecord(id string, h map[string]string) Announcement {
	n := func(f string) int64 {
		v, _ := strconv.ParseInt(h[f], 10, 64)
		return v
	}
	t := func(f string) *time.Time {
		ms, err := strconv.ParseInt(h[f], 10, 64)
		if err != nil {
			return nil
		}
		v := time.UnixMilli(ms).UTC()
		// No version writes a time JSON cannot hold (years 0–9999); one would
		// make the record, and every list holding it, fail to encode.
		if y := v.Year(); y < 0 || y > 9999 {
			return nil
		}
		return &v
	}
	a := Announcement{
		ID: id, State: h["state"], Reason: h["reason"], Kind: h["kind"], Priority: h["priority"],
		DryRun: h["dry_run"] == "1", Persist: h["persist"] == "1", Source: h["source"],
		Audience: Audience{Members: n("members"), Online: n("online"), Recipients: n("recipients"), PerNode: map[string]int64{}},
		Batches:  Batches{Planned: n("planned"), Emitted: n("emitted"), Done: n("bdone"), Resent: n("resent")},
		Stanzas: Stanzas{Sent: n("sent"), Confirmed: n("confirmed"), DeadLettered: n("dead"),
			Persisted: n("persisted"), Invalid: n("invalid")},
		Shards: Shards{Total: n("shards_total"), Done: n("shards_done")},
		Times: Times{Accepted: t("t_accepted"), Resolving: t("t_resolving"), Sending: t("t_sending"),
			Resolved: t("t_resolved"), Done: t("t_done"), Cancelled: t("t_cancelled")},
	}
	if a.State == "" {
		a.State = StateAccepted // a record rebuilt from counters alone
	}
	if c := h["channel"]; c != "" && json.Valid([]byte(c)) {
		a.ChannelID = json.RawMessage(c)
	}
	for f, v := range h {
		if node, ok := strings.CutPrefix(f, "n:"); ok {
			a.Audience.PerNode[node], _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return a
}

// Nodes are the per-node figures' node names, sorted.
func (a Audience) Nodes() []string {
	out := make([]string, 0, len(a.PerNode))
	for n := range a.PerNode {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
