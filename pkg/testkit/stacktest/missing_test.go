package stacktest

import (
	"runtime"
	"testing"
)

// recorder is a testing.TB that notes how a helper ended the test.
type recorder struct {
	testing.TB
	ended string // "fatal" or "skip"
	msg   string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.ended, r.msg = "fatal", format
	runtime.Goexit()
}
func (r *recorder) Skipf(format string, args ...any) {
	r.ended, r.msg = "skip", format
	runtime.Goexit()
}

func ending(fn func(testing.TB)) *recorder {
	r := &recorder{}
	done := make(chan struct{})
	go func() { defer close(done); fn(r) }()
	<-done
	return r
}

// A missing part of the stack skips the test, but fails it where the stack is required
// (make test, CI): there a skip would hide a broken test.
func TestMissingSkipsOrFails(t *testing.T) {
	t.Setenv("ANNOUNCER_REQUIRE_STACK", "")
	if r := ending(func(tb testing.TB) { Missing(tb, "no %s", "thing") }); r.ended != "skip" {
		t.Errorf("without ANNOUNCER_REQUIRE_STACK: ended %q, want a skip", r.ended)
	}
	t.Setenv("ANNOUNCER_REQUIRE_STACK", "1")
	if r := ending(func(tb testing.TB) { Missing(tb, "no %s", "thing") }); r.ended != "fatal" {
		t.Errorf("with ANNOUNCER_REQUIRE_STACK=1: ended %q, want a failure", r.ended)
	}
	// Get goes the same way when the stack's variables are missing.
	t.Setenv("ANNOUNCER_KAFKA_BROKERS", "")
	if r := ending(func(tb testing.TB) { Get(tb) }); r.ended != "fatal" {
		t.Errorf("Get without a stack under ANNOUNCER_REQUIRE_STACK=1: ended %q, want a failure", r.ended)
	}
	t.Setenv("ANNOUNCER_REQUIRE_STACK", "")
	if r := ending(func(tb testing.TB) { Get(tb) }); r.ended != "skip" {
		t.Errorf("Get without a stack: ended %q, want a skip", r.ended)
	}
}
