package announcement

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestEventRoundTrip(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	cases := []Event{
		{ID: "a1", Kind: KindChannel, Channel: &ChannelRef{ID: 22}, Template: "<message to='%s'/>", CreatedAt: now, Source: "rest"},
		{ID: "a2", Kind: KindChannel, Channel: &ChannelRef{StringID: "demo", IsString: true}, Template: "<message to='%s'/>", Persist: true, CreatedAt: now, Source: "kafka:in"},
		{ID: "a3", Kind: KindAllOnline, Template: "<message to='%s'/>", CreatedAt: now},
		{ID: "a4", Kind: KindUsers, Usernames: []string{"u1", "u2@d/r"}, Template: "x", Persist: true, CreatedAt: now},
		{ID: "a5", Kind: KindShard, Shard: &Shard{ChannelID: 1, Index: 1, Count: 3, FromMemberID: 10, ToMemberID: 20}, Template: "x", CreatedAt: now},
		{ID: "a6", Kind: KindUsers, Usernames: []string{"u1"}, Template: "x", CreatedAt: now, Priority: PriorityHigh, DryRun: true},
	}
	for _, want := range cases {
		_, got := reencode(t, want.Encode, DecodeEvent)
		// Stamped by Encode: the lowest version that reads the event right.
		want.Version = 1
		if want.DryRun {
			want.Version = 2
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
		}
	}
}

// reencode encodes a record with encode and decodes the result with decode,
// failing t when either fails; it returns the encoding and the decoded record.
func reencode[R any](t *testing.T, encode func() ([]byte, error), decode func([]byte) (R, error)) ([]byte, R) {
	t.Helper()
	p, err := encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := decode(p)
	if err != nil {
		t.Fatalf("decode of %s: %v", p, err)
	}
	return p, got
}

