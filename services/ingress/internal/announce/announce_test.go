package announce

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/stanza"
)

const goodTpl = `<message to='%s' from='announcer.localhost' type='chat'><body>hi [inc_id]</body></message>`

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

var goodMsg = b64(goodTpl)

func testLimits() Limits {
	return Limits{
		MaxBodyBytes:   1 << 20,
		MaxUsernames:   5,
		Template:       stanza.Options{MaxBytes: 1024, ComponentDomain: "announcer.localhost"},
		UserDomain:     "localhost",
		PublishTimeout: time.Second,
	}
}

func clientMode(l *Limits) { l.Template = stanza.Options{MaxBytes: 1024, ClientJID: "admin@localhost"} }

// memPublisher is an in-memory stand-in for the Kafka adapter.
type memPublisher struct {
	events []announcement.Event
	err    error
}

func (p *memPublisher) Publish(_ context.Context, e announcement.Event) error {
	if p.err != nil {
		return p.err
	}
	p.events = append(p.events, e)
	return nil
}

func (p *memPublisher) CheckSize(announcement.Event) error { return nil }

func newService(t *testing.T, pub Publisher, lim Limits) *Service {
	t.Helper()
	s, err := New(pub, nil, lim, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	s.newID = func() (string, error) { n++; return fmt.Sprintf("id-%d", n), nil }
	s.now = func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }
	return s
}

func TestDecodeRejects(t *testing.T) {
	tests := []struct {
		name   string
		decode func([]byte) (Request, error)
		body   string
		field  string
	}{
		{"channel: empty body", DecodeChannel, ``, "body"},
		{"channel: not an object", DecodeChannel, `[1,2]`, "body"},
		{"channel: malformed", DecodeChannel, `{"channel_id": 1,`, "body"},
		{"channel: trailing data", DecodeChannel, `{"channel_id": 1, "message": "x"} {}`, "body"},
		{"channel: unknown field", DecodeChannel, `{"channel_id": 1, "message": "x", "persit": true}`, "persit"},
		{"channel: missing channel_id", DecodeChannel, `{"message": "x"}`, "channel_id"},
		{"channel: null channel_id", DecodeChannel, `{"channel_id": null, "message": "x"}`, "channel_id"},
		{"channel: float channel_id", DecodeChannel, `{"channel_id": 2.5, "message": "x"}`, "channel_id"},
		{"channel: bool channel_id", DecodeChannel, `{"channel_id": true, "message": "x"}`, "channel_id"},
		{"channel: empty string id", DecodeChannel, `{"channel_id": "", "message": "x"}`, "channel_id"},
		{"channel: huge number", DecodeChannel, `{"channel_id": 99999999999999999999, "message": "x"}`, "channel_id"},
		{"channel: missing message", DecodeChannel, `{"channel_id": 1}`, "message"},
		{"channel: message not a string", DecodeChannel, `{"channel_id": 1, "message": 5}`, "message"},
		{"channel: persist not a bool", DecodeChannel, `{"channel_id": 1, "message": "x", "persist": "yes"}`, "persist"},
		{"channel: usernames on the channel route", DecodeChannel, `{"channel_id": 1, "message": "x", "usernames": ["a"]}`, "usernames"},
		{"users: missing usernames", DecodeUsers, `{"message": "x"}`, "usernames"},
		{"users: usernames not an array", DecodeUsers, `{"usernames": "alice", "message": "x"}`, "usernames"},
		{"users: username not a string", DecodeUsers, `{"usernames": [1], "message": "x"}`, "usernames"},
		{"users: channel_id on the users route", DecodeUsers, `{"usernames": ["a"], "message": "x", "channel_id": 1}`, "channel_id"},
		{"any: both audiences", Decode, `{"usernames": ["a"], "channel_id": 1, "message": "x"}`, "body"},
		{"any: no audience", Decode, `{"message": "x"}`, "body"},
		{"any: missing message", Decode, `{"usernames": ["a"]}`, "message"},
		// What the API document allows and encoding/json alone would not hold to:
		{"channel: null persist", DecodeChannel, `{"channel_id": 1, "message": "x", "persist": null}`, "persist"},
		{"users: null persist", DecodeUsers, `{"usernames": ["a"], "message": "x", "persist": null}`, "persist"},
		{"users: null usernames", DecodeUsers, `{"usernames": null, "message": "x"}`, "usernames"},
		{"any: null message", Decode, `{"usernames": ["a"], "message": null}`, "message"},
		{"channel: a key twice", DecodeChannel, `{"channel_id": 1, "channel_id": 2, "message": "x"}`, "channel_id"},
		{"users: a key twice, last valid", DecodeUsers, `{"usernames": ["a"], "message": 5, "message": "x"}`, "message"},
		{"channel: a case-variant name", DecodeChannel, `{"Channel_ID": 1, "message": "x"}`, "Channel_ID"},
		{"users: a case-variant name", DecodeUsers, `{"usernames": ["a"], "Message": "x"}`, "Message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.decode([]byte(tt.body))
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v, want a *ValidationError", err)
			}
			if ve.Field != tt.field {
				t.Errorf("field = %q, want %q (%v)", ve.Field, tt.field, err)
			}
		})
	}
}

