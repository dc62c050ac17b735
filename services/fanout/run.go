package main

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/announcement"
	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/metric"
	"github.com/announcer/announcer/pkg/redisconn"
	"github.com/announcer/announcer/pkg/stage"
	"github.com/announcer/announcer/services/fanout/internal/audience"
	"github.com/announcer/announcer/services/fanout/internal/kafkasink"
	"github.com/announcer/announcer/services/fanout/internal/mysqlstore"
	"github.com/announcer/announcer/services/fanout/internal/presence"
)

// maxInFlightWrites bounds the batch writes of one task awaiting acks: enough
// to keep Kafka busy while the next pages are read, small enough to keep memory flat.
const maxInFlightWrites = 8

// drainTimeout bounds how long announcements in flight may finish on shutdown.
const drainTimeout = 5 * time.Second

// hooks let tests and the benchmark watch the service; main passes none.
type hooks struct {
	// resolved sees every event once all its batches are acked; its offset is committed right after.
	resolved func(announcement.Event, audience.Result)
	// runtime sees the stage runtime once built (its metrics, its debug address).
	runtime func(*stage.Runtime)
}

// presenceSource is what run needs of either presence adapter.
type presenceSource interface {
	audience.Presence
	Ping(ctx context.Context) error
	Close() error
}

// run wires fanout top to bottom and runs it until ctx ends: announcements
// in, per-node delivery batches (and shard tasks) out.
func run(ctx context.Context, log zerolog.Logger, cfg config.Config, h hooks) error {
	rt, err := stage.New("fanout", cfg, log)
	if err != nil {
		return err
	}
	defer rt.Close()
	rt.ShutdownTimeout = drainTimeout + 10*time.Second

	lanes, topics := topicsOf(cfg)
	nodes := make([]audience.Node, len(cfg.Nodes))
	for i, n := range cfg.Nodes {
		nodes[i] = audience.Node{Name: n.Name, PresenceAddresses: n.PresenceAddresses}
	}
	rt.Topics(rt.Bus(), topics...)
	tracker, err := rt.Progress()
	if err != nil {
		return err
	}

	store, err := mysqlstore.Open(cfg.MySQL, log.With().Str("component", "mysql").Logger())
	if err != nil {
		return err
	}
	rt.OnClose(store.Close)
	rt.Check("mysql", store.Ping)
	metric.Must(rt.Metrics()).GaugeFunc("mysql_member_index",
		"What a member page reads: 2 the member index alone, 1 the index then each member's row (no member_username in it),"+
			" 0 no index led by (member_channelid, member_id), so pages may scan the channel; -1 before the first channel page.",
		func() float64 { return float64(store.IndexState()) })

	var source presenceSource
	switch cfg.Fanout.Presence {
	case "rest":
		source = presence.NewREST(cfg.UserActivityREST, cfg.UserActivityAskBuffer)
	default:
		// go-redis logs through a process-wide logger; route it to ours.
		redis.SetLogger(redisconn.Logger{Log: log.With().Str("component", "redis").Logger()})
		r, err := presence.NewRedis(cfg.UserActivityRedis, presence.RedisOptions{Chunk: cfg.UserActivityAskBuffer})
		if err != nil {
			return err
		}
		source = r
	}
	rt.OnClose(source.Close)
	rt.Check("presence", source.Ping)

	sink := kafkasink.New(
		rt.Writer(rt.Bus(), kafkabus.WriterOptions{}),
		rt.Writer(rt.Bus(), kafkabus.WriterOptions{RoundRobin: true}),
		lanes)

	resolver, err := audience.New(audience.Config{
		Nodes:       nodes,
		BatchSize:   cfg.Fanout.BatchSize,
		ShardSize:   cfg.Fanout.ShardSize,
		PageSize:    cfg.MySQL.PaginationLength,
		ScanCount:   cfg.UserActivityAskBuffer,
		MaxInFlight: maxInFlightWrites,
		// Headroom for the record batch framing around one message.
		MaxBatchBytes: cfg.Bus.MaxMessageBytes - 1024,
		RouteUsers:    cfg.Fanout.Presence != "rest",
		UserDomain:    cfg.UserDomain(),
		CountMaxAge:   cfg.Fanout.MemberCountMaxAge.D(),
		Retry:         backoff.Policy{Initial: 100 * time.Millisecond, Max: cfg.Fanout.RetryMax.D()},
		Templates:     rt.Templates(),
		Progress:      tracker,
	}, store, source, sink, sink, log.With().Str("component", "audience").Logger(), rt.Metrics())
	if err != nil {
		return err
	}

	handle := stage.Decoded(announcement.NewDecoder(rt.Metrics()).Event, func(ctx context.Context, ev announcement.Event) error {
		res, err := resolver.Resolve(ctx, ev)
		if err == nil && h.resolved != nil {
			h.resolved(ev, res)
		}
		return err
	})
	consumer := stage.ConsumerOptions{
		MaxInFlight: max(cfg.LogicProcessNumber, 1), DrainTimeout: drainTimeout,
		// Shard tasks of one channel share partitions: a finished task may
		// wait for an earlier, longer one's commit without idling a worker.
		// A crash re-resolves at most these tasks (the batches come out
		// identical, and the senders skip identical copies).
		MaxUncommitted: 4 * max(cfg.LogicProcessNumber, 1),
		Retry:          backoff.Policy{Initial: 100 * time.Millisecond, Max: cfg.Fanout.RetryMax.D()},
		// An identical event is the same announcement (or shard task) written twice.
		Dedupe: 4096,
	}
	rt.Consume(stage.Input{
		Name: "announcements", Group: cfg.Fanout.GroupName, Topics: []string{lanes.Announcements},
		Handle: handle, ConsumerOptions: consumer, Lane: "bulk",
	})
	// The priority lane has workers of its own: a users announcement or a
	// preview never waits behind a giant channel's pages.
	rt.Consume(stage.Input{
		Name: "priority", Group: cfg.Fanout.GroupName + cfg.Bus.PrioritySuffix, Topics: []string{lanes.PriorityAnnouncements},
		Handle: handle, ConsumerOptions: consumer, Lane: "priority",
	})
	if h.runtime != nil {
		h.runtime(rt)
	}
	log.Info().Str("presence", cfg.Fanout.Presence).Int("nodes", len(nodes)).Msg("fanout configured")
	return rt.Run(ctx)
}

// topicsOf names fanout's lanes in cfg, and every topic it reads or writes:
// both announcement lanes, the dead letters and both lanes of each node.
func topicsOf(cfg config.Config) (kafkasink.Topics, []string) {
	lanes := kafkasink.Topics{
		Announcements: cfg.Bus.AnnouncementsTopic, PriorityAnnouncements: cfg.PriorityTopic(cfg.Bus.AnnouncementsTopic),
		Deliveries: make(map[string]string, len(cfg.Nodes)), PriorityDeliveries: make(map[string]string, len(cfg.Nodes)),
	}
	all := []string{lanes.Announcements, lanes.PriorityAnnouncements, cfg.Bus.DeadLetterTopic}
	for _, n := range cfg.Nodes {
		lanes.Deliveries[n.Name] = cfg.DeliveriesTopic(n.Name)
		lanes.PriorityDeliveries[n.Name] = cfg.PriorityTopic(cfg.DeliveriesTopic(n.Name))
		all = append(all, lanes.Deliveries[n.Name], lanes.PriorityDeliveries[n.Name])
	}
	return lanes, all
}
