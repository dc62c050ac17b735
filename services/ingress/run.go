package main

import (
	"context"

	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/services/ingress/internal/service"
)

// run builds and runs the service; the construction lives in internal/service
// so cmd/ingress-bench and the integration tests start the very same thing.
func run(ctx context.Context, log zerolog.Logger, cfg config.Config) error {
	return service.Run(ctx, log, cfg, service.Options{})
}
