package stage

import (
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/progress"
	"github.com/announcer/announcer/pkg/redisconn"
)

// ProgressStore opens the [progress] store, or returns nil when none is
// configured. The caller closes it.
func ProgressStore(cfg config.Config, log zerolog.Logger) (*progress.Store, error) {
	o, ok := cfg.ProgressRedis()
	if !ok {
		return nil, nil
	}
	// go-redis logs through a process-wide logger; route it to ours.
	redis.SetLogger(redisconn.Logger{Log: log.With().Str("component", "redis").Logger()})
	conn, err := redisconn.New("progress store", o)
	if err != nil {
		return nil, err
	}
	return progress.NewStore(conn, progress.Options{
		Prefix: cfg.Progress.KeyPrefix, TTL: cfg.Progress.TTL.D(), IdempotencyWindow: cfg.Progress.IdempotencyWindow.D(),
	}), nil
}

// Progress is the stage's progress tracker on the [progress] store (one that
// does nothing when none is configured). Its queued updates are flushed
// after the intake stopped, and its connections closed with the runtime.
func (rt *Runtime) Progress() (*progress.Tracker, error) {
	store, err := ProgressStore(rt.cfg, rt.log)
	if err != nil {
		return nil, err
	}
	if store != nil {
		rt.OnClose(store.Close)
	} else {
		rt.log.Warn().Msg("no progress store ([progress] redis_nodes or [user-activity-redis]): announcements cannot be followed, cancelled or previewed")
	}
	t := progress.NewTracker(store, progress.TrackerOptions{CancelCheck: rt.cfg.Progress.CancelCheck.D()}, rt.log, rt.metrics)
	rt.Serve("progress", t.Run)
	rt.tracker = t
	return t, nil
}
