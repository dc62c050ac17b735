package announcement

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// The batches this version writes must all take the fast path, or the
// sender and archiver quietly go back to the slow one.
func TestWrittenBatchesDecodeFast(t *testing.T) {
	at := time.Date(2026, 12, 3, 9, 0, 0, 123456789, time.FixedZone("", 3*3600+1800))
	cases := []Batch{
		benchBatch(),
		{AnnouncementID: "a", Shard: 3, Seq: 0, Node: "node2", Template: `<message to="%s" type='chat'><body>a "quoted" \ line
		with tabs	and ünïcode ✓ 😀 &amp; </body></message>`, Persist: true, FirstIncID: 1 << 63,
			Recipients: []string{"x@example.org/res", `odd"name`, "a,b]c", "ünï", ""}, CreatedAt: at, Priority: PriorityHigh},
		{AnnouncementID: "only", Template: "t", Recipients: []string{"u"}},
	}
	for _, want := range cases {
		p, err := want.Encode()
		if err != nil {
			t.Fatal(err)
		}
		got, ok := decodeBatchFast(p)
		if !ok {
			t.Fatalf("the fast path refused a record this version wrote: %s", p)
		}
		want.Version = BatchVersion
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("fast decode:\n got %+v\nwant %+v", got, want)
		}
	}
}

// What the fast path must leave to encoding/json: each refused, and each
// still decoded (or refused) by DecodeBatch as before.
func TestFastBatchLeavesTheRestToEncodingJSON(t *testing.T) {
	for _, p := range []string{
		`{"announcement_id":"a","template":"t","recipients":["u"],"extra":1}`,         // unknown field
		`{"Announcement_ID":"a","template":"t","recipients":["u"]}`,                   // case-folded name
		`{"announcement_id":"a","template":"t","recipients":["u"],"seq":1.0}`,         // not a plain integer
		`{"announcement_id":"a","template":"t","recipients":["u"],"seq":1e2}`,         // exponent
		`{"announcement_id":"a","template":"t","recipients":["u"],"seq":01}`,          // leading zero: invalid
		`{"announcement_id":"a","template":"t","recipients":["u"],"node":null}`,       // null
		`{"announcement_id":"a","template":"t","recipients":["u"]} {}`,                // trailing value
		`{"announcement_id":"a","template":"t","recipients":["u"],}`,                  // trailing comma: invalid
		`{"announcement_id":"a","template":"t","recipients":["u" "v"]}`,               // missing comma: invalid
		`{"announcement_id":"a","template":"t","recipients":["u"],"first_inc_id":-1}`, // negative uint: invalid
		`{"announcement_id":"a","template":"t","recipients":["u"],"seq":99999999999999999999}`,
		`{"announcement_id":"a","template":"t","recipients":["u"],"created_at":"yesterday"}`,
		`{"announcement_id":"a","template":"t","recipients":["u"],"persist":tru}`,
	} {
		if _, ok := decodeBatchFast([]byte(p)); ok {
			t.Errorf("fast path accepted %s", p)
		}
	}
	// Escapes and a duplicate key are the fast path's own, decoded as encoding/json does.
	p := `{"announcement_id":"a\u0062","template":"\u003cm/\u003e","recipients":["x"],"recipients":["\ud83d\ude00","y\/z"], "seq" : -0 }`
	b, ok := decodeBatchFast([]byte(p))
	if !ok || b.AnnouncementID != "ab" || b.Template != "<m/>" || strings.Join(b.Recipients, "|") != "😀|y/z" {
		t.Fatalf("fast decode of %s: %+v, %v", p, b, ok)
	}
}

// FuzzDecodeBatchFast holds the fast path to encoding/json: whatever it
// accepts, the general decoder accepts with every field known and decodes to
// the same batch.
func FuzzDecodeBatchFast(f *testing.F) {
	for _, b := range []Batch{benchBatch(), {AnnouncementID: "a", Template: `<m a="1"/>`, Recipients: []string{`q"`, "ü", "]"}, FirstIncID: 7, Persist: true}} {
		b.Recipients = b.Recipients[:min(len(b.Recipients), 3)]
		p, err := b.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	f.Add([]byte(`{"announcement_id":"a","template":"t","recipients":["u"],"recipients":[]}`))
	f.Add([]byte(` { "seq" : 12 , "shard":0,"version":2,"created_at":"2026-12-03T09:00:00Z","recipients":["\u00e9\ud800"] } `))
	f.Fuzz(func(t *testing.T, p []byte) {
		fast, ok := decodeBatchFast(p)
		if !ok {
			return
		}
		var slow Batch
		unknown, err := decodeTolerant(p, &slow, batchFields)
		if err != nil || len(unknown) > 0 {
			t.Fatalf("fast path accepted %q; encoding/json: %v, unknown fields %q", p, err, unknown)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q decoded differently:\n fast %#v\n json %#v", p, fast, slow)
		}
	})
}
