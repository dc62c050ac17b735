package main

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/services/fanout/internal/fanout"
)

func run(ctx context.Context, log zerolog.Logger, cfg config.Config) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return fanout.Run(ctx, log, cfg, fanout.Options{Registry: reg})
}
