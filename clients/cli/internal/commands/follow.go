package commands

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/announcer/announcer/clients/cli/internal/apiclient"
)

// follower polls one announcement until it ends, drawing its progress on
// stderr, and turns Ctrl-C into a question: cancel it, or keep following.
type follower struct {
	env        Env
	api        *apiclient.Client
	interval   time.Duration
	stallAfter time.Duration // 0: never give up on an announcement that does not move
	interrupts <-chan os.Signal
	pending    bool // a Ctrl-C came before following started
	stdin      *bufio.Reader
}

func newFollower(env Env, api *apiclient.Client, ff followFlags, interrupts <-chan os.Signal) *follower {
	return &follower{env: env, api: api, interval: ff.interval, stallAfter: ff.stallAfter, interrupts: interrupts, stdin: bufio.NewReader(env.Stdin)}
}

// followFlags are the flags of following, as send and status share them.
type followFlags struct {
	interval   time.Duration
	stallAfter time.Duration
}

func (ff *followFlags) register(cmd *cobra.Command, what string) {
	f := cmd.Flags()
	f.DurationVar(&ff.interval, "interval", 250*time.Millisecond, "how often to poll "+what)
	f.DurationVar(&ff.stallAfter, "stall-after", DefaultStallAfter,
		"stop following (exit 4) when the announcement's state and figures have not changed for this long; 0 = never")
}

func (ff *followFlags) check() error {
	if ff.interval <= 0 {
		return fmt.Errorf("--interval %v: want > 0", ff.interval)
	}
	if ff.stallAfter < 0 {
		return fmt.Errorf("--stall-after %v: want >= 0", ff.stallAfter)
	}
	return nil
}

type polled struct {
	a   *apiclient.Announcement
	err error
}

type answer struct {
	line string
	eof  bool // stdin ended before a line
}

// follow returns the exit code: 0 done, 1 rejected, failed or an API error,
// 3 cancelled, 4 stalled, 130 interrupted.
//
// Polls and the question run beside the loop (one of each at most), so a
// Ctrl-C is seen at once even while a poll hangs, and a second Ctrl-C while
// the question waits for stdin ends the run.
func (f *follower) follow(ctx context.Context, id string) int {
	out, errw := f.env.Stdout, f.env.Stderr
	view := newProgressView(errw)
	start := time.Now()
	// A record whose progress updates were lost stays "sending" until its
	// TTL: without this, following it never ends.
	stall := stallWatch{after: f.stallAfter}

	pollCtx, stopPolls := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopPolls()
	results := make(chan polled, 1)
	tick := time.NewTimer(0)
	defer tick.Stop()

	var (
		polling      bool
		answers      <-chan answer // non-nil while the question waits
		seen         bool          // a poll has found the announcement
		failingSince time.Time     // first of the polls failing in a row
	)
	ask := func() {
		view.pause()
		fmt.Fprintf(errw, "Cancel announcement %s? [y/N] ", safe(id))
		answers = f.readLine()
	}
	notCancelled := func(why string) int {
		view.pause()
		fmt.Fprintf(errw, "announcer: %s; announcement %s not cancelled (follow it again: announcer status %s --follow)\n", why, safe(id), safe(id))
		return ExitInterrupted
	}
	if f.pending {
		ask()
	}
	for {
		var ticks <-chan time.Time
		if !polling && answers == nil {
			ticks = tick.C
		}
		select {
		case <-ctx.Done():
			return notCancelled(ctx.Err().Error())

		case <-f.interrupts:
			if answers != nil {
				fmt.Fprintln(errw)
				return notCancelled("interrupted")
			}
			ask()

		case ans := <-answers:
			answers = nil
			switch a := strings.ToLower(strings.TrimSpace(ans.line)); {
			case ans.eof && a == "":
				// Without stdin the question cannot be answered, and
				// following on would make Ctrl-C do nothing.
				fmt.Fprintln(errw)
				return notCancelled("no answer on stdin")
			case a == "y" || a == "yes":
				c, stopped, err := f.cancel(ctx, id)
				if stopped {
					fmt.Fprintln(errw)
					view.pause()
					fmt.Fprintf(errw, "announcer: interrupted while cancelling; announcement %s may or may not be cancelled (see: announcer status %s)\n", safe(id), safe(id))
					return ExitInterrupted
				}
				if err == nil {
					fmt.Fprintln(out, summary(c, time.Time{}))
					return ExitCancelled
				}
				report(errw, err)
				// On a 409 it ended meanwhile: the next poll tells how.
			}
			tick.Reset(0)

		case <-ticks:
			polling = true
			wg.Go(func() {
				a, err := f.api.Get(pollCtx, id)
				results <- polled{a, err}
			})

		case r := <-results:
			polling = false
			if answers != nil {
				// Drawn now, the bar would overwrite the question; the
				// poll after the answer draws it again.
				continue
			}
			if r.err != nil {
				if !f.bearable(r.err, seen, &failingSince) {
					view.pause()
					report(errw, r.err)
					return ExitFailed
				}
				view.waiting(r.err)
				tick.Reset(f.interval)
				continue
			}
			seen, failingSince = true, time.Time{}
			view.show(r.a)
			if r.a.State.Terminal() {
				return f.finish(r.a, view, start)
			}
			if stall.stalled(r.a, time.Now()) {
				return f.stalled(r.a, view)
			}
			tick.Reset(f.interval)
		}
	}
}

