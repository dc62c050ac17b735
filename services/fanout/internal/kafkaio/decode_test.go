package kafkaio

import (
	"testing"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/stanza"
)

func TestDecoderChecksTemplate(t *testing.T) {
	d := Decoder{Template: stanza.Options{ComponentDomain: "announcer.localhost"}}
	ok := announcement.Event{ID: "a", Kind: announcement.KindAllOnline, Template: "<message from='announcer.localhost' to='%s'><body>hi</body></message>"}
	v, _ := ok.Encode()
	if _, err := d.Decode(v); err != nil {
		t.Fatal(err)
	}
	for _, tmpl := range []string{
		"<message from='evil.example' to='%s'/>",       // outside the component domain
		"<message from='announcer.localhost' to='x'/>", // no %s
		"<message from='announcer.localhost' to='%s'>", // not well-formed
	} {
		bad := ok
		bad.Template = tmpl
		v, _ := bad.Encode()
		if _, err := d.Decode(v); err == nil {
			t.Errorf("%s: accepted", tmpl)
		}
	}
}

// The announcements record is a trust boundary: whatever Decode accepts must
// be an event the use case can act on.
func FuzzDecode(f *testing.F) {
	for _, ev := range []announcement.Event{
		{ID: "a", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{ID: 1}, Template: "<message to='%s'/>"},
		{ID: "b", Kind: announcement.KindChannel, Channel: &announcement.ChannelRef{StringID: "x", IsString: true}, Template: "<message to='%s'><body>[inc_id]</body></message>"},
		{ID: "c", Kind: announcement.KindAllOnline, Template: "<presence to='%s'/>"},
		{ID: "d", Kind: announcement.KindUsers, Usernames: []string{"u", "v@w/x"}, Template: "<message to='%s'/>", Persist: true},
		{ID: "e", Kind: announcement.KindShard, Shard: &announcement.Shard{ChannelID: 1, Count: 2, FromMemberID: 5, ToMemberID: 9}, Template: "<message to='%s'/>"},
	} {
		v, _ := ev.Encode()
		f.Add(v)
	}
	f.Add([]byte(`{"id":"x","kind":"users","usernames":[],"template":"<message to='%s'/>"}`))
	f.Add([]byte(`{"id":"x","kind":"channel_shard","shard":{"count":0},"template":"t"}`))
	d := Decoder{}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := d.Decode(b)
		if err != nil {
			return
		}
		if err := ev.Check(); err != nil {
			t.Fatalf("accepted an event that fails Check: %v", err)
		}
		switch ev.Kind {
		case announcement.KindChannel:
			if ev.Channel == nil {
				t.Fatal("channel event without channel")
			}
		case announcement.KindShard:
			if ev.Shard == nil || ev.Shard.Count < 1 {
				t.Fatal("shard event without a usable shard")
			}
		case announcement.KindUsers:
			if len(ev.Usernames) == 0 {
				t.Fatal("users event without users")
			}
		}
		if _, err := stanza.Parse([]byte(ev.Template), stanza.Options{}); err != nil {
			t.Fatalf("accepted an invalid template: %v", err)
		}
		again, err := ev.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.Decode(again); err != nil {
			t.Fatalf("re-encoded event rejected: %v", err)
		}
	})
}
