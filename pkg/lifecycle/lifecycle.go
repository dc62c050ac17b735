// Package lifecycle runs a service's long-running parts and stops them upstream first.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
)

// Part is one long-running piece of a service. Run returns when ctx ends (nil)
// or when the part fails.
type Part struct {
	Name string
	Run  func(ctx context.Context) error
}

// Stages run together; on shutdown the first stage (the intake) is stopped first,
// and each later stage only after the ones before it returned, so in-flight work
// drains downstream. Every part of a stage is stopped when any part fails.
//
// The whole shutdown is bounded by timeout: a part that does not return in time
// is reported in the error, and the caller exits anyway.
func Run(ctx context.Context, log zerolog.Logger, timeout time.Duration, stages ...[]Part) error {
	// One context per stage, each cancelled in order once ctx ends or a part fails.
	cancels := make([]context.CancelFunc, len(stages))
	ctxs := make([]context.Context, len(stages))
	for i := range stages {
		ctxs[i], cancels[i] = context.WithCancel(context.WithoutCancel(ctx))
	}
	failed := make(chan error, 1)
	dones := make([]chan error, len(stages))
	for i, stage := range stages {
		dones[i] = make(chan error, 1)
		g, gctx := errgroup.WithContext(ctxs[i])
		for _, p := range stage {
			g.Go(func() error {
				err := p.Run(gctx)
				if err != nil && !errors.Is(err, context.Canceled) {
					err = fmt.Errorf("%s: %w", p.Name, err)
					select {
					case failed <- err:
					default:
					}
					return err
				}
				log.Debug().Str("part", p.Name).Msg("stopped")
				return nil
			})
		}
		go func() { dones[i] <- g.Wait() }()
	}

	var first error
	select {
	case <-ctx.Done():
		log.Info().Msg("shutdown requested")
	case first = <-failed:
		log.Error().Err(first).Msg("part failed, shutting down")
	}

	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	errs := []error{first}
	for i := range stages {
		cancels[i]()
		select {
		case err := <-dones[i]:
			if err != nil && !errors.Is(err, first) {
				errs = append(errs, err)
			}
		case <-deadline.C:
			for j := i; j < len(stages); j++ {
				cancels[j]()
			}
			errs = append(errs, fmt.Errorf("shutdown: stage %d did not stop within %s", i, timeout))
			return errors.Join(errs...)
		}
	}
	return errors.Join(errs...)
}
