// Package boot is the common start of every announcer main: flags, config, logger, signals.
package boot

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/logging"
)

// RunFunc is a service's run: it returns when ctx ends or something fails. H
// are the service's hooks for tests and benchmarks; the binary passes none
// (H's zero value).
type RunFunc[H any] func(ctx context.Context, log zerolog.Logger, cfg config.Config, hooks H) error

// Main parses the standard flags, loads and validates the config for role, builds the
// logger and calls run under SIGINT/SIGTERM handling. It returns the process exit code.
// extra may register service-specific flags and adjust the config after loading; a
// problem it finds counts as one of the config's.
func Main[H any](role config.Role, args []string, stderr io.Writer, run RunFunc[H], extra func(fs *flag.FlagSet) func(*config.Config) error) int {
	fs := flag.NewFlagSet(string(role), flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "announcer.toml", "path of the TOML config file")
	check := fs.Bool("check-config", false, "validate the config, print it with secrets masked, and exit")
	debugPort := fs.String("debug-port", "", "override debug_port (several services on one host)")
	var apply func(*config.Config) error
	if extra != nil {
		apply = extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if *debugPort != "" {
		// The units pass -debug-port: say so, since the first generation served on debug_port.
		if cfg.Has("debug_port") && cfg.DebugPort != *debugPort {
			cfg.Notes = append(cfg.Notes, fmt.Sprintf("debug_port %q of the file is overridden by -debug-port %q", cfg.DebugPort, *debugPort))
		}
		cfg.DebugPort = *debugPort
	}
	var flagErr error
	if apply != nil {
		flagErr = apply(&cfg)
	}
	err = errors.Join(cfg.Validate(role), flagErr)
	if *check {
		// How the file was read explains its problems too, so it comes first.
		for _, n := range cfg.Notes {
			fmt.Fprintln(stderr, "note:", n)
		}
		for _, w := range cfg.Warnings {
			fmt.Fprintln(stderr, "warning:", w)
		}
		// The unit runs the check in the service's sandbox (ExecStartPre): a
		// log file it cannot open would otherwise fail every start after "valid".
		err = errors.Join(err, checkLogDst(cfg.Log.Dst))
	}
	if err != nil {
		fmt.Fprintf(stderr, "config %s is invalid:\n%v\n", *path, err)
		return 2
	}
	if *check {
		fmt.Fprintf(stderr, "config %s is valid for %s\n", *path, role)
		fmt.Fprint(os.Stdout, cfg.String())
		return 0
	}
	log, closeLog, err := logging.New(cfg.Log, string(role))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	defer func() { _ = closeLog() }()
	for _, n := range cfg.Notes {
		log.Info().Msg(n)
	}
	for _, w := range cfg.Warnings {
		log.Warn().Msg(w)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info().Str("config", *path).Msg("starting")
	var none H
	if err := run(ctx, log, cfg, none); err != nil {
		log.Error().Err(err).Msg("stopped with error")
		return 1
	}
	log.Info().Msg("stopped")
	return 0
}

// checkLogDst opens dst for append as logging.New will, creating it when
// missing; a file only the check created is removed again, so that a check
// run by another user (root) leaves no file the service then cannot open.
func checkLogDst(dst string) error {
	if dst == "" {
		return nil
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_APPEND, 0)
	created := false
	if errors.Is(err, fs.ErrNotExist) {
		f, err = os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o640)
		created = err == nil
		if errors.Is(err, fs.ErrExist) { // created meanwhile (by the service itself, say)
			f, err = os.OpenFile(dst, os.O_WRONLY|os.O_APPEND, 0)
		}
	}
	if err != nil {
		return fmt.Errorf("[log] log_dst: %w", err)
	}
	err = f.Close()
	if created {
		err = errors.Join(err, os.Remove(dst))
	}
	if err != nil {
		return fmt.Errorf("[log] log_dst: %w", err)
	}
	return nil
}
