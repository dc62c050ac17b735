// Package audiencetest holds in-memory fakes of the audience ports and the
// contract suites that every adapter (and every fake) must pass, so a fake
// used in unit tests behaves like the real MySQL and Redis adapters.
package audiencetest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/services/fanout/internal/audience"
)

// Members is an in-memory MemberStore.
type Members struct {
	mu       sync.Mutex
	channels map[int64]channelRow
	members  []memberRow // in member_id order
	nextID   int64
	// Fail, when set, is called before every method; a non-nil result is returned as the error.
	Fail func(op string) error
}

type channelRow struct {
	strID, state string
}

type memberRow struct {
	id, channel int64
	username    string
}

// NewMembers returns an empty store.
func NewMembers() *Members { return &Members{channels: map[int64]channelRow{}} }

var _ audience.MemberStore = (*Members)(nil)

// AddChannel adds or replaces a channel.
func (s *Members) AddChannel(_ context.Context, id int64, strID, state string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.channels[id] = channelRow{strID, state}
	return nil
}

// AddMembers appends members (member_id ascending, like AUTO_INCREMENT).
func (s *Members) AddMembers(_ context.Context, channelID int64, usernames ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range usernames {
		s.nextID++
		s.members = append(s.members, memberRow{s.nextID, channelID, u})
	}
	return nil
}

// AddMembersAt adds members with ids firstID, firstID+1, … (ids not taken:
// a schema may start its ids anywhere, below zero too).
func (s *Members) AddMembersAt(_ context.Context, channelID, firstID int64, usernames ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, u := range usernames {
		id := firstID + int64(i)
		at, taken := slices.BinarySearchFunc(s.members, id, func(m memberRow, id int64) int { return cmp.Compare(m.id, id) })
		if taken {
			return fmt.Errorf("member_id %d taken", id)
		}
		s.members = slices.Insert(s.members, at, memberRow{id, channelID, u})
		s.nextID = max(s.nextID, id)
	}
	return nil
}

func (s *Members) fail(op string) error {
	if s.Fail != nil {
		return s.Fail(op)
	}
	return nil
}

