package audience

import (
	"context"
	"errors"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/announcer/announcer/pkg/announcement"
)

// router maps presence addresses to nodes.
type router struct {
	names  []string
	byAddr map[string]int
}

func newRouter(nodes []Node) *router {
	r := &router{byAddr: map[string]int{}}
	for i, n := range nodes {
		r.names = append(r.names, n.Name)
		for _, a := range n.PresenceAddresses {
			r.byAddr[a] = i
		}
	}
	return r
}

// node returns the node for a recipient: the one its presence address names,
// else one chosen by a hash of the username (stable, so retries route alike).
func (r *router) node(username, addr string) (idx int, hashed bool) {
	if i, ok := r.byAddr[addr]; ok {
		return i, false
	}
	return int(fnv32a(username) % uint32(len(r.names))), true
}

func fnv32a(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// emitter cuts routed recipients into batches and writes them in the
// background; finish waits for every acknowledgement.
type emitter struct {
	r      *Resolver
	ev     *announcement.Event
	shard  int
	inc    uint64 // [inc_id] of the next recipient to be cut into a batch
	seq    int
	bufs   [][]string // per node
	sizes  []int      // encoded size estimate of each node's batch so far
	base   int        // encoded size estimate of a batch without recipients
	ready  []announcement.Batch
	g      *errgroup.Group
	ctx    context.Context // ends when the task's ctx ends or a write failed
	task   context.Context // the task's ctx (errgroup cancels ctx when Wait returns)
	cancel context.CancelFunc
	res    Result
	hashed int
	skip   int
	acked  atomic.Int64 // batches acknowledged so far
}

func (r *Resolver) newEmitter(ctx context.Context, ev *announcement.Event, shard int, firstInc uint64) *emitter {
	ctx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.cfg.MaxInFlight)
	return &emitter{
		r: r, ev: ev, shard: shard, inc: firstInc,
		bufs:  make([][]string, len(r.cfg.Nodes)),
		sizes: make([]int, len(r.cfg.Nodes)),
		base:  batchOverhead + jsonLen(ev.ID) + jsonLen(ev.Template),
		g:     g, ctx: gctx, task: ctx, cancel: cancel,
		res: Result{PerNode: make(map[string]int, len(r.cfg.Nodes))},
	}
}

// add routes one recipient; node >= 0 forces the node (all-online scans know it).
func (e *emitter) add(username, addr string, node int) {
	if username == "" {
		e.skip++
		return
	}
	if node < 0 {
		var hashed bool
		node, hashed = e.r.route.node(username, addr)
		if hashed {
			e.hashed++
		}
	}
	b := e.bufs[node]
	size := jsonLen(username) + 1
	// A batch also ends before it would outgrow a Kafka message.
	if len(b) > 0 && e.r.cfg.MaxBatchBytes > 0 && e.base+e.sizes[node]+size > e.r.cfg.MaxBatchBytes {
		e.cut(node, b)
		b = nil
	}
	if b == nil {
		b = make([]string, 0, e.r.cfg.BatchSize)
		e.sizes[node] = 0
	}
	b = append(b, username)
	e.sizes[node] += size
	if len(b) >= e.r.cfg.BatchSize {
		e.cut(node, b)
		b = nil
	}
	e.bufs[node] = b
}

// batchOverhead bounds a batch's JSON and Kafka record framing besides its id,
// template and recipients (field names, numbers, timestamp, key, headers).
const batchOverhead = 512

// jsonLen bounds the length of s as a JSON string: bytes that the batch
// encoding escapes (controls, quotes, backslash; announcement.Batch.Encode
// leaves <>& alone) count 6, and so do non-ASCII bytes, which an invalid
// UTF-8 sequence turns into \ufffd.
func jsonLen(s string) int {
	n := 2
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c < 0x20 || c == '"' || c == '\\' || c >= 0x80:
			n += 6
		default:
			n++
		}
	}
	return n
}

func (e *emitter) cut(node int, recipients []string) {
	e.ready = append(e.ready, announcement.Batch{
		AnnouncementID: e.ev.ID,
		Shard:          e.shard,
		Seq:            e.seq,
		Node:           e.r.route.names[node],
		Template:       e.ev.Template,
		Persist:        e.ev.Persist,
		FirstIncID:     e.inc,
		Recipients:     recipients,
		CreatedAt:      e.ev.CreatedAt,
		Priority:       e.ev.Priority,
	})
	e.seq++
	e.inc += uint64(len(recipients))
	e.res.Recipients += len(recipients)
	e.res.PerNode[e.r.route.names[node]] += len(recipients)
}

// send hands the batches cut so far to a background write. It blocks while
// MaxInFlight writes await acks, which slows reading down to Kafka's pace.
func (e *emitter) send() {
	if len(e.ready) == 0 || e.ctx.Err() != nil {
		return
	}
	batches := e.ready
	e.ready = nil
	if e.ev.DryRun {
		return // counted by cut, never written
	}
	e.g.Go(func() error {
		if err := writeAll(e.ctx, e.r, batches, e.r.batches.WriteBatches); err != nil {
			return err
		}
		for i := range batches {
			e.r.m.batches.WithLabelValues(batches[i].Node).Inc()
			e.r.m.perNode.WithLabelValues(batches[i].Node).Add(float64(len(batches[i].Recipients)))
		}
		e.r.progress.Emitted(e.ev.ID, e.shard, int(e.acked.Add(int64(len(batches)))))
		return nil
	})
}

// finish cuts the partial batches, writes them and waits for every ack.
func (e *emitter) finish() (Result, error) {
	for node, b := range e.bufs {
		if len(b) > 0 {
			e.cut(node, b)
			e.bufs[node] = nil
		}
	}
	e.send()
	if err := e.g.Wait(); err != nil {
		return Result{}, err
	}
	// send skips writing once the task's ctx ended: then nothing may count as delivered.
	if err := e.task.Err(); err != nil {
		return Result{}, err
	}
	e.r.m.hashed.Add(float64(e.hashed))
	e.r.m.skipped.Add(float64(e.skip))
	e.res.Outcome = Delivered
	if e.ev.DryRun {
		e.res.Outcome = Counted
	}
	e.res.Batches = e.seq
	return e.res, nil
}

// cancelled stops the task of a cancelled announcement between pages: what
// was written stays written (the senders skip it), nothing more is read.
func (e *emitter) cancelled() (Result, error) {
	e.cancel()
	_ = e.g.Wait()
	return Result{Outcome: Cancelled, Audience: e.res.Audience}, nil
}

// abort stops the writes and returns the error that ended the task: a write's
// own failure when one failed first, else err.
func (e *emitter) abort(err error) error {
	e.cancel()
	if werr := e.g.Wait(); werr != nil && !errors.Is(werr, context.Canceled) {
		return werr
	}
	return err
}

func (e *emitter) stop() {
	e.cancel()
	_ = e.g.Wait()
}
