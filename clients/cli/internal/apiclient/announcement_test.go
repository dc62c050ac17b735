package apiclient

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// contractExample is the Announcement of the API document, its comments removed.
const contractExample = `{
  "id": "0193b0c4-7a2e-7c1d-9f00-1234567890ab",
  "state": "sending",
  "kind": "channel",
  "channel_id": 42,
  "priority": "normal",
  "dry_run": false,
  "persist": false,
  "source": "rest",
  "audience": {"members": 1000, "online": 500, "recipients": 500, "per_node": {"node1": 300, "node2": 200}},
  "batches": {"planned": 5, "emitted": 5, "done": 3, "resent": 0},
  "stanzas": {"sent": 300, "confirmed": 300, "dead_lettered": 0, "persisted": 0},
  "shards": {"total": 1, "done": 1},
  "times": {"accepted": "2026-12-01T10:00:00.000Z", "resolving": "2026-12-01T10:00:00.100Z",
            "sending": "2026-12-01T10:00:00.200Z", "resolved": "2026-12-01T10:00:00.300Z"}
}`

func TestDecodeAnnouncement(t *testing.T) {
	a, err := DecodeAnnouncement([]byte(contractExample))
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != "0193b0c4-7a2e-7c1d-9f00-1234567890ab" || a.State != StateSending || a.Kind != KindChannel {
		t.Errorf("decoded %+v", a)
	}
	if a.ChannelID == nil || a.ChannelID.String() != "42" || a.ChannelID.IsString() {
		t.Errorf("channel_id %v, want the number 42", a.ChannelID)
	}
	if got := a.Audience.PerNode["node2"]; got != 200 {
		t.Errorf("per_node node2 = %d", got)
	}
	if settled, total := a.Progress(); settled != 300 || total != 500 {
		t.Errorf("progress %d/%d, want 300/500", settled, total)
	}
	// A done announcement whose channel held names that are not JIDs: the
	// skipped ones are settled too, or the progress would stop short of 100 %.
	done, err := DecodeAnnouncement([]byte(strings.Replace(contractExample,
		`"stanzas": {"sent": 300, "confirmed": 300, "dead_lettered": 0, "persisted": 0}`,
		`"stanzas": {"sent": 497, "confirmed": 490, "dead_lettered": 7, "persisted": 0, "invalid": 3}`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if settled, total := done.Progress(); settled != 500 || total != 500 || done.Stanzas.Invalid != 3 {
		t.Errorf("progress %d/%d with %d invalid, want 500/500 with 3", settled, total, done.Stanzas.Invalid)
	}
	if !a.Resolved() || !a.Times.Resolved.Equal(time.Date(2026, 12, 1, 10, 0, 0, 300e6, time.UTC)) || !a.Times.Done.IsZero() {
		t.Errorf("times %+v", a.Times)
	}
	if a.State.Terminal() {
		t.Error("sending is terminal")
	}

	for name, body := range map[string]string{
		"no id":            `{"state": "done"}`,
		"no state":         `{"id": "x"}`,
		"negative count":   `{"id": "x", "state": "done", "stanzas": {"confirmed": -1}}`,
		"negative node":    `{"id": "x", "state": "done", "audience": {"per_node": {"n": -5}}}`,
		"float count":      `{"id": "x", "state": "done", "stanzas": {"confirmed": 1.5}}`,
		"bool channel":     `{"id": "x", "state": "done", "channel_id": true}`,
		"float channel":    `{"id": "x", "state": "done", "channel_id": 4.2}`,
		"bad time":         `{"id": "x", "state": "done", "times": {"done": "yesterday"}}`,
		"overflow":         `{"id": "x", "state": "done", "stanzas": {"confirmed": 9223372036854775807, "dead_lettered": 1}}`,
		"invalid overflow": `{"id": "x", "state": "done", "stanzas": {"dead_lettered": 9223372036854775807, "invalid": 1}}`,
		"not an object":    `[]`,
		"truncated":        `{"id": "x"`,
	} {
		if _, err := DecodeAnnouncement([]byte(body)); err == nil {
			t.Errorf("%s: decoded without an error", name)
		}
	}

	// A server newer than this client may add fields and states.
	a, err = DecodeAnnouncement([]byte(`{"id": "x", "state": "paused", "new_field": {"a": 1}, "channel_id": "news"}`))
	if err != nil {
		t.Fatal(err)
	}
	if a.State.Terminal() || a.ChannelID.String() != "news" || !a.ChannelID.IsString() {
		t.Errorf("decoded %+v", a)
	}
}

func TestChannelID(t *testing.T) {
	for _, tc := range []struct {
		typed, json string
	}{
		{"42", `42`},
		{"-1", `-1`},
		{"news", `"news"`},
		{"4.2", `"4.2"`},
		{"99999999999999999999", `"99999999999999999999"`}, // past int64: a string id, not a lost digit
		{" 7", `" 7"`},
	} {
		id := ParseChannelID(tc.typed)
		b, err := json.Marshal(id)
		if err != nil || string(b) != tc.json {
			t.Errorf("%q encodes as %s (%v), want %s", tc.typed, b, err, tc.json)
		}
		var back ChannelID
		if err := json.Unmarshal(b, &back); err != nil || back != id || back.String() != tc.typed {
			t.Errorf("%s decodes as %v (%v)", b, back, err)
		}
	}
	if b, _ := json.Marshal(AllOnline().Channel); string(b) != "-1" {
		t.Errorf("all online is %s, want -1", b)
	}
}

func TestRequestBodies(t *testing.T) {
	yes := true
	for _, tc := range []struct {
		req        Request
		path, body string
	}{
		{Request{Target: ChannelTarget(NumericChannel(42)), Message: []byte("<m/>")},
			"/v1/announce/channel", `{"channel_id":42,"message":"PG0vPg=="}`},
		{Request{Target: UsersTarget([]string{"a", "b@x"}), Message: []byte("<m/>"), Persist: &yes, Priority: "high"},
			"/v1/announce/users", `{"usernames":["a","b@x"],"message":"PG0vPg==","persist":true,"priority":"high"}`},
	} {
		path, body, err := tc.req.encode(false)
		if err != nil || path != tc.path || string(body) != tc.body {
			t.Errorf("encoded %s %s (%v), want %s %s", path, body, err, tc.path, tc.body)
		}
	}
	_, body, _ := Request{Target: AllOnline(), Message: []byte("x")}.encode(true)
	if !strings.Contains(string(body), `"channel_id":-1`) || !strings.Contains(string(body), `"dry_run":true`) {
		t.Errorf("preview body %s", body)
	}
	for _, bad := range []Request{{}, {Target: Target{Channel: &ChannelID{}, Usernames: []string{"a"}}}} {
		if _, _, err := bad.encode(false); err == nil {
			t.Errorf("%+v encoded", bad)
		}
	}
}
