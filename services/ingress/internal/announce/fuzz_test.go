package announce

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/stanza"
)

// FuzzDecode feeds arbitrary bytes to the three body decoders: they must never
// panic, must reject with a *ValidationError naming a field, and what they
// accept must have exactly the audience its route requires.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"channel_id": 22, "message": "` + goodMsg + `", "persist": false}`,
		`{"channel_id": "news", "message": "x"}`,
		`{"channel_id": -1, "message": "x"}`,
		`{"usernames": ["u1", "u2@d", "u3@d/r"], "message": "x", "persist": true}`,
		`{"usernames": [], "message": ""}`,
		`{"usernames": null, "channel_id": null}`,
		`{"channel_id": 1e3, "message": "x"}`,
		`{"channel_id": 1, "message": "x"}{"a":1}`,
		`{"\u0063hannel_id": 1, "message": "x"}`,
		`[]`, `null`, `"x"`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		check := func(name string, r Request, err error, wantChannel, wantUsers bool) {
			if err != nil {
				var ve *ValidationError
				if !errors.As(err, &ve) || ve.Field == "" || ve.Reason == "" {
					t.Fatalf("%s: error %v is not a ValidationError with a field and a reason", name, err)
				}
				return
			}
			if (r.Channel != nil) != wantChannel || (r.Usernames != nil) != wantUsers {
				t.Fatalf("%s: accepted %+v without the audience it requires", name, r)
			}
			if r.Channel != nil && r.Usernames != nil {
				t.Fatalf("%s: accepted both audiences", name)
			}
		}
		r, err := DecodeChannel(body)
		check("channel", r, err, true, false)
		r, err = DecodeUsers(body)
		check("users", r, err, false, true)
		r, err = Decode(body)
		check("any", r, err, r.Channel != nil, r.Usernames != nil)
		if err == nil && r.Channel == nil && r.Usernames == nil {
			t.Fatalf("any: accepted a body with no audience")
		}
	})
}

// FuzzPrepare drives template and username validation: whatever is accepted
// must be an event that passes the bus contract and whose template parses
// again; a rejection must be a ValidationError, never a panic.
func FuzzPrepare(f *testing.F) {
	for _, s := range []string{
		goodTpl,
		`<message to='%s' from='announcer.localhost'/>`,
		`<presence to='%s' from='announcer.localhost'><status>[inc_id]</status></presence>`,
		`<iq to='%s' from='announcer.localhost' type='set' id='1'><q xmlns='x'>&amp;%s</q></iq>`,
		`<message to='%s' from='announcer.localhost'><![CDATA[%s]]></message>`,
		`<?xml version='1.0'?><message to='%s' from='announcer.localhost'/>`,
		`<message to='%s' from='announcer.localhost'><body>&xxe;</body></message>`,
		`<message to="%s" from="x@evil"/>`,
		`<a:message xmlns:a='jabber:client' to='%s' from='announcer.localhost'/>`,
	} {
		f.Add(base64.StdEncoding.EncodeToString([]byte(s)), "alice", true)
		f.Add(s, "bob@localhost/r", false)
	}
	f.Fuzz(func(t *testing.T, message, username string, channel bool) {
		s := newService(t, &memPublisher{}, testLimits())
		req := Request{Message: message, Usernames: []string{username}}
		if channel {
			req = Request{Message: message, Channel: &announcement.ChannelRef{ID: 7}}
		}
		ev, err := s.Prepare(req, SourceREST)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field == "" {
				t.Fatalf("rejection %v is not a ValidationError with a field", err)
			}
			return
		}
		if err := ev.Check(); err != nil {
			t.Fatalf("accepted event fails the bus contract: %v", err)
		}
		if !strings.Contains(ev.Template, "%s") {
			t.Fatalf("accepted template without %%s: %q", ev.Template)
		}
		tpl, err := stanza.Parse([]byte(ev.Template), testLimits().Template)
		if err != nil {
			t.Fatalf("accepted template does not parse again: %v", err)
		}
		for _, u := range ev.Usernames {
			// Rendering a normalized recipient must give the same well-formed stanza shape.
			if out := tpl.AppendRender(nil, u, 1); len(out) == 0 {
				t.Fatal("empty render")
			}
		}
	})
}
