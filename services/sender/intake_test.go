package main

import "testing"

// The own lanes open only when both the probe answered and the watcher
// holds the topic, in either order; a probe that answers while the topic
// is handed over leaves them closed.
func TestIntakeWantsTheProbeAndTheWatcher(t *testing.T) {
	in := newIntake(false)
	if in.gate.Open() {
		t.Fatal("open before the probe answered")
	}
	in.Set(false) // handed over while the probe waits
	in.probeAnswered()
	if in.gate.Open() {
		t.Fatal("the probe's answer reopened a topic handed over")
	}
	in.Set(true)
	if !in.gate.Open() {
		t.Fatal("closed with the topic back and the probe answered")
	}
	if in.Set(true) {
		t.Fatal("Set(true) on an open intake reported a change")
	}
	if !newIntake(true).gate.Open() {
		t.Fatal("without a probe the intake starts open")
	}
}
