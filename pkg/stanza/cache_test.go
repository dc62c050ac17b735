package stanza_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/announcer/announcer/pkg/stanza"
)

func tplFor(id string) string {
	return `<message to='%s' id='` + id + `-[inc_id]'><body>hi</body></message>`
}

func TestCacheParsesOnce(t *testing.T) {
	c := stanza.NewCache(stanza.Options{}, 10)
	first, err := c.Get("a1", tplFor("a1"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Get("a1", tplFor("a1"))
	if err != nil {
		t.Fatal(err)
	}
	if again != first {
		t.Error("second Get returned a different template")
	}
	if n := c.Parses(); n != 1 {
		t.Errorf("Parses = %d, want 1", n)
	}
}

func TestCacheUsesOptions(t *testing.T) {
	raw := `<message to='%s' from='other@localhost'/>`
	if _, err := stanza.NewCache(stanza.Options{}, 1).Get("a", raw); err != nil {
		t.Fatalf("without a mode: %v", err)
	}
	var ve *stanza.ValidationError
	if _, err := stanza.NewCache(stanza.Options{ClientJID: clientAccount}, 1).Get("a", raw); !errors.As(err, &ve) {
		t.Fatalf("client mode: err = %v, want a *ValidationError", err)
	}
}

func TestCacheBounded(t *testing.T) {
	c := stanza.NewCache(stanza.Options{}, 10)
	for i := range 100 {
		id := fmt.Sprint("a", i)
		if _, err := c.Get(id, tplFor(id)); err != nil {
			t.Fatal(err)
		}
		if n := stanza.CacheLen(c); n > 10 {
			t.Fatalf("after %d ids the cache holds %d entries, want <= 10", i+1, n)
		}
	}
	if n := c.Parses(); n != 100 {
		t.Fatalf("Parses = %d, want 100", n)
	}
	// The ten most recent ids are still there; the oldest one was evicted.
	for i := 90; i < 100; i++ {
		id := fmt.Sprint("a", i)
		if _, err := c.Get(id, tplFor(id)); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.Parses(); n != 100 {
		t.Errorf("Parses = %d after hits on the 10 newest ids, want 100", n)
	}
	if _, err := c.Get("a0", tplFor("a0")); err != nil {
		t.Fatal(err)
	}
	if n := c.Parses(); n != 101 {
		t.Errorf("Parses = %d after asking for the evicted a0, want 101", n)
	}
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	c := stanza.NewCache(stanza.Options{}, 2)
	get := func(id string) {
		t.Helper()
		if _, err := c.Get(id, tplFor(id)); err != nil {
			t.Fatal(err)
		}
	}
	get("a")
	get("b")
	get("a") // a is now more recent than b
	get("c") // evicts b
	get("a")
	if n := c.Parses(); n != 3 {
		t.Errorf("Parses = %d, want 3 (a stays cached)", n)
	}
	get("b")
	if n := c.Parses(); n != 4 {
		t.Errorf("Parses = %d, want 4 (b was evicted)", n)
	}
}

func TestCacheDefaultSize(t *testing.T) {
	for _, size := range []int{0, -1} {
		c := stanza.NewCache(stanza.Options{}, size)
		for i := range stanza.DefaultCacheSize + 10 {
			if _, err := c.Get(fmt.Sprint(i), tplFor("x")); err != nil {
				t.Fatal(err)
			}
		}
		if n := stanza.CacheLen(c); n != stanza.DefaultCacheSize {
			t.Errorf("size %d: cache holds %d entries, want %d", size, n, stanza.DefaultCacheSize)
		}
	}
}

func TestCacheCachesErrors(t *testing.T) {
	c := stanza.NewCache(stanza.Options{}, 10)
	const bad = `<message to='%s'>`
	_, first := c.Get("bad", bad)
	wantValidationError(t, first, "message")
	for range 3 {
		tpl, err := c.Get("bad", bad)
		if tpl != nil || err != first {
			t.Fatalf("Get = %v, %v; want the cached error %v", tpl, err, first)
		}
	}
	if n := c.Parses(); n != 1 {
		t.Errorf("Parses = %d, want 1", n)
	}
}

func TestCacheSameIDOtherText(t *testing.T) {
	c := stanza.NewCache(stanza.Options{}, 10)
	texts := []string{
		`<message to='%s'><body>one</body></message>`,
		`<message to='%s'><body>two</body></message>`,
		` <message to='%s'><body>two</body></message>`, // differs only in whitespace: still other bytes
		`<message to='%s'><body>one</body></message>`,
		`<message to='%s'>`, // now invalid
		`<message to='%s'><body>one</body></message>`,
	}
	for i, raw := range texts {
		tpl, err := c.Get("a", raw)
		if i == 4 {
			if err == nil {
				t.Fatalf("Get(%q) accepted an invalid template", raw)
			}
		} else if err != nil || string(tpl.Raw()) != strings.TrimSpace(raw) {
			t.Fatalf("Get(%q) = %v, %v; want the template of these bytes", raw, tpl, err)
		}
		if n := c.Parses(); n != uint64(i+1) {
			t.Fatalf("after text %d: Parses = %d, want %d", i, n, i+1)
		}
	}
	if n := stanza.CacheLen(c); n != 1 {
		t.Errorf("cache holds %d entries for one id, want 1", n)
	}
}

// TestCacheConcurrent is for -race, and checks that concurrent misses on
// one id share a single parse.
func TestCacheConcurrent(t *testing.T) {
	const ids, workers, rounds = 20, 8, 50
	c := stanza.NewCache(stanza.Options{}, ids)
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			<-start
			for r := range rounds {
				// Half the workers walk the ids in step, so misses collide.
				id := fmt.Sprint("a", (r+w%2*7)%ids)
				tpl, err := c.Get(id, tplFor(id))
				if err != nil {
					errs <- err
					return
				}
				if got, want := string(tpl.Raw()), tplFor(id); got != want {
					errs <- fmt.Errorf("Get(%s) returned the template of %q", id, got)
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := c.Parses(); n != ids {
		t.Errorf("Parses = %d, want %d (one per id)", n, ids)
	}
}
