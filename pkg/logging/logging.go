// Package logging builds the injected zerolog logger from the [log] section.
package logging

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/config"
)

// New returns a logger for service and a closer for its optional file.
func New(cfg config.Log, service string) (zerolog.Logger, func() error, error) {
	lvl, err := level(cfg.Level)
	if err != nil {
		return zerolog.Nop(), nil, err
	}
	var out io.Writer = os.Stderr
	closer := func() error { return nil }
	if cfg.Dst != "" {
		f, err := os.OpenFile(cfg.Dst, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return zerolog.Nop(), nil, fmt.Errorf("log_dst: %w", err)
		}
		out, closer = f, f.Close
	}
	if cfg.Format == "text" {
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.RFC3339Nano, NoColor: cfg.Dst != ""}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Str("service", service).Logger(), closer, nil
}

func level(s string) (zerolog.Level, error) {
	switch s {
	case "debug":
		return zerolog.DebugLevel, nil
	case "info":
		return zerolog.InfoLevel, nil
	case "warning", "warn", "":
		return zerolog.WarnLevel, nil
	case "error":
		return zerolog.ErrorLevel, nil
	}
	return zerolog.NoLevel, fmt.Errorf("log_level %q: want debug, info, warning or error", s)
}
