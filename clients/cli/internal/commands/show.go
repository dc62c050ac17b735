package commands

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/announcer/announcer/clients/cli/internal/apiclient"
)

// timeLayout is the API's own: RFC 3339, milliseconds, UTC.
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

func newStatus(env Env, g *globals) *cobra.Command {
	var (
		follow bool
		asJSON bool
		ff     followFlags
	)
	cmd := &cobra.Command{
		Use:   "status ID",
		Short: "Show an announcement (--follow: its progress until it ends)",
		Long: `Show an announcement as "key: value" lines, or its JSON as the server sent it.

With --follow, show its progress bar until it ends and exit as send does
(0 done, 1 rejected or failed, 3 cancelled, 4 no progress for --stall-after);
Ctrl-C asks whether to cancel it. Without it, exit 0 whatever its state.`,
		Args: idArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := ff.check(); err != nil {
				return err
			}
			api, err := g.client(env)
			if err != nil {
				return err
			}
			if follow {
				interrupts, stop := env.Interrupts()
				defer stop()
				return exit(newFollower(env, api, ff, interrupts).follow(cmd.Context(), args[0]))
			}
			a, err := api.Get(cmd.Context(), args[0])
			if err != nil {
				return failed(err)
			}
			if asJSON {
				fmt.Fprintf(env.Stdout, "%s\n", a.Raw)
				return nil
			}
			printAnnouncement(env.Stdout, a)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&follow, "follow", false, "follow its progress until it ends")
	f.BoolVar(&asJSON, "json", false, "print the JSON as the server sent it")
	ff.register(cmd, "with --follow")
	cmd.MarkFlagsMutuallyExclusive("follow", "json")
	return cmd
}

func newCancel(env Env, g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel an announcement and print its final counts",
		Long: `Cancel an announcement and print one line with its state and counts.
Cancelling one already cancelled succeeds; one already done, rejected or
failed is an error (exit 1).`,
		Args: idArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			api, err := g.client(env)
			if err != nil {
				return err
			}
			a, err := api.Cancel(cmd.Context(), args[0])
			if err != nil {
				return failed(err)
			}
			fmt.Fprintln(env.Stdout, summary(a, time.Time{}))
			return nil
		},
	}
}

func newList(env Env, g *globals) *cobra.Command {
	var (
		state string
		limit int
	)
	cmd := &cobra.Command{
		Use:   "list [--state S] [--limit N]",
		Short: "List announcements, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opt := apiclient.ListOptions{State: apiclient.State(state)}
			if state != "" && !slices.Contains(apiclient.States, opt.State) {
				return fmt.Errorf("--state %q: want one of %s", state, joinStates())
			}
			if cmd.Flags().Changed("limit") {
				if limit < 1 || limit > 1000 {
					return fmt.Errorf("--limit %d: want 1..1000", limit)
				}
				opt.Limit = limit
			}
			api, err := g.client(env)
			if err != nil {
				return err
			}
			list, err := api.List(cmd.Context(), opt)
			if err != nil {
				return failed(err)
			}
			printList(env.Stdout, list)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", "", "only announcements in this state ("+joinStates()+")")
	f.IntVar(&limit, "limit", 20, "at most this many (1..1000)")
	return cmd
}

func joinStates() string {
	s := make([]string, len(apiclient.States))
	for i, st := range apiclient.States {
		s[i] = string(st)
	}
	return strings.Join(s, ", ")
}

func printList(w io.Writer, list []*apiclient.Announcement) {
	// The server sends newest first; sorting again costs nothing and keeps
	// the promise if it ever does not. Stable: equal times keep its order.
	slices.SortStableFunc(list, func(a, b *apiclient.Announcement) int {
		return b.Times.Accepted.Compare(a.Times.Accepted)
	})
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tKIND\tRECIPIENTS\tCONFIRMED\tACCEPTED")
	for _, a := range list {
		kind := safe(a.Kind)
		if a.DryRun {
			kind += "(dry-run)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", safe(a.ID), safe(string(a.State)), orDash(kind),
			a.Audience.Recipients, a.Stanzas.Confirmed, formatTime(a.Times.Accepted))
	}
	_ = tw.Flush()
}

func printAnnouncement(w io.Writer, a *apiclient.Announcement) {
	kv := newKV(w)
	kv.add("id", safe(a.ID))
	kv.add("state", safe(string(a.State)))
	if a.Reason != "" {
		kv.add("reason", safe(a.Reason))
	}
	kv.add("kind", orDash(safe(a.Kind)))
	if a.ChannelID != nil {
		kv.add("channel_id", safe(a.ChannelID.String()))
	}
	kv.add("priority", orDash(safe(a.Priority)))
	kv.add("dry_run", a.DryRun)
	kv.add("persist", a.Persist)
	kv.add("source", orDash(safe(a.Source)))
	final := ""
	if !a.Resolved() {
		final = " (so far)"
	}
	kv.add("members", fmt.Sprint(a.Audience.Members, final))
	kv.add("online", fmt.Sprint(a.Audience.Online, final))
	kv.add("recipients", fmt.Sprint(a.Audience.Recipients, final))
	kv.addPerNode(a.Audience.PerNode)
	settled, total := a.Progress()
	if total > 0 {
		kv.add("progress", fmt.Sprintf("%d/%d (%d%%)", settled, total, min(int64(float64(settled)/float64(total)*100), 100)))
	} else {
		kv.add("progress", fmt.Sprintf("%d/%d", settled, total))
	}
	b := a.Batches
	kv.add("batches", fmt.Sprintf("planned=%d emitted=%d done=%d resent=%d", b.Planned, b.Emitted, b.Done, b.Resent))
	s := a.Stanzas
	kv.add("stanzas", fmt.Sprintf("sent=%d confirmed=%d dead_lettered=%d invalid=%d persisted=%d", s.Sent, s.Confirmed, s.DeadLettered, s.Invalid, s.Persisted))
	kv.add("shards", fmt.Sprintf("%d/%d", a.Shards.Done, a.Shards.Total))
	t := a.Times
	for _, st := range []struct {
		name string
		at   time.Time
	}{
		{"accepted", t.Accepted}, {"resolving", t.Resolving}, {"sending", t.Sending},
		{"resolved", t.Resolved}, {"done", t.Done}, {"cancelled", t.Cancelled},
	} {
		if !st.at.IsZero() {
			kv.add(st.name, formatTime(st.at))
		}
	}
	kv.flush()
}

// kv prints aligned "key: value" lines.
type kv struct{ tw *tabwriter.Writer }

func newKV(w io.Writer) *kv { return &kv{tw: tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)} }

func (k *kv) add(key string, v any) { fmt.Fprintf(k.tw, "%s:\t%v\n", key, v) }
func (k *kv) flush()                { _ = k.tw.Flush() }

// addPerNode adds a "node <name>" line for each node of perNode (an
// audience's recipients per node), in name order.
func (k *kv) addPerNode(perNode map[string]int64) {
	for _, n := range slices.Sorted(maps.Keys(perNode)) {
		k.add("node "+safe(n), perNode[n])
	}
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(timeLayout)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