// bearable reports whether a failed poll is worth repeating: the server is
// briefly away (or a fresh id not yet visible), for at most PollGrace.
func (f *follower) bearable(err error, seen bool, failingSince *time.Time) bool {
	now := time.Now()
	if failingSince.IsZero() {
		*failingSince = now
	}
	if now.Sub(*failingSince) > f.env.PollGrace {
		return false
	}
	return apiclient.Transient(err) || (!seen && apiclient.StatusOf(err) == http.StatusNotFound)
}

func (f *follower) finish(a *apiclient.Announcement, view *progressView, start time.Time) int {
	if a.State == apiclient.StateDone {
		view.complete(a)
		fmt.Fprintln(f.env.Stdout, summary(a, start))
		return ExitOK
	}
	view.pause()
	fmt.Fprintln(f.env.Stdout, summary(a, time.Time{}))
	return exitCode(a.State)
}

// exitCode is how a run about an announcement that ended in state s exits:
// 0 done, 3 cancelled, 1 anything else (rejected, failed).
func exitCode(s apiclient.State) int {
	switch s {
	case apiclient.StateDone:
		return ExitOK
	case apiclient.StateCancelled:
		return ExitCancelled
	}
	return ExitFailed
}

// stalled gives up on a that has not moved for stallAfter. Nothing is
// cancelled: it may be stuck, or only its progress updates lost.
func (f *follower) stalled(a *apiclient.Announcement, view *progressView) int {
	view.pause()
	settled, total := a.Progress()
	id := safe(a.ID)
	fmt.Fprintf(f.env.Stderr, "announcer: announcement %s has made no progress for %s (still %s, %d of %d recipients settled): stuck, or queued behind others; not cancelled.\n"+
		"Look again with: announcer status %s --follow; stop it with: announcer cancel %s\n",
		id, f.stallAfter, safe(string(a.State)), settled, total, id, id)
	fmt.Fprintln(f.env.Stdout, summary(a, time.Time{}))
	return ExitStalled
}

// stallWatch tells when an announcement's state and figures have stayed the
// same for too long.
type stallWatch struct {
	after time.Duration // 0: never
	last  figures
	since time.Time // when last was first seen; zero before the first poll
}

// figures is all of an announcement that moves while it makes progress.
type figures struct {
	state                       apiclient.State
	members, online, recipients int64
	batches                     apiclient.Batches
	stanzas                     apiclient.Stanzas
	shards                      apiclient.Shards
}

func (w *stallWatch) stalled(a *apiclient.Announcement, now time.Time) bool {
	f := figures{a.State, a.Audience.Members, a.Audience.Online, a.Audience.Recipients, a.Batches, a.Stanzas, a.Shards}
	if w.since.IsZero() || f != w.last {
		w.last, w.since = f, now
		return false
	}
	return w.after > 0 && now.Sub(w.since) >= w.after
}

// readLine reads one answer without blocking the loop. A reader left waiting
// when the run ends goes with the process.
func (f *follower) readLine() <-chan answer {
	c := make(chan answer, 1)
	go func() {
		line, err := f.stdin.ReadString('\n')
		c <- answer{line: line, eof: err != nil}
	}()
	return c
}

