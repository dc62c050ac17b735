// Package audience is fanout's use case: it resolves one announcement event
// into per-node delivery batches.
//
// A channel event is split into member-id ranges (shard tasks) that any
// fanout worker can take; a shard streams its members in keyset pages, keeps
// the online ones, routes each to the ejabberd node its presence names and
// hands full batches to the sink while the next page is already being read.
// Resolve returns only when every batch (or shard task) it produced has been
// acknowledged, so the caller may then commit its input.
//
// Transient failures of MySQL, presence or Kafka are retried with backoff
// until ctx ends: a failing dependency never turns into "offline" or "no
// members".
package audience

import (
	"context"
	"errors"
	"math"
	"time"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/progress"
)

// StateAccepted is the only channel state whose members are announced to
// (as the database's collation compares it: see Channel.Accepted).
const StateAccepted = "ACCEPTED"

// NoAddress is the presence address of a user who is online on a server the
// presence source does not name (the REST source). Such users are routed by hash.
const NoAddress = "?"

// ErrChannelNotFound is returned by a MemberStore for an unknown channel.
var ErrChannelNotFound = errors.New("channel not found")

// ErrPermanent marks a failure that retrying is not expected to cure (the
// database lacks a table or column the store reads, or the account may not
// read it). It is still retried for Config.PermanentRetryFor, since a failover
// to a replica whose grants lag or a table swap cures itself; then the
// announcement is dead-lettered with the reason instead of holding its
// partition forever.
var ErrPermanent = errors.New("permanent failure")

// DefaultPermanentRetryFor is the default Config.PermanentRetryFor.
const DefaultPermanentRetryFor = 30 * time.Second

// ErrScanUnsupported is returned by a Presence that cannot list online users.
var ErrScanUnsupported = errors.New("presence source cannot list online users")

// Channel is a row of ws_channel_data.
type Channel struct {
	ID    int64
	State string
	// Accepted is the database's own answer to channel_state = 'ACCEPTED', as
	// the first generation filtered: under the usual _ci collations it ignores
	// case and trailing spaces.
	Accepted bool
}

// Member is a row of ws_channel_members.
type Member struct {
	ID       int64
	Username string
}

// MemberStore reads channels and their members.
type MemberStore interface {
	// Channel finds a channel by numeric or string id; ErrChannelNotFound when absent.
	Channel(ctx context.Context, ref announcement.ChannelRef) (Channel, error)
	// Members appends to dst[:0] up to limit members of the channel with
	// afterID < member_id (and member_id < beforeID unless beforeID is
	// NoUpperBound), in member_id order.
	Members(ctx context.Context, channelID, afterID, beforeID int64, limit int, dst []Member) ([]Member, error)
	// Starts returns the member_id of the channel's members number 0, every,
	// 2·every… in member_id order: where shards of every members start (none
	// for no members). It reads about as many index entries as the channel has.
	Starts(ctx context.Context, channelID int64, every int) ([]int64, error)
}

// NoUpperBound is the beforeID of a member range open at its end. As a real
// bound it would select nothing (no member_id is below it), so unlike 0 it
// never stands for one.
const NoUpperBound int64 = math.MinInt64

// Presence says who is online and where.
type Presence interface {
	// Lookup sets where[i] to the address of the server usernames[i] is online on:
	// "" when offline, NoAddress when online on an unnamed server. len(where) == len(usernames).
	Lookup(ctx context.Context, usernames []string, where []string) error
	// Scan returns a page of the users online on the server address, SSCAN-style:
	// next == 0 ends the scan. ErrScanUnsupported when the source cannot list.
	Scan(ctx context.Context, address string, cursor uint64, count int) (usernames []string, next uint64, err error)
}

// BatchSink stores delivery batches durably (Kafka acks=all); it returns when all are acknowledged.
// When only some were, it returns a *kafkabus.PartialWriteError naming the others.
type BatchSink interface {
	WriteBatches(ctx context.Context, batches []announcement.Batch) error
}

// TaskSink queues shard tasks for any fanout worker; it returns when all are acknowledged.
// When only some were, it returns a *kafkabus.PartialWriteError naming the others.
type TaskSink interface {
	WriteTasks(ctx context.Context, tasks []announcement.Event) error
}

// Progress is the announcements' progress store as fanout uses it (a
// *progress.Tracker): where a task starts, what it resolved, whether the
// announcement was cancelled. Its failures never stop a task.
type Progress interface {
	// Begin marks the announcement resolving; finished says this task's
	// unit was done before (the event is a copy).
	Begin(ctx context.Context, ev *announcement.Event) (state string, finished bool, err error)
	// Plan records the announcement's shard count; split once they are queued.
	Plan(ctx context.Context, id string, shards int, split bool) error
	// Split records a channel's cut into shards unless one was recorded
	// before, and returns the recorded cut (p itself on an error).
	Split(ctx context.Context, id string, p progress.SplitPlan) (progress.SplitPlan, error)
	Emitted(id string, shard, batches int)
	ShardDone(id string, shard int, c progress.ShardCounts)
	// ShardFailed records a shard that could not be resolved; the others go
	// on, and the announcement ends failed once they are done.
	ShardFailed(id string, shard int, reason string)
	Finish(id, state, reason string)
	Cancelled(ctx context.Context, id string) bool
}

// Outcome is how a task ended.
type Outcome string

const (
	Delivered Outcome = "delivered" // every batch acknowledged
	Split     Outcome = "split"     // every shard task acknowledged
	Rejected  Outcome = "rejected"  // finished without recipients, for Reason
	Counted   Outcome = "counted"   // a dry run: counted, nothing written
	Cancelled Outcome = "cancelled" // the announcement was cancelled: stopped between pages
	Duplicate Outcome = "duplicate" // a copy of a task already finished: nothing done
)

// Rejection reasons (metric label values).
const (
	ReasonChannelNotFound    = "channel_not_found"
	ReasonChannelNotAccepted = "channel_not_accepted"
	ReasonScanUnsupported    = "all_online_unsupported"
	ReasonUnknownKind        = "unknown_kind"
)

// Result describes one resolved task.
type Result struct {
	Outcome Outcome
	Reason  string // when Rejected
	// Audience is the members read, users listed or online users scanned.
	Audience int
	// Online is how many of them presence says are online.
	Online int
	// Recipients is how many were put in batches (the online ones, for channels).
	Recipients int
	Batches    int
	Shards     int            // shard tasks queued, when Split
	PerNode    map[string]int // recipients per node
}