func TestDecodeAccepts(t *testing.T) {
	r, err := DecodeChannel([]byte(`{"channel_id": 22, "message": "m"}`))
	if err != nil || r.Channel == nil || r.Channel.ID != 22 || r.Channel.IsString || r.Persist != nil || r.Message != "m" {
		t.Errorf("numeric channel: %+v, %v", r, err)
	}
	r, err = DecodeChannel([]byte(` {"channel_id": "news", "message": "m", "persist": true} `))
	if err != nil || !r.Channel.IsString || r.Channel.StringID != "news" || r.Persist == nil || !*r.Persist {
		t.Errorf("string channel: %+v, %v", r, err)
	}
	r, err = DecodeUsers([]byte(`{"usernames": [], "message": "m"}`))
	if err != nil || r.Usernames == nil || len(r.Usernames) != 0 {
		t.Errorf("empty usernames must decode (and fail validation later): %+v, %v", r, err)
	}
	r, err = Decode([]byte(`{"usernames": ["a"], "message": "m", "persist": false}`))
	if err != nil || r.Channel != nil || len(r.Usernames) != 1 || *r.Persist {
		t.Errorf("any as users: %+v, %v", r, err)
	}
	r, err = Decode([]byte(`{"channel_id": -1, "message": "m"}`))
	if err != nil || r.Channel == nil || r.Channel.ID != -1 || r.Usernames != nil {
		t.Errorf("any as channel: %+v, %v", r, err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestPrepare(t *testing.T) {
	ch := func(id int64) *announcement.ChannelRef { return &announcement.ChannelRef{ID: id} }
	chs := func(id string) *announcement.ChannelRef {
		return &announcement.ChannelRef{StringID: id, IsString: true}
	}
	tests := []struct {
		name    string
		req     Request
		lim     func(*Limits)
		field   string // "" = accepted
		kind    announcement.Kind
		persist bool
		users   []string
	}{
		{name: "channel by number", req: Request{Channel: ch(22), Message: goodMsg}, kind: announcement.KindChannel},
		{name: "channel 0 is a channel", req: Request{Channel: ch(0), Message: goodMsg}, kind: announcement.KindChannel},
		{name: "channel by string id", req: Request{Channel: chs("news-1"), Message: goodMsg, Persist: ptr(true)}, kind: announcement.KindChannel, persist: true},
		{name: "negative channel = every online user", req: Request{Channel: ch(-1), Message: goodMsg}, kind: announcement.KindAllOnline},
		{name: "string id with SQL is just a string", req: Request{Channel: chs("1 OR 1=1; DROP TABLE x"), Message: goodMsg}, kind: announcement.KindChannel},
		{name: "string id too long", req: Request{Channel: chs(strings.Repeat("a", 256)), Message: goodMsg}, field: "channel_id"},
		{name: "string id with control char", req: Request{Channel: chs("a\nb"), Message: goodMsg}, field: "channel_id"},
		{
			name: "users: bare, full, resource; default persist true; repeats dropped",
			req:  Request{Usernames: []string{"alice", "bob@example.org", "carol@localhost/phone", "alice@localhost"}, Message: goodMsg},
			kind: announcement.KindUsers, persist: true,
			users: []string{"alice", "bob@example.org", "carol@localhost/phone"},
		},
		{name: "users: persist false kept", req: Request{Usernames: []string{"a@LOCALHOST"}, Message: goodMsg, Persist: ptr(false)}, kind: announcement.KindUsers, users: []string{"a"}},
		{name: "users: empty list", req: Request{Usernames: []string{}, Message: goodMsg}, field: "usernames"},
		{name: "users: over the limit", req: Request{Usernames: []string{"a", "b", "c", "d", "e", "f"}, Message: goodMsg}, field: "usernames"},
		{name: "users: XML in a username", req: Request{Usernames: []string{"a'/><x"}, Message: goodMsg}, field: "usernames"},
		{name: "users: empty username", req: Request{Usernames: []string{"ok", ""}, Message: goodMsg}, field: "usernames"},
		{name: "users: two @", req: Request{Usernames: []string{"a@b@c"}, Message: goodMsg}, field: "usernames"},
		{name: "both audiences", req: Request{Channel: ch(1), Usernames: []string{"a"}, Message: goodMsg}, field: "body"},
		{name: "no audience", req: Request{Message: goodMsg}, field: "body"},
		{name: "message: not base64", req: Request{Channel: ch(1), Message: "<message/>"}, field: "message"},
		{name: "message: empty", req: Request{Channel: ch(1), Message: ""}, field: "message"},
		{name: "message: no %s", req: Request{Channel: ch(1), Message: b64(`<message to='x@y' from='announcer.localhost'/>`)}, field: "message"},
		{name: "message: not well-formed", req: Request{Channel: ch(1), Message: b64(`<message to='%s' from='announcer.localhost'><body></message>`)}, field: "message"},
		{name: "message: two stanzas", req: Request{Channel: ch(1), Message: b64(goodTpl + goodTpl)}, field: "message"},
		{name: "message: not a stanza", req: Request{Channel: ch(1), Message: b64(`<html to='%s' from='announcer.localhost'/>`)}, field: "message"},
		{name: "message: over the size limit", req: Request{Channel: ch(1), Message: b64(`<message to='%s' from='announcer.localhost'><body>` + strings.Repeat("x", 1024) + `</body></message>`)}, field: "message"},
		{name: "message: from outside the component domain", req: Request{Channel: ch(1), Message: b64(`<message to='%s' from='admin@localhost'><body>x</body></message>`)}, field: "message"},
		{name: "message: no from in component mode", req: Request{Channel: ch(1), Message: b64(`<message to='%s'><body>x</body></message>`)}, field: "message"},
		{
			name: "message: the sending account's from in client mode", req: Request{Channel: ch(1), Message: b64(`<message to='%s' from='admin@localhost/x'><body>x</body></message>`)},
			lim: clientMode, kind: announcement.KindChannel,
		},
		{
			name: "message: no from in client mode", req: Request{Channel: ch(1), Message: b64(`<message to='%s'><body>x</body></message>`)},
			lim: clientMode, kind: announcement.KindChannel,
		},
		{
			// ejabberd's c2s would close the sending session: a 400 here, not a poison batch at the sender.
			name: "message: another account's from in client mode", req: Request{Channel: ch(1), Message: b64(`<message to='%s' from='eve@localhost'><body>x</body></message>`)},
			lim: clientMode, field: "message",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lim := testLimits()
			if tt.lim != nil {
				tt.lim(&lim)
			}
			s := newService(t, &memPublisher{}, lim)
			ev, err := s.Prepare(tt.req, SourceREST)
			if tt.field != "" {
				var ve *ValidationError
				if !errors.As(err, &ve) || ve.Field != tt.field {
					t.Fatalf("err = %v, want a ValidationError on %q", err, tt.field)
				}
				if got := testutil.ToFloat64(s.m.rejected.WithLabelValues("rest", FieldLabel(tt.field))); got != 1 {
					t.Errorf("rejected counter = %v, want 1", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if ev.Kind != tt.kind || ev.Persist != tt.persist || ev.ID != "id-1" || ev.Source != SourceREST || ev.CreatedAt.IsZero() {
				t.Errorf("event = %+v, want kind %s persist %v", ev, tt.kind, tt.persist)
			}
			if tt.users != nil && strings.Join(ev.Usernames, ",") != strings.Join(tt.users, ",") {
				t.Errorf("usernames = %q, want %q", ev.Usernames, tt.users)
			}
			if ev.Kind == announcement.KindAllOnline && ev.Channel != nil {
				t.Errorf("all_online event carries channel %v", ev.Channel)
			}
			if err := ev.Check(); err != nil {
				t.Errorf("event fails the bus contract: %v", err)
			}
			// What fanout decodes must be what was prepared.
			b, _ := ev.Encode()
			back, err := announcement.DecodeEvent(b)
			if err != nil || back.Template != ev.Template || back.ID != ev.ID {
				t.Errorf("round trip: %+v, %v", back, err)
			}
		})
	}
}

// ejabberd folds a localpart's case and a domain's, so case variants are one
// user: sent once, under the first spelling listed. A resource keeps its case.
// The Kafka input decodes through the same path.
func TestPrepareDropsCaseVariants(t *testing.T) {
	lim := testLimits()
	lim.MaxUsernames = 10
	names := []string{"alice", "Alice", "ALICE@localhost", "alice@localhost/phone", "alice@LOCALHOST/phone",
		"bob@Other.example", "bob@other.example", "alice@localhost/PHONE"}
	want := []string{"alice", "alice@localhost/phone", "bob@Other.example", "alice@localhost/PHONE"}
	s := newService(t, &memPublisher{}, lim)
	ev, err := s.Prepare(Request{Usernames: names, Message: goodMsg}, SourceREST)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ev.Usernames, want) {
		t.Errorf("REST: usernames = %q, want %q", ev.Usernames, want)
	}
	body := `{"usernames":["` + strings.Join(names, `","`) + `"],"message":"` + goodMsg + `"}`
	ev, err = s.PrepareJSON([]byte(body), "kafka:in")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ev.Usernames, want) {
		t.Errorf("Kafka input: usernames = %q, want %q", ev.Usernames, want)
	}
}

func TestPrepareTemplateIsDecodedXML(t *testing.T) {
	s := newService(t, &memPublisher{}, testLimits())
	ev, err := s.Prepare(Request{Channel: &announcement.ChannelRef{ID: 1}, Message: b64("\n  " + goodTpl + "\n")}, SourceREST)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Template != goodTpl {
		t.Errorf("template = %q, want the decoded stanza trimmed: %q", ev.Template, goodTpl)
	}
}

// Kafka input records are read as the first generation read them: its
// producers may write the audience they do not use as "" or null, and fields
// no body has. What a first-generation record could not mean still fails.
func TestDecodeReadsFirstGenerationRecords(t *testing.T) {
	accepted := []struct {
		name, body string
		check      func(Request) bool
		ignored    int
	}{
		{"users beside an empty channel_id", `{"channel_id":"","usernames":["alice"],"message":"m","persist":false}`,
			func(r Request) bool {
				return r.Channel == nil && slices.Equal(r.Usernames, []string{"alice"}) && r.Persist != nil && !*r.Persist
			}, 0},
		{"a channel beside null usernames", `{"channel_id":"22","usernames":null,"message":"m","persist":true}`,
			func(r Request) bool { return r.Channel != nil && r.Channel.StringID == "22" && r.Usernames == nil }, 0},
		{"a channel beside no usernames", `{"channel_id":22,"usernames":[],"message":"m"}`,
			func(r Request) bool { return r.Channel != nil && r.Channel.ID == 22 && r.Usernames == nil }, 0},
		{"unknown fields and a case-variant name", `{"usernames":["a"],"message":"m","type":"chat","PERSIST":false,"to":"x"}`,
			func(r Request) bool { return len(r.Usernames) == 1 && r.Persist != nil && !*r.Persist }, 2},
		{"null optional fields", `{"usernames":["a"],"message":"m","persist":null,"priority":null}`,
			func(r Request) bool { return r.Persist == nil && r.Priority == nil }, 0},
	}
	for _, tt := range accepted {
		r, err := Decode([]byte(tt.body))
		if err != nil || !tt.check(r) || r.Ignored != tt.ignored {
			t.Errorf("%s: %+v (ignored %d, want %d), %v", tt.name, r, r.Ignored, tt.ignored, err)
		}
	}
	refused := []struct{ name, body, field string }{
		{"both audiences", `{"channel_id":1,"usernames":["a"],"message":"m"}`, "body"},
		{"neither audience", `{"channel_id":"","usernames":null,"message":"m"}`, "body"},
		{"no message", `{"usernames":["a"],"message":null}`, "message"},
		{"a float channel id", `{"channel_id":2.5,"message":"m"}`, "channel_id"},
		{"usernames not an array", `{"usernames":"a","message":"m"}`, "usernames"},
		{"persist not a bool", `{"usernames":["a"],"message":"m","persist":"yes"}`, "persist"},
		{"trailing data", `{"usernames":["a"],"message":"m"} {}`, "body"},
		{"not an object", `["a"]`, "body"},
	}
	for _, tt := range refused {
		_, err := Decode([]byte(tt.body))
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != tt.field {
			t.Errorf("%s: %v, want a *ValidationError on %q", tt.name, err, tt.field)
		}
	}
}

func TestPrepareJSON(t *testing.T) {
	lim := testLimits()
	lim.MaxBodyBytes = 200
	s := newService(t, &memPublisher{}, lim)
	ev, err := s.PrepareJSON([]byte(`{"usernames":["alice"],"message":"`+goodMsg+`"}`), "kafka:in")
	if err != nil || ev.Kind != announcement.KindUsers || !ev.Persist || ev.Source != "kafka:in" {
		t.Fatalf("users body: %+v, %v", ev, err)
	}
	_, err = s.PrepareJSON([]byte(`{"usernames":["`+strings.Repeat("a", 200)+`"],"message":"x"}`), "kafka:in")
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Field != "body" {
		t.Fatalf("oversized body: %v", err)
	}
	if got := testutil.ToFloat64(s.m.rejected.WithLabelValues("kafka", "body")); got != 1 {
		t.Errorf("rejected{kafka,body} = %v, want 1", got)
	}
	if _, err := s.PrepareJSON([]byte(`{"usernames":["bob"],"message":"`+goodMsg+`","kind":"x"}`), "kafka:in"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(s.m.ignored); got != 1 {
		t.Errorf("unknown fields counted %v, want 1", got)
	}
}

func TestAnnouncePublishes(t *testing.T) {
	pub := &memPublisher{}
	s := newService(t, pub, testLimits())
	out, err := s.Announce(context.Background(), Request{Usernames: []string{"alice"}, Message: goodMsg}, SourceREST, Key{})
	if err != nil {
		t.Fatal(err)
	}
	id := out.ID
	if len(pub.events) != 1 || pub.events[0].ID != id {
		t.Fatalf("published %+v, want one event with id %s", pub.events, id)
	}
	if got := testutil.ToFloat64(s.m.accepted.WithLabelValues("rest", "users")); got != 1 {
		t.Errorf("accepted counter = %v", got)
	}
}

func TestAnnounceMapsPublishErrors(t *testing.T) {
	tests := []struct {
		name    string
		pubErr  error
		want    error
		nothing bool
	}{
		{name: "unavailable stays unavailable", pubErr: fmt.Errorf("%w: broker down", ErrUnavailable), want: ErrUnavailable},
		{name: "too large stays too large", pubErr: fmt.Errorf("%w: 2 MB", ErrTooLarge), want: ErrTooLarge},
		{name: "anything else is unavailable", pubErr: context.DeadlineExceeded, want: ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newService(t, &memPublisher{err: tt.pubErr}, testLimits())
			out, err := s.Announce(context.Background(), Request{Channel: &announcement.ChannelRef{ID: 1}, Message: goodMsg}, SourceREST, Key{})
			if !errors.Is(err, tt.want) || out.ID != "" {
				t.Errorf("Announce = %q, %v; want %v", out.ID, err, tt.want)
			}
		})
	}
}

func TestPublishHonoursTimeout(t *testing.T) {
	lim := testLimits()
	lim.PublishTimeout = 20 * time.Millisecond
	s := newService(t, blockingPublisher{}, lim)
	err := s.Publish(context.Background(), announcement.Event{ID: "x", Kind: announcement.KindAllOnline, Template: "t", Source: SourceREST})
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want unavailable after the publish timeout", err)
	}
}

type blockingPublisher struct{}

func (blockingPublisher) CheckSize(announcement.Event) error { return nil }

func (blockingPublisher) Publish(ctx context.Context, _ announcement.Event) error {
	<-ctx.Done()
	return ctx.Err()
}

func TestNewIDIsTimeOrdered(t *testing.T) {
	a, err := newID()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	b, _ := newID()
	if len(a) != 36 || a >= b {
		t.Errorf("ids %q then %q: want 36-char UUIDs in increasing order", a, b)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := New(&memPublisher{}, nil, Limits{}, prometheus.NewRegistry()); err == nil {
		t.Error("zero publish timeout accepted")
	}
	reg := prometheus.NewRegistry()
	if _, err := New(&memPublisher{}, nil, testLimits(), reg); err != nil {
		t.Fatal(err)
	}
	if _, err := New(&memPublisher{}, nil, testLimits(), reg); err == nil {
		t.Error("registering the metrics twice did not fail")
	}
}
