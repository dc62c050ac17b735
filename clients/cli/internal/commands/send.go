package commands

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/announcer/announcer/clients/cli/internal/apiclient"
)

// maxMessageFile bounds what is read of --file; the server's own limit is far lower.
const maxMessageFile = 16 << 20

// targetFlags choose the audience and the message, as send and preview share them.
type targetFlags struct {
	channel   string
	allOnline bool
	users     []string
	file      string
	priority  string
}

func (t *targetFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&t.channel, "channel", "", "channel id: an integer, else a string id")
	f.BoolVar(&t.allOnline, "all-online", false, "every online user (channel_id -1)")
	f.StringSliceVar(&t.users, "users", nil, "comma-separated usernames or JIDs")
	f.StringVar(&t.file, "file", "", "file holding one XML stanza with %s where the recipient's JID goes")
	f.StringVar(&t.priority, "priority", "", "normal or high (default: the server's, which may differ by route)")
	cmd.MarkFlagsOneRequired("channel", "all-online", "users")
	cmd.MarkFlagsMutuallyExclusive("channel", "all-online", "users")
	_ = cmd.MarkFlagRequired("file")
}

// request checks the flags (a usage error) and reads the file (a failure).
func (t *targetFlags) request(cmd *cobra.Command) (apiclient.Request, error) {
	var req apiclient.Request
	set := cmd.Flags().Changed
	switch {
	case set("channel"):
		if strings.TrimSpace(t.channel) == "" {
			return req, errors.New("--channel: empty channel id")
		}
		req.Target = apiclient.ChannelTarget(apiclient.ParseChannelID(t.channel))
	case set("all-online") && t.allOnline:
		req.Target = apiclient.AllOnline()
	case set("users"):
		users := make([]string, 0, len(t.users))
		for _, u := range t.users {
			if u = strings.TrimSpace(u); u != "" {
				users = append(users, u)
			}
		}
		if len(users) == 0 {
			return req, errors.New("--users: no usernames given")
		}
		req.Target = apiclient.UsersTarget(users)
	default:
		return req, errors.New("want --channel ID, --all-online or --users a,b")
	}
	switch t.priority {
	case "", "normal", "high":
		req.Priority = t.priority
	default:
		return req, fmt.Errorf("--priority %q: want normal or high", t.priority)
	}
	msg, err := readMessage(t.file)
	if err != nil {
		return req, failed(err)
	}
	req.Message = msg
	return req, nil
}

func readMessage(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	msg, err := io.ReadAll(io.LimitReader(f, maxMessageFile+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("reading %s: %w", path, err)
	case len(msg) > maxMessageFile:
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxMessageFile)
	case len(strings.TrimSpace(string(msg))) == 0:
		return nil, fmt.Errorf("%s: empty; want one XML stanza", path)
	}
	return msg, nil
}

type sendFlags struct {
	target   targetFlags
	persist  bool
	key      string
	noFollow bool
	follow   followFlags
}

