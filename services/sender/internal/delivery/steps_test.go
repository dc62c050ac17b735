package delivery

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/progress"
)

// fakeProgress records steps and resends, answers a resume position, and
// says "cancelled" from a given check on.
type fakeProgress struct {
	mu          sync.Mutex
	steps       []progress.Step
	resent      []int
	dead        []string
	position    int // Position's answer for any digest but "-"
	cancelAfter int // Cancelled from this check on (0 = never)
	checks      int
}

func (p *fakeProgress) Fenced(_ string, s progress.Step) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.steps = append(p.steps, s)
}

func (p *fakeProgress) Resent(_ string, written int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resent = append(p.resent, written)
}

func (p *fakeProgress) Dead(_, batch string, _ int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dead = append(p.dead, batch)
}

func (p *fakeProgress) Position(_ context.Context, _, _, digest string) (int, error) {
	if digest == "-" {
		return 0, nil
	}
	return p.position, nil
}

func (p *fakeProgress) Cancelled(context.Context, string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.checks++
	return p.cancelAfter > 0 && p.checks >= p.cancelAfter
}

func users(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("u%d", i)
	}
	return out
}

// slowOptions make a batch of 60 take about 0.6 s, fenced every 100 ms.
func slowOptions(p *fakeProgress) Options {
	return Options{RatePerConn: 100, StepInterval: 100 * time.Millisecond, Progress: p}
}

// deliverSlowly delivers b on one link with slowOptions(p) and returns the
// link and the sender's metrics.
func deliverSlowly(t *testing.T, p *fakeProgress, b announcement.Batch) (*fakeLink, *Metrics) {
	t.Helper()
	l := &fakeLink{}
	s, m := newSender(t, &fakeLinks{links: []*fakeLink{l}}, slowOptions(p))
	if err := s.Deliver(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	return l, m
}

// A batch the rate limit makes slow is fenced in steps; each step is
// recorded, positions grow, and the steps add up to the batch.
func TestSlowBatchIsFencedInSteps(t *testing.T) {
	p := &fakeProgress{}
	l, _ := deliverSlowly(t, p, batch(append(users(59), "bad user")...))
	if len(p.steps) < 3 {
		t.Fatalf("%d steps for a 0.6 s batch fenced every 100 ms", len(p.steps))
	}
	confirmed, invalid, last := 0, 0, 0
	for _, st := range p.steps {
		if st.Pos <= last || st.Len != 60 || st.Digest == "-" || st.Batch != "0/0" {
			t.Fatalf("steps %+v", p.steps)
		}
		last = st.Pos
		confirmed += st.Confirmed
		invalid += st.Invalid
	}
	if last != 60 || confirmed != 59 || invalid != 1 {
		t.Fatalf("steps end at %d with %d confirmed, %d invalid; want 60, 59, 1", last, confirmed, invalid)
	}
	if fences := strings.Count(strings.Join(l.ops, " "), "fence"); fences != len(p.steps) {
		t.Fatalf("%d fences for %d recorded steps", fences, len(p.steps))
	}
}

// A restarted sender resumes a slow batch at the position an earlier
// attempt fenced, and a connection lost mid-batch resends from the last step.
func TestSlowBatchResumes(t *testing.T) {
	p := &fakeProgress{position: 30}
	l, m := deliverSlowly(t, p, batch(users(60)...))
	if strings.Contains(l.written.String(), "'u29@") || !strings.Contains(l.written.String(), "'u30@localhost'") {
		t.Fatalf("resumed at the wrong place: %.200s…", l.written.String())
	}
	if got := testutil.ToFloat64(m.resumed); got != 30 {
		t.Fatalf("resumed_recipients_total = %v, want 30", got)
	}

	p = &fakeProgress{}
	first := &fakeLink{fenceErr: lostErr{}, failFence: 3} // lost at the third fence
	second := &fakeLink{slot: 1}
	s, _ := newSender(t, &fakeLinks{links: []*fakeLink{first, second}}, slowOptions(p))
	if err := s.Deliver(context.Background(), batch(users(60)...)); err != nil {
		t.Fatal(err)
	}
	from := p.steps[1].Pos // the last step fenced on the first connection
	if strings.Contains(second.written.String(), fmt.Sprintf("'u%d@", from-1)) ||
		!strings.Contains(second.written.String(), fmt.Sprintf("'u%d@localhost'", from)) {
		t.Fatalf("resent from the wrong place (last step %d): %.200s…", from, second.written.String())
	}
	if len(p.resent) != 1 || p.resent[0] == 0 || p.steps[len(p.steps)-1].Pos != 60 {
		t.Fatalf("resent %v, steps %+v", p.resent, p.steps)
	}
}

// A cancel stops a slow batch between chunks: what was written is fenced and
// recorded, the rest is never sent; a batch of a cancelled announcement that
// has not started is skipped.
func TestCancelStopsABatch(t *testing.T) {
	p := &fakeProgress{cancelAfter: 4}
	l, m := deliverSlowly(t, p, batch(users(60)...))
	sent := strings.Count(l.written.String(), "<message")
	last := p.steps[len(p.steps)-1]
	if sent == 0 || sent >= 60 || last.Pos != sent || l.ops[len(l.ops)-1] != "fence" {
		t.Fatalf("%d sent, last step %+v, ops %v", sent, last, l.ops)
	}
	if got := testutil.ToFloat64(m.batches.WithLabelValues("cancelled")); got != 1 {
		t.Fatalf("batches_total{cancelled} = %v", got)
	}

	p = &fakeProgress{cancelAfter: 1}
	l = &fakeLink{}
	s, _ := newSender(t, &fakeLinks{links: []*fakeLink{l}}, Options{Progress: p})
	if err := s.Deliver(context.Background(), batch("u1", "u2")); err != nil || l.written.Len() != 0 || len(p.steps) != 0 {
		t.Fatalf("a cancelled announcement's batch: err %v, written %q, steps %v", err, l.written.String(), p.steps)
	}
}
