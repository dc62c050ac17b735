package benchreport

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Both readings see the CPU this process burns, and a process that is gone
// reads as not ok.
func TestProcessCPU(t *testing.T) {
	name0, cpu0, ok := ProcessCPU(os.Getpid())
	self0 := SelfCPU()
	if !ok {
		t.Fatal("this process's /proc stat is unreadable")
	}
	if want := filepath.Base(os.Args[0]); len(want) > 15 && name0 != want[:15] || len(want) <= 15 && name0 != want {
		t.Errorf("name %q, want %q (cut to 15 bytes)", name0, want)
	}
	x := 0
	for start := time.Now(); time.Since(start) < 200*time.Millisecond; {
		x++
	}
	_, cpu1, _ := ProcessCPU(os.Getpid())
	if d := cpu1 - cpu0; d < 0.1 || d > 10 {
		t.Errorf("ProcessCPU moved by %.2fs over 0.2 s of spinning (x=%d)", d, x)
	}
	if d := SelfCPU() - self0; d < 100*time.Millisecond {
		t.Errorf("SelfCPU moved by %s over 0.2 s of spinning", d)
	}
	if _, _, ok := ProcessCPU(1 << 30); ok {
		t.Error("a pid that cannot exist reads as ok")
	}
	if kb, ok := ProcessKB(os.Getpid(), "VmRSS"); !ok || kb < 1024 {
		t.Errorf("VmRSS of this process: %d KiB (ok %v)", kb, ok)
	}
	if _, ok := ProcessKB(os.Getpid(), "NoSuchField"); ok {
		t.Error("a field that does not exist reads as ok")
	}
}
