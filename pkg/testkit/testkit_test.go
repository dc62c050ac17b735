package testkit

import (
	"net"
	"testing"
	"time"
)

func TestFreeAddrIsFree(t *testing.T) {
	addr := FreeAddr(t)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("FreeAddr gave %s, which cannot be listened on: %v", addr, err)
	}
	_ = ln.Close()
}

func TestEventuallyWaitsForTheCondition(t *testing.T) {
	start := time.Now()
	Eventually(t, 5*time.Second, "50 ms to pass", func() bool { return time.Since(start) > 50*time.Millisecond })
	if time.Since(start) < 50*time.Millisecond {
		t.Fatal("returned before the condition held")
	}
}

// fatalRecorder records Fatalf instead of stopping the test.
type fatalRecorder struct {
	testing.TB
	failed bool
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(string, ...any) { f.failed = true }

func TestEventuallyFailsAfterTheTimeout(t *testing.T) {
	r := &fatalRecorder{TB: t}
	calls := 0
	Eventually(r, 60*time.Millisecond, "never", func() bool {
		calls++
		return r.failed // stops the loop once Fatalf was recorded
	})
	if !r.failed || calls < 2 {
		t.Fatalf("failed %v after %d polls", r.failed, calls)
	}
}