func newSend(env Env, g *globals) *cobra.Command {
	s := &sendFlags{}
	cmd := &cobra.Command{
		Use:   "send (--channel ID | --all-online | --users a,b) --file msg.xml",
		Short: "Send an announcement and follow it to the end",
		Long: `Send an announcement and follow it to the end.

stdout gets "id=<id>" as soon as the server accepted it, and one summary line
at the end ("state=done recipients=N confirmed=N dead_lettered=N ...");
the progress bar goes to stderr. Ctrl-C asks whether to cancel it. When its
state and figures do not change for --stall-after, following stops (exit 4).

The POST carries an Idempotency-Key (random unless --idempotency-key is
given) and is retried with it after a network error, a timeout or a 503, so
a retry never announces twice. Re-running with the same key and file
follows the announcement already accepted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return s.run(cmd, env, g)
		},
	}
	s.target.register(cmd)
	f := cmd.Flags()
	f.BoolVar(&s.persist, "persist", false, "archive one rendered stanza per recipient (default: the server's; false for a channel, true for --users)")
	f.StringVar(&s.key, "idempotency-key", "", "Idempotency-Key of the POST (default: 128 random bits)")
	f.BoolVar(&s.noFollow, "no-follow", false, "print the id and exit without following")
	s.follow.register(cmd, "while following")
	return cmd
}

func (s *sendFlags) run(cmd *cobra.Command, env Env, g *globals) error {
	req, err := s.target.request(cmd)
	if err != nil {
		return err
	}
	if cmd.Flags().Changed("persist") {
		req.Persist = &s.persist
	}
	if err := s.follow.check(); err != nil {
		return err
	}
	key := s.key
	if cmd.Flags().Changed("idempotency-key") {
		if err := checkKey(key); err != nil {
			return err
		}
	} else {
		key = newKey()
	}
	api, err := g.client(env)
	if err != nil {
		return err
	}

	interrupts, stop := env.Interrupts()
	defer stop()
	postCtx, interrupted := untilInterrupt(cmd.Context(), interrupts)
	acc, err := api.Announce(postCtx, req, key)
	hit := interrupted()
	if err != nil && hit {
		fmt.Fprintf(env.Stderr, "announcer: interrupted before the server answered; it may have accepted the announcement.\n"+
			"To find out without announcing twice, run the same command with --idempotency-key %s\n", key)
		return exit(ExitInterrupted)
	}
	if err != nil {
		report(env.Stderr, err)
		// Any answer but a refusal (4xx) may come after the ingress published it:
		// a 5xx from a proxy that gave up, a 2xx this client could not read.
		if st := apiclient.StatusOf(err); apiclient.Transient(err) || (apiclient.Reached(err) && (st < 400 || st > 499)) {
			fmt.Fprintf(env.Stderr, "hint: the server may have accepted it; retry safely with --idempotency-key %s\n", key)
		}
		if apiclient.StatusOf(err) == http.StatusConflict {
			fmt.Fprintln(env.Stderr, "hint: this Idempotency-Key was already used for a different announcement")
		}
		return exit(ExitFailed)
	}
	fmt.Fprintf(env.Stdout, "id=%s\n", safe(acc.ID))
	if acc.Replayed {
		fmt.Fprintln(env.Stderr, "announcer: the server had already accepted this Idempotency-Key; this is that announcement")
	}
	if s.noFollow {
		if hit {
			return exit(ExitInterrupted)
		}
		return nil
	}
	f := newFollower(env, api, s.follow, interrupts)
	// A Ctrl-C that came just as the server answered still gets its question.
	f.pending = hit
	return exit(f.follow(cmd.Context(), acc.ID))
}

// untilInterrupt is ctx cancelled by the first interrupt; interrupted stops
// watching and reports whether one came.
func untilInterrupt(ctx context.Context, interrupts <-chan os.Signal) (context.Context, func() bool) {
	ctx, cancel := context.WithCancel(ctx)
	hit := make(chan bool, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case <-interrupts:
			cancel()
			hit <- true
		case <-ctx.Done():
			hit <- false
		}
	})
	return ctx, func() bool {
		cancel()
		wg.Wait()
		return <-hit
	}
}

// newKey is 128 random bits: unique without coordination.
func newKey() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand crashes the program instead)
	return hex.EncodeToString(b)
}

// checkKey holds --idempotency-key to the API document: 1..255 printable
// ASCII. Spaces at either end would be lost in the header.
func checkKey(k string) error {
	if len(k) == 0 || len(k) > 255 {
		return fmt.Errorf("--idempotency-key: want 1..255 characters, got %d", len(k))
	}
	if strings.IndexFunc(k, func(r rune) bool { return r < 0x20 || r > 0x7e }) >= 0 {
		return errors.New("--idempotency-key: want printable ASCII only")
	}
	if strings.TrimSpace(k) != k {
		return errors.New("--idempotency-key: no spaces at either end")
	}
	return nil
}

func newPreview(env Env, g *globals) *cobra.Command {
	t := &targetFlags{}
	cmd := &cobra.Command{
		Use:   "preview (--channel ID | --all-online | --users a,b) --file msg.xml",
		Short: "Show who an announcement would reach, sending nothing",
		Long: `Show who an announcement would reach, sending nothing.

The server may take up to 50s to count; the POST waits at least 1m (longer
with a larger --timeout) and is not repeated once it may have reached the
server. A preview still computing prints "id=<id>" (exit 1). A preview that
ended other than done (a channel not found or not accepted: rejected, with
its reason) prints its state and reason on stderr and exits as send does:
1 rejected or failed, 3 cancelled.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := t.request(cmd)
			if err != nil {
				return err
			}
			api, err := g.client(env)
			if err != nil {
				return err
			}
			a, err := api.Preview(cmd.Context(), req)
			var he *apiclient.Error
			if errors.As(err, &he) && he.Status == http.StatusGatewayTimeout && he.ID != "" {
				id := safe(he.ID)
				fmt.Fprintf(env.Stdout, "id=%s\n", id)
				fmt.Fprintf(env.Stderr, "announcer: preview %s is still computing; see it later with: announcer status %s\n", id, id)
				return exit(ExitFailed)
			}
			var te *apiclient.TransportError
			if errors.As(err, &te) && apiclient.Reached(err) {
				// Not repeated (each POST is a dry run of its own), but the server may be counting it.
				report(env.Stderr, err)
				fmt.Fprintln(env.Stderr, "hint: the server may still be counting it (a preview sends nothing); look for it with: announcer list --limit 5")
				return exit(ExitFailed)
			}
			if err != nil {
				return failed(err)
			}
			if a.State != apiclient.StateDone {
				// A rejected channel (a typo, say) counts no one: its zeros
				// must not read as "nobody is online".
				reason := ""
				if a.Reason != "" {
					reason = " (reason " + value(a.Reason) + ")"
				}
				fmt.Fprintf(env.Stderr, "announcer: preview %s ended %s%s: no audience was counted\n", safe(a.ID), value(string(a.State)), reason)
				return exit(exitCode(a.State))
			}
			printPreview(env.Stdout, a)
			return nil
		},
	}
	t.register(cmd)
	return cmd
}

func printPreview(w io.Writer, a *apiclient.Announcement) {
	kv := newKV(w)
	kv.add("id", safe(a.ID))
	kv.add("kind", safe(a.Kind))
	kv.add("members", a.Audience.Members)
	kv.add("online", a.Audience.Online)
	kv.add("recipients", a.Audience.Recipients)
	kv.addPerNode(a.Audience.PerNode)
	kv.flush()
}
