// Package commands is the announcer operator CLI: the cobra command tree,
// the follow loop with its progress bar, and the exit codes. Everything it
// touches outside the process comes in through Env, so tests drive it in
// process.
package commands

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/announcer/announcer/clients/cli/internal/apiclient"
)

// Exit codes.
const (
	ExitOK          = 0
	ExitFailed      = 1   // an API error, a rejected or failed announcement
	ExitUsage       = 2   // bad flags or arguments
	ExitCancelled   = 3   // the announcement ended cancelled
	ExitStalled     = 4   // following: no progress for --stall-after
	ExitInterrupted = 130 // Ctrl-C: stopped following, nothing cancelled
)

// Default values of the global flags.
const (
	DefaultURL     = "http://127.0.0.1:8080"
	DefaultTimeout = 10 * time.Second
	// DefaultStallAfter: a healthy announcement moves a figure with every
	// batch, but one queued behind a giant channel on the same lanes may wait
	// many minutes for its first; one still for this long is stuck.
	DefaultStallAfter = 15 * time.Minute
)

// Env is everything a run uses from outside the process.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// Interrupts subscribes to Ctrl-C until stop is called; nil = SIGINT.
	Interrupts func() (c <-chan os.Signal, stop func())
	HTTPClient *http.Client    // nil = a default client
	Retry      apiclient.Retry // zero = the client's defaults
	PollGrace  time.Duration   // how long polls may fail in a row when following; 0 = 1m
}

// SignalInterrupts delivers the process's SIGINTs.
func SignalInterrupts() (<-chan os.Signal, func()) {
	c := make(chan os.Signal, 2)
	signal.Notify(c, os.Interrupt)
	return c, func() { signal.Stop(c) }
}

// Execute runs the CLI with args (without the program name) and returns the
// exit code.
func Execute(ctx context.Context, args []string, env Env) int {
	env = env.withDefaults()
	root := newRoot(env)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var ex *exitError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ex):
		if ex.err != nil {
			report(env.Stderr, ex.err)
		}
		return ex.code
	default:
		// Every runtime failure is an *exitError; anything else is cobra's
		// or our own complaint about flags and arguments.
		fmt.Fprintf(env.Stderr, "announcer: %v\nRun 'announcer --help' for usage.\n", err)
		return ExitUsage
	}
}

func (e Env) withDefaults() Env {
	if e.Stdin == nil {
		e.Stdin = strings.NewReader("")
	}
	if e.Stdout == nil {
		e.Stdout = io.Discard
	}
	if e.Stderr == nil {
		e.Stderr = io.Discard
	}
	if e.Getenv == nil {
		e.Getenv = func(string) string { return "" }
	}
	if e.Interrupts == nil {
		e.Interrupts = SignalInterrupts
	}
	if e.PollGrace <= 0 {
		e.PollGrace = time.Minute
	}
	return e
}

// exitError ends a run with code; err, when set, is reported on stderr.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}

func failed(err error) error { return &exitError{code: ExitFailed, err: err} }
func exit(code int) error    { return &exitError{code: code} }

// report prints err for an operator: the server's own words, and a hint where
// one helps.
func report(w io.Writer, err error) {
	fmt.Fprintf(w, "announcer: %s\n", safe(err.Error()))
	switch apiclient.StatusOf(err) {
	case http.StatusUnauthorized:
		fmt.Fprintln(w, "hint: the API wants a bearer token: pass --token or set ANNOUNCER_TOKEN")
	case http.StatusNotImplemented:
		fmt.Fprintln(w, "hint: the server has no progress store configured ([progress] needs Redis)")
	}
}

// globals are the flags every command shares.
type globals struct {
	url     string
	token   string
	timeout time.Duration
}

func newRoot(env Env) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "announcer",
		Short: "Operate announcements through the ingress REST API",
		Long: `announcer sends announcements (one XML stanza to many XMPP users), follows
their progress, previews their audience, lists and cancels them.

Exit codes: 0 ok, 1 failed (API error, rejected or failed announcement),
2 usage, 3 cancelled, 4 stalled (followed, no progress for --stall-after;
nothing cancelled), 130 interrupted (Ctrl-C; nothing cancelled).`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })

	url := env.Getenv("ANNOUNCER_URL")
	if url == "" {
		url = DefaultURL
	}
	f := root.PersistentFlags()
	f.StringVar(&g.url, "url", url, "base URL of the ingress API (env ANNOUNCER_URL)")
	// No default shown: the token comes from the environment at run time and is never printed.
	f.StringVar(&g.token, "token", "", "bearer token (default: env ANNOUNCER_TOKEN)")
	f.DurationVar(&g.timeout, "timeout", DefaultTimeout, "timeout of each HTTP request (a preview's: at least 1m, as the server may take 50s)")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if !cmd.Flags().Changed("token") {
			g.token = env.Getenv("ANNOUNCER_TOKEN")
		}
		if g.timeout <= 0 {
			return fmt.Errorf("--timeout %v: want > 0", g.timeout)
		}
		return nil
	}

	root.AddCommand(
		newSend(env, g),
		newPreview(env, g),
		newStatus(env, g),
		newCancel(env, g),
		newList(env, g),
	)
	return root
}

func (g *globals) client(env Env) (*apiclient.Client, error) {
	c, err := apiclient.New(apiclient.Config{
		BaseURL:    g.url,
		Token:      g.token,
		Timeout:    g.timeout,
		HTTPClient: env.HTTPClient,
		Retry:      env.Retry,
	})
	if err != nil {
		return nil, fmt.Errorf("--url: %w", err) // a usage error: exit 2
	}
	return c, nil
}

// idArg is the one announcement id a command takes.
func idArg(_ *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("want one announcement id, got %d arguments", len(args))
	}
	if strings.TrimSpace(args[0]) == "" {
		return errors.New("empty announcement id")
	}
	return nil
}

// safe keeps what the server sent from driving the terminal: control
// characters (escape sequences included) are shown quoted instead.
func safe(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return unicode.IsControl(r) || r == unicode.ReplacementChar }) < 0 {
		return s
	}
	q := fmt.Sprintf("%q", s)
	return q[1 : len(q)-1]
}
