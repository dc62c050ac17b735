package main

import (
	"sync"

	"github.com/announcer/announcer/pkg/stage"
)

// intake opens the node's own lanes while the failover watcher has them
// (until it hands the topic over) and the multicast probe has answered. A
// probe that ends while the node is handed over must not take its topic
// back from the sender that holds it.
type intake struct {
	mu      sync.Mutex
	gate    *stage.Gate
	watcher bool // the watcher's wish; it starts by holding the topic
	probed  bool
}

func newIntake(probed bool) *intake {
	in := &intake{watcher: true, probed: probed}
	in.gate = stage.NewGate(probed)
	return in
}

// Set is the failover watcher's (failover.Gate).
func (in *intake) Set(open bool) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.watcher = open
	return in.gate.Set(in.watcher && in.probed)
}

// probeAnswered is the multicast probe's: its answer (or failure) came.
func (in *intake) probeAnswered() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.probed = true
	in.gate.Set(in.watcher && in.probed)
}