// Channel implements audience.MemberStore.
func (s *Members) Channel(_ context.Context, ref announcement.ChannelRef) (audience.Channel, error) {
	if err := s.fail("channel"); err != nil {
		return audience.Channel{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, c := range s.channels {
		if (ref.IsString && c.strID == ref.StringID) || (!ref.IsString && id == ref.ID) {
			return audience.Channel{ID: id, State: c.state, Accepted: accepted(c.state)}, nil
		}
	}
	return audience.Channel{}, audience.ErrChannelNotFound
}

// accepted is channel_state = 'ACCEPTED' under MariaDB's default
// collations (utf8mb4_general_ci and the like): case-insensitive, trailing
// spaces ignored.
func accepted(state string) bool {
	return strings.EqualFold(strings.TrimRight(state, " "), audience.StateAccepted)
}

// Members implements audience.MemberStore.
func (s *Members) Members(_ context.Context, channelID, afterID, beforeID int64, limit int, dst []audience.Member) ([]audience.Member, error) {
	dst = dst[:0]
	if err := s.fail("members"); err != nil {
		return dst, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i := sort.Search(len(s.members), func(i int) bool { return s.members[i].id > afterID })
	for ; i < len(s.members) && len(dst) < limit; i++ {
		m := s.members[i]
		if beforeID != audience.NoUpperBound && m.id >= beforeID {
			break
		}
		if m.channel == channelID {
			dst = append(dst, audience.Member{ID: m.id, Username: m.username})
		}
	}
	return dst, nil
}

// Starts implements audience.MemberStore.
func (s *Members) Starts(_ context.Context, channelID int64, every int) ([]int64, error) {
	if err := s.fail("starts"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []int64
	for _, m := range s.members {
		if m.channel == channelID {
			ids = append(ids, m.id)
		}
	}
	slices.Sort(ids)
	var starts []int64
	for i := 0; i < len(ids); i += max(every, 1) {
		starts = append(starts, ids[i])
	}
	return starts, nil
}

// Presence is an in-memory Presence in the first generation's Redis model.
type Presence struct {
	mu     sync.Mutex
	where  map[string]string
	NoScan bool // behave like the REST source: no listing
	// Fail, when set, is called before every method; a non-nil result is returned as the error.
	Fail func(op string) error
}

// NewPresence returns a presence source where nobody is online.
func NewPresence() *Presence { return &Presence{where: map[string]string{}} }

var _ audience.Presence = (*Presence)(nil)

// SetOnline marks users online at the server address.
func (p *Presence) SetOnline(_ context.Context, address string, usernames ...string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, u := range usernames {
		p.where[u] = address
	}
	return nil
}

// SetOffline marks users offline.
func (p *Presence) SetOffline(_ context.Context, usernames ...string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, u := range usernames {
		delete(p.where, u)
	}
	return nil
}

// Lookup implements audience.Presence.
func (p *Presence) Lookup(_ context.Context, usernames []string, where []string) error {
	if p.Fail != nil {
		if err := p.Fail("lookup"); err != nil {
			return err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, u := range usernames {
		where[i] = p.where[u]
		if where[i] != "" && p.NoScan {
			where[i] = audience.NoAddress
		}
	}
	return nil
}

// Scan implements audience.Presence: the cursor is an index into the sorted set members.
func (p *Presence) Scan(_ context.Context, address string, cursor uint64, count int) ([]string, uint64, error) {
	if p.NoScan {
		return nil, 0, audience.ErrScanUnsupported
	}
	if p.Fail != nil {
		if err := p.Fail("scan"); err != nil {
			return nil, 0, err
		}
	}
	p.mu.Lock()
	var all []string
	for u, a := range p.where {
		if a == address {
			all = append(all, u)
		}
	}
	p.mu.Unlock()
	slices.Sort(all)
	start := min(int(cursor), len(all))
	end := min(start+count, len(all))
	next := uint64(end)
	if end == len(all) {
		next = 0
	}
	return all[start:end], next, nil
}

// Sink records batches and tasks, like Kafka after acks=all.
type Sink struct {
	mu      sync.Mutex
	Batches []announcement.Batch
	Tasks   []announcement.Event
	// Fail, when set, is called before every write; a non-nil result fails it (nothing recorded).
	Fail func(op string) error
	// Partial, when set, names the batches of a write that fail (the others are
	// recorded, as Kafka keeps what it acknowledged).
	Partial func(batches []announcement.Batch) []int
	// PartialTasks does the same for the shard tasks of a write.
	PartialTasks func(tasks []announcement.Event) []int
	// Block, when set, receives before every write returns (tests hold writes in flight).
	Block chan struct{}
	inFly int
	// MaxInFlight is the most writes seen in progress at once.
	MaxInFlight int
}

var (
	_ audience.BatchSink = (*Sink)(nil)
	_ audience.TaskSink  = (*Sink)(nil)
)

func (s *Sink) enter() func() {
	s.mu.Lock()
	s.inFly++
	s.MaxInFlight = max(s.MaxInFlight, s.inFly)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.inFly--
		s.mu.Unlock()
	}
}

// InFlight is the number of writes in progress now.
func (s *Sink) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFly
}

// WriteBatches implements audience.BatchSink.
func (s *Sink) WriteBatches(ctx context.Context, batches []announcement.Batch) error {
	defer s.enter()()
	if s.Block != nil {
		select {
		case <-s.Block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return write(s, "batches", &s.Batches, batches, s.Partial, func(b announcement.Batch) announcement.Batch {
		b.Recipients = slices.Clone(b.Recipients)
		return b
	})
}

// write is a write of records (kind: "batches" or "tasks", as Fail is told):
// it fails as Fail says, and otherwise keeps (through keep) in dst the
// records partial does not name, as Kafka keeps what it acknowledged,
// reporting the others as a partial write.
func write[T any](s *Sink, kind string, dst *[]T, records []T, partial func([]T) []int, keep func(T) T) error {
	if s.Fail != nil {
		if err := s.Fail(kind); err != nil {
			return err
		}
	}
	var failed []int
	if partial != nil {
		failed = partial(records)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range records {
		if !slices.Contains(failed, i) {
			*dst = append(*dst, keep(r))
		}
	}
	if len(failed) > 0 {
		return &kafkabus.PartialWriteError{Failed: failed, Err: errors.New("leader not available")}
	}
	return nil
}

// WriteTasks implements audience.TaskSink.
func (s *Sink) WriteTasks(_ context.Context, tasks []announcement.Event) error {
	return write(s, "tasks", &s.Tasks, tasks, s.PartialTasks, func(t announcement.Event) announcement.Event { return t })
}

// Recipients returns node → usernames in (announcement, shard, seq) order:
// the order of creation, whatever order concurrent writes were acked in.
func (s *Sink) Recipients() map[string][]string {
	s.mu.Lock()
	batches := slices.Clone(s.Batches)
	s.mu.Unlock()
	slices.SortFunc(batches, func(a, b announcement.Batch) int {
		if c := strings.Compare(a.AnnouncementID, b.AnnouncementID); c != 0 {
			return c
		}
		if a.Shard != b.Shard {
			return a.Shard - b.Shard
		}
		return a.Seq - b.Seq
	})
	out := map[string][]string{}
	for _, b := range batches {
		out[b.Node] = append(out[b.Node], b.Recipients...)
	}
	return out
}

// Names returns prefix0..prefix(n-1).
func Names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = prefix + strconv.Itoa(i)
	}
	return out
}