// summary is the one greppable line a follow or a cancel ends with. It has
// no id=, so that the line "id=<id>" stays the only one starting so.
// The duration comes from the server's times; followStart stands in for a
// done one without them.
func summary(a *apiclient.Announcement, followStart time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "state=%s recipients=%d confirmed=%d dead_lettered=%d invalid=%d resent_batches=%d",
		value(string(a.State)), a.Audience.Recipients, a.Stanzas.Confirmed, a.Stanzas.DeadLettered, a.Stanzas.Invalid, a.Batches.Resent)
	end := a.Times.Done
	if a.State == apiclient.StateCancelled {
		end = a.Times.Cancelled
	}
	switch {
	case !a.Times.Accepted.IsZero() && !end.IsZero() && !end.Before(a.Times.Accepted):
		fmt.Fprintf(&b, " duration=%s", end.Sub(a.Times.Accepted).Round(time.Millisecond))
	case a.State == apiclient.StateDone && !followStart.IsZero():
		fmt.Fprintf(&b, " duration=%s", time.Since(followStart).Round(time.Millisecond))
	}
	if a.Reason != "" {
		fmt.Fprintf(&b, " reason=%s", value(a.Reason))
	}
	return b.String()
}

// value is v for a key=value line: quoted when it would not be one word.
func value(v string) string {
	if v == "" || strings.ContainsAny(v, " \t\"=\\") || safe(v) != v {
		return fmt.Sprintf("%q", v)
	}
	return v
}

// progressView is the progress bar on stderr: a spinner while the audience
// is still being resolved (its size unknown), then a bar of settled stanzas
// out of recipients.
type progressView struct {
	w     io.Writer
	bar   *progressbar.ProgressBar
	total int64  // the bar's total; -1 for the spinner
	desc  string // the bar's description
	drawn bool   // the current line holds the bar
}

func newProgressView(w io.Writer) *progressView { return &progressView{w: w, total: -1} }

func (v *progressView) show(a *apiclient.Announcement) {
	settled, total := a.Progress()
	state := safe(string(a.State))
	if !a.Resolved() && a.State != apiclient.StateDone {
		if v.bar == nil || v.total >= 0 {
			v.reset(-1)
		}
		// The spinner turns once per description, so once per poll.
		v.describe(fmt.Sprintf("%s: %d recipients so far", state, total))
		return
	}
	if v.bar == nil || v.total != total {
		v.reset(total)
	}
	if state != v.desc {
		v.describe(state)
	}
	if total > 0 {
		// The server's counts are input: never past the bar's end. The
		// bar shows the count, so each Set draws it once.
		_ = v.bar.Set64(min(settled, total))
		v.drawn = true
	}
}

// waiting says why the picture is not moving.
func (v *progressView) waiting(err error) {
	msg := "server unavailable, retrying"
	if apiclient.StatusOf(err) == http.StatusNotFound {
		msg = "not visible yet, retrying"
	}
	if v.bar == nil {
		v.reset(-1)
	}
	v.describe(msg)
}

// complete fills the bar: done is 100 % whatever the counts say.
func (v *progressView) complete(a *apiclient.Announcement) {
	if _, total := a.Progress(); v.bar == nil || v.total != total {
		v.reset(total)
	}
	_ = v.bar.Finish()
	v.drawn = true
	v.pause()
}

// pause ends the bar's line so that other text starts on its own.
func (v *progressView) pause() {
	if v.drawn {
		fmt.Fprintln(v.w)
		v.drawn = false
	}
}

func (v *progressView) describe(desc string) {
	v.desc = desc
	v.bar.Describe(desc + " ")
	v.drawn = true
}

// reset replaces the bar: total -1 is the spinner.
func (v *progressView) reset(total int64) {
	if v.bar != nil {
		_ = v.bar.Clear()
	}
	v.total, v.desc = total, ""
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(v.w),
		progressbar.OptionSetWidth(30),
		// 0: the spinner turns per poll instead of on a ticker goroutine
		// of the library's that outlives a bar never finished.
		progressbar.OptionSetSpinnerChangeInterval(0),
		progressbar.OptionSetElapsedTime(true),
	}
	max := total
	switch {
	case total == 0:
		max = 1 // an empty audience is still a bar that can reach 100 %
	case total > 0:
		opts = append(opts, progressbar.OptionShowCount())
	}
	v.bar = progressbar.NewOptions64(max, opts...)
}

// cancel asks the server to cancel id, retries included; another interrupt
// stops it (stopped), since a server that does not answer would otherwise
// hold the run for every retry.
func (f *follower) cancel(ctx context.Context, id string) (a *apiclient.Announcement, stopped bool, err error) {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		a, err = f.api.Cancel(ctx, id)
	}()
	select {
	case <-done:
		return a, false, err
	case <-f.interrupts:
		stop()
		<-done
		return nil, true, nil
	}
}
