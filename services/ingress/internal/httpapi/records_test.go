package httpapi

import (
	"context"
	"errors"
	"sort"
	"sync"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/progress"
)

// memRecords stands in for the progress store in the transport's tests (the
// store itself is tested against Redis in pkg/progress, the whole path in e2e).
type memRecords struct {
	mu     sync.Mutex
	anns   map[string]progress.Announcement
	claims map[string]progress.IdempotencyClaim
	err    error // every call fails with it
	// acceptFails: this many Accept calls fail first (the store away a moment).
	acceptFails int
	// counted: a dry run is counted at once (as fanout would); else it never ends.
	counted bool
}

func newMemRecords() *memRecords {
	return &memRecords{anns: map[string]progress.Announcement{}, claims: map[string]progress.IdempotencyClaim{}, counted: true}
}

func (m *memRecords) Accept(_ context.Context, ev *announcement.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	if m.acceptFails > 0 {
		m.acceptFails--
		return errors.New("redis: connection refused")
	}
	a := progress.Announcement{ID: ev.ID, State: progress.StateAccepted, Kind: string(ev.Kind), DryRun: ev.DryRun,
		Priority: ev.Priority, Source: ev.Source, Audience: progress.Audience{PerNode: map[string]int64{}}}
	if ev.DryRun && m.counted {
		a.State = progress.StateDone
		a.Audience = progress.Audience{Members: 3, Online: 2, Recipients: 2, PerNode: map[string]int64{"node1": 2}}
	}
	m.anns[ev.ID] = a
	return nil
}

func (m *memRecords) Claim(_ context.Context, scope, key string, want progress.IdempotencyClaim) (progress.IdempotencyClaim, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return progress.IdempotencyClaim{}, false, m.err
	}
	got, ok := m.claims[scope+" "+key]
	switch {
	case !ok:
		m.claims[scope+" "+key] = want
		return want, true, nil
	case got.Digest != want.Digest:
		return got, false, progress.ErrKeyReused
	}
	return got, false, nil
}

func (m *memRecords) Get(_ context.Context, id string) (progress.Announcement, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return progress.Announcement{}, m.err
	}
	a, ok := m.anns[id]
	if !ok {
		return a, progress.ErrNotFound
	}
	return a, nil
}

func (m *memRecords) List(_ context.Context, state string, limit int) ([]progress.Announcement, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return nil, m.err
	}
	out := []progress.Announcement{}
	for _, a := range m.anns {
		if state == "" || a.State == state {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID > out[j].ID })
	return out[:min(limit, len(out))], nil
}

func (m *memRecords) Cancel(_ context.Context, id, reason string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return "", m.err
	}
	a, ok := m.anns[id]
	if !ok {
		return "", progress.ErrNotFound
	}
	if progress.Terminal(a.State) {
		return a.State, nil
	}
	a.State, a.Reason = progress.StateCancelled, reason
	m.anns[id] = a
	return a.State, nil
}