func TestChannelRefJSON(t *testing.T) {
	var e struct{ C ChannelRef }
	if err := json.Unmarshal([]byte(`{"C": 22}`), &e); err != nil || e.C.IsString || e.C.ID != 22 {
		t.Fatalf("number: %+v %v", e.C, err)
	}
	if err := json.Unmarshal([]byte(`{"C": "demo"}`), &e); err != nil || !e.C.IsString || e.C.StringID != "demo" {
		t.Fatalf("string: %+v %v", e.C, err)
	}
	for _, bad := range []string{`{"C": 1.5}`, `{"C": ""}`, `{"C": true}`, `{"C": [1]}`, `{"C": 99999999999999999999}`} {
		if err := json.Unmarshal([]byte(bad), &e); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

func TestDecodeEventRejects(t *testing.T) {
	for _, bad := range []string{
		``, `{}`, `[]`, `{"id":"x","kind":"channel","template":"t"}`,
		`{"id":"x","kind":"channel","channel_id":-1,"template":"t"}`,
		`{"id":"x","kind":"users","template":"t"}`,
		`{"id":"x","kind":"nope","template":"t"}`,
		`{"id":"","kind":"all_online","template":"t"}`,
		`{"id":"x","kind":"all_online","template":""}`,
		`{"id":"x","kind":"all_online","template":"t"}{}`,
		`{"id":"x","kind":"channel_shard","template":"t","shard":{"index":2,"count":2}}`,
		`{"id":"` + strings.Repeat("x", MaxIDLen+1) + `","kind":"all_online","template":"t"}`,
	} {
		if _, err := DecodeEvent([]byte(bad)); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestDecodeBatch(t *testing.T) {
	b := Batch{AnnouncementID: "a", Seq: 3, Node: "node1", Template: "t", Recipients: []string{"alice@localhost"}, FirstIncID: 7, Version: BatchVersion}
	p, _ := b.Encode()
	got, err := DecodeBatch(p)
	if err != nil || !reflect.DeepEqual(got, b) {
		t.Fatalf("got %+v %v", got, err)
	}
	if string(b.Key()) != "a/0/3" {
		t.Fatalf("key %q", b.Key())
	}
	for _, bad := range []string{``, `{}`, `{"announcement_id":"a","template":"t","recipients":[]}`, `{"announcement_id":"a","template":"t","recipients":["x"],"seq":-1}`} {
		if _, err := DecodeBatch([]byte(bad)); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add([]byte(`{"id":"a","kind":"channel","channel_id":"demo","template":"<m/>"}`))
	f.Add([]byte(`{"id":"a","kind":"users","usernames":["x"],"template":"<m/>","persist":true}`))
	f.Add([]byte(`{"id":"a","kind":"channel_shard","template":"t","shard":{"channel_id":1,"index":0,"count":1}}`))
	f.Add([]byte(`{"id":"a","kind":"channel","channel_id":"\u003c\u0026\u003e","template":"\u003cm/\u003e \u2028"}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		e, err := DecodeEvent(p)
		if err != nil {
			return
		}
		// Whatever decodes must survive a round trip unchanged in meaning.
		q, _ := reencode(t, e.Encode, DecodeEvent)
		if !json.Valid(q) || bytes.HasSuffix(q, []byte("\n")) {
			t.Fatalf("Encode gave %q, want one JSON value without a newline", q)
		}
	})
}

func FuzzDecodeBatch(f *testing.F) {
	f.Add([]byte(`{"announcement_id":"a","seq":1,"node":"n","template":"t","recipients":["x@y"]}`))
	f.Add([]byte(`{"announcement_id":"a","template":"\u003cm a='\u0026amp;'/\u003e","recipients":["x\u003cy"]}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		b, err := DecodeBatch(p)
		if err != nil {
			return
		}
		if len(b.Recipients) == 0 || b.Template == "" {
			t.Fatalf("accepted an unusable batch: %+v", b)
		}
		_, again := reencode(t, b.Encode, DecodeBatch)
		if again.Template != b.Template || !reflect.DeepEqual(again.Recipients, b.Recipients) {
			t.Fatalf("round trip changed the batch:\n got %+v\nwant %+v", again, b)
		}
	})
}

// htmlTemplate has every byte json.Marshal escapes for HTML.
const htmlTemplate = `<message to='%s' id='a&amp;b'><body>1 &lt; 2 && 3 > 2</body></message>`

func TestEncodeDoesNotEscapeHTML(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	ev := Event{ID: "a<1>", Kind: KindChannel, Channel: &ChannelRef{StringID: "<&>", IsString: true}, Template: htmlTemplate, CreatedAt: now, Source: "rest", Version: Version}
	b := Batch{AnnouncementID: "a<1>", Node: "n&1", Template: htmlTemplate, Recipients: []string{"alice", "bob@x/<r>"}, CreatedAt: now, Version: Version}
	for _, tt := range []struct {
		name string
		v    any
		enc  func() ([]byte, error)
	}{
		{"event", &ev, ev.Encode},
		{"batch", &b, b.Encode},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.enc()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(p, []byte(htmlTemplate)) {
				t.Errorf("template not verbatim in %s", p)
			}
			if bytes.Contains(p, []byte(`\u00`)) {
				t.Errorf("escaped bytes in %s", p)
			}
			if len(p) == 0 || p[len(p)-1] != '}' {
				t.Errorf("output does not end with the object: %q", p)
			}
			// Same fields, same order, only the escaping differs.
			old, err := json.Marshal(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			unescaped := strings.NewReplacer(`\u003c`, "<", `\u003e`, ">", `\u0026`, "&").Replace(string(old))
			if string(p) != unescaped {
				t.Errorf("Encode differs from json.Marshal beyond escaping:\n got %s\nwant %s", p, unescaped)
			}
		})
	}
}

// TestDecodeBothEscapings: records written before Encode stopped escaping
// must decode to what the new ones decode to.
func TestDecodeBothEscapings(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	ev := Event{ID: "a1", Kind: KindUsers, Usernames: []string{"alice", "bob@x/<&>"}, Template: htmlTemplate, Persist: true, CreatedAt: now, Source: "kafka:in", Version: Version}
	b := Batch{AnnouncementID: "a1", Shard: 1, Seq: 2, Node: "n1", Template: htmlTemplate, Persist: true, FirstIncID: 9, Recipients: []string{"alice", "bob@x/<&>"}, CreatedAt: now, Version: BatchVersion}
	t.Run("event", func(t *testing.T) { decodesBothEscapings(t, ev, ev.Encode, DecodeEvent) })
	t.Run("batch", func(t *testing.T) { decodesBothEscapings(t, b, b.Encode, DecodeBatch) })
}

// decodesBothEscapings checks that decode gives rec back from json.Marshal's
// HTML-escaped encoding of rec (an earlier version's) and from encode's.
func decodesBothEscapings[R any](t *testing.T, rec R, encode func() ([]byte, error), decode func([]byte) (R, error)) {
	t.Helper()
	escaped, err := json.Marshal(&rec)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(escaped, []byte(`\u003c`)) {
		t.Fatalf("json.Marshal no longer escapes, the test proves nothing: %s", escaped)
	}
	plain, err := encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][]byte{escaped, plain} {
		got, err := decode(p)
		if err != nil || !reflect.DeepEqual(got, rec) {
			t.Errorf("decode(%s) = %+v, %v; want %+v", p, got, err, rec)
		}
	}
}

// TestChannelRefMarshalEscaping: json.Marshal of a value holding a
// ChannelRef still escapes, as it does for everything else.
func TestChannelRefMarshalEscaping(t *testing.T) {
	p, err := json.Marshal(struct{ C ChannelRef }{ChannelRef{StringID: "<&>", IsString: true}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"C":"\u003c\u0026\u003e"}`; string(p) != want {
		t.Errorf("json.Marshal = %s, want %s", p, want)
	}
}

// A rolling upgrade: a newer writer adds fields; this version reads the
// record, ignores them and counts them, instead of dead-lettering it.
func TestNewerFieldsAreIgnoredAndCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	d := NewDecoder(reg)
	b, err := d.Batch([]byte(`{"announcement_id":"a","seq":1,"node":"n1","template":"<message to='%s'/>","recipients":["u"],` +
		`"lane":"fast","trace":{"id":"x"},"version":1}`))
	if err != nil || b.AnnouncementID != "a" || b.Recipients[0] != "u" {
		t.Fatalf("batch %+v, err %v", b, err)
	}
	ev, err := d.Event([]byte(`{"id":"e","kind":"all_online","template":"<message to='%s'/>","lane":"urgent"}`))
	if err != nil || ev.ID != "e" || ev.Version != 0 {
		t.Fatalf("event %+v, err %v (a record of an earlier version has no version)", ev, err)
	}
	if n := testutil.ToFloat64(d.unknown); n != 3 {
		t.Fatalf("%v unknown fields counted, want 3", n)
	}
	if _, err := d.Batch([]byte(`{"announcement_id":"a","template":"t","recipients":["u"]} {}`)); err == nil {
		t.Fatal("trailing data accepted")
	}
}

// A record for a later version is not acted on, and not the record's fault:
// it waits for a newer reader.
func TestNewerVersionWaits(t *testing.T) {
	_, err := DecodeBatch([]byte(`{"announcement_id":"a","template":"t","recipients":["u"],"version":2}`))
	var newer *NewerVersionError
	if !errors.As(err, &newer) || newer.Version != 2 || !newer.Retryable() {
		t.Fatalf("err = %v, want a NewerVersionError", err)
	}
	if _, err := DecodeEvent([]byte(`{"id":"e","kind":"all_online","template":"t","version":7}`)); !errors.As(err, &newer) {
		t.Fatalf("event: err = %v", err)
	}
	v, err := (&Batch{AnnouncementID: "a", Template: "t", Recipients: []string{"u"}}).Encode()
	if err != nil || !bytes.Contains(v, []byte(`"version":1`)) {
		t.Fatalf("Encode does not stamp the version: %s %v", v, err)
	}
}
