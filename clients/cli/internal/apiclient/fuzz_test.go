package apiclient

import (
	"encoding/json"
	"testing"
)

// What the server sends is input: decoding never panics, and whatever it
// accepts holds the checked invariants and survives a round trip.
func FuzzDecodeAnnouncement(f *testing.F) {
	f.Add([]byte(contractExample))
	f.Add([]byte(`{"id": "x", "state": "cancelled", "reason": "cancelled by request", "channel_id": "news"}`))
	f.Add([]byte(`{"id": "x", "state": "done", "times": {"done": "2026-12-01T10:00:01.5+02:00"}}`))
	f.Add([]byte(`{"id": "x", "state": "done", "stanzas": {"confirmed": -1}}`))
	f.Add([]byte(`{"id": "\u001b[2J", "state": "done", "channel_id": 1e3}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := DecodeAnnouncement(data)
		if err != nil {
			return
		}
		if a.ID == "" || a.State == "" {
			t.Fatalf("accepted without id or state: %q", data)
		}
		if settled, total := a.Progress(); settled < 0 || total < 0 {
			t.Fatalf("negative progress %d/%d from %q", settled, total, data)
		}
		again, err := json.Marshal(a)
		if err != nil {
			t.Fatalf("re-encoding %q: %v", data, err)
		}
		b, err := DecodeAnnouncement(again)
		if err != nil {
			t.Fatalf("round trip of %q: %v (%s)", data, err, again)
		}
		if b.ID != a.ID || b.State != a.State || b.Stanzas != a.Stanzas || b.Audience.Recipients != a.Audience.Recipients ||
			!b.Times.Done.Equal(a.Times.Done) || (a.ChannelID == nil) != (b.ChannelID == nil) ||
			(a.ChannelID != nil && *a.ChannelID != *b.ChannelID) {
			t.Fatalf("round trip changed %q into %s", data, again)
		}
	})
}
