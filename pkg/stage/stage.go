// Package stage is the runtime every announcer service is built on. A service
// is one or more Kafka stages ("decode → handle → commit in order") plus, for
// the ingress, an HTTP server; the runtime owns everything around them:
//
//   - the metrics registry (Go and process collectors) and the one naming
//     convention, announcer_<service>_…;
//   - the debug listener (/metrics, /healthz, /readyz, pprof), served from
//     the start so an operator sees what a starting service waits for;
//   - topics: created (or awaited) at start-up with backoff, saying what it waits for;
//   - writers that own their connections, and the one dead-letter writer,
//     whose records are always cut to fit the bus;
//   - consumers with ordered commits that survive broker outages;
//   - readiness, and the shutdown order: intake first, then the parts
//     downstream of it, then the writers and the debug listener.
//
// A stage supplies only its decode and handle functions and its adapters.
package stage

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/backoff"
	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/debugserver"
	"github.com/announcer/announcer/pkg/kafkabus"
	"github.com/announcer/announcer/pkg/lifecycle"
	"github.com/announcer/announcer/pkg/progress"
	"github.com/announcer/announcer/pkg/stanza"
)

// Runtime is one service process.
type Runtime struct {
	service string
	cfg     config.Config
	log     zerolog.Logger
	reg     *prometheus.Registry
	metrics prometheus.Registerer
	debug   *debugserver.Server
	bus     kafkabus.Cluster

	// ShutdownTimeout bounds the whole stop (intake, drain, downstream parts).
	ShutdownTimeout time.Duration

	intake, downstream []lifecycle.Part
	closers            []func() error
	debugDone          chan error
	cancelDebug        context.CancelFunc
	topics             []topicSet
	setUp              chan struct{} // closed once every topic exists

	mu        sync.Mutex
	running   bool
	waiting   string // what start-up waits for, if anything
	dlq       *kafkabus.DeadLetters
	tracker   *progress.Tracker // set by Progress: consumers sync with it before committing
	templates *stanza.Cache
}

// topicSet is what a service reads or writes on one Kafka cluster.
type topicSet struct {
	cluster kafkabus.Cluster
	names   []string
}

// New builds the runtime of service ("ingress", "fanout", ...) and starts
// serving the debug listener; Close stops it. A taken debug port fails here.
func New(service string, cfg config.Config, log zerolog.Logger) (*Runtime, error) {
	reg := prometheus.NewRegistry()
	if err := errors.Join(
		reg.Register(collectors.NewGoCollector()),
		reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})),
	); err != nil {
		return nil, fmt.Errorf("%s: metrics: %w", service, err)
	}
	rt := &Runtime{
		service:         service,
		cfg:             cfg,
		log:             log,
		reg:             reg,
		metrics:         prometheus.WrapRegistererWithPrefix("announcer_"+service+"_", reg),
		ShutdownTimeout: 30 * time.Second,
		setUp:           make(chan struct{}),
	}
	bus, err := Cluster(cfg.Bus.Brokers, cfg.Bus.KafkaSecurity)
	if err != nil {
		return nil, fmt.Errorf("%s: [bus]: %w", service, err)
	}
	rt.bus = bus
	rt.debug = debugserver.New(config.ListenAddr(cfg.DebugPort), reg, cfg.Debug.Pprof,
		debugserver.Check{Name: "service", Fn: rt.started},
		debugserver.Check{Name: "kafka", Fn: func(ctx context.Context) error { return kafkabus.Ping(ctx, rt.bus) }},
	)
	if err := rt.debug.Listen(); err != nil {
		return nil, fmt.Errorf("%s: debug_port: %w", service, err)
	}
	dctx, cancel := context.WithCancel(context.Background())
	rt.cancelDebug = cancel
	rt.debugDone = make(chan error, 1)
	go func() { rt.debugDone <- rt.debug.Run(dctx) }()
	return rt, nil
}

// Log is the service's logger.
func (rt *Runtime) Log() zerolog.Logger { return rt.log }

// Metrics registers under announcer_<service>_: a package registers its
// metrics with bare names ("batches_total") and the prefix makes them one family.
func (rt *Runtime) Metrics() prometheus.Registerer { return rt.metrics }

// Registry gathers everything the service exports.
func (rt *Runtime) Registry() *prometheus.Registry { return rt.reg }

// DebugAddr is the bound debug address.
func (rt *Runtime) DebugAddr() string { return rt.debug.Addr() }

// Check adds a readiness check (a dependency /readyz names when it fails).
func (rt *Runtime) Check(name string, fn func(context.Context) error) {
	rt.debug.AddCheck(debugserver.Check{Name: name, Fn: fn})
}

// OnClose runs fn when the runtime closes, after every part stopped (in
// reverse order of registration, like defer).
func (rt *Runtime) OnClose(fn func() error) { rt.closers = append(rt.closers, fn) }

func (rt *Runtime) started(context.Context) error {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	switch {
	case !rt.running:
		return errors.New("starting")
	case rt.waiting != "":
		return errors.New(rt.waiting)
	}
	// Run's topic part may not have begun yet: a service is not ready before
	// its topics exist, or a first publish would cache metadata without them.
	if !rt.TopicsReady() {
		return errors.New("setting up topics")
	}
	return nil
}

// TopicsReady reports whether every declared topic exists (set up by Run).
func (rt *Runtime) TopicsReady() bool {
	select {
	case <-rt.setUp:
		return true
	default:
		return false
	}
}

// Topics declares topics the service reads or writes on cluster c. Run makes
// sure they exist before any consumer starts: with [bus] create_topics, those
// on the bus are created when missing (with [bus] partitions and
// replication_factor); the others, and all without it, are awaited. Kafka being unreachable is waited out with backoff,
// saying what is awaited in the log and on /readyz; parts that need no topic
// (the HTTP API, the XMPP connections) run meanwhile.
func (rt *Runtime) Topics(c kafkabus.Cluster, names ...string) {
	rt.topics = append(rt.topics, topicSet{cluster: c, names: names})
}

func (rt *Runtime) setUpTopics(ctx context.Context) error {
	for _, ts := range rt.topics {
		if err := rt.ensure(ctx, ts); err != nil {
			return err
		}
	}
	rt.mu.Lock()
	rt.waiting = ""
	rt.mu.Unlock()
	close(rt.setUp)
	return nil
}

func (rt *Runtime) ensure(ctx context.Context, ts topicSet) error {
	if len(ts.names) == 0 {
		return nil
	}
	topics := make([]kafkabus.Topic, len(ts.names))
	for i, n := range ts.names {
		topics[i] = kafkabus.Topic{Name: n, Partitions: rt.cfg.Bus.Partitions, ReplicationFactor: rt.cfg.Bus.ReplicationFactor}
	}
	// Another cluster (the archiver's storage) is someone else's: its topics
	// are awaited, never created with the bus's partitions and replication.
	create := rt.cfg.Bus.CreateTopics && sameBrokers(ts.cluster.Brokers, rt.bus.Brokers)
	verb := "creating"
	if !create {
		verb = "waiting for"
	}
	what := fmt.Sprintf("%s topics %s on Kafka %s", verb, strings.Join(ts.names, ", "), strings.Join(ts.cluster.Brokers, ","))
	rt.mu.Lock()
	rt.waiting = what
	rt.mu.Unlock()
	return backoff.Retry(ctx, backoff.Policy{Initial: 200 * time.Millisecond, Max: 5 * time.Second}, func() error {
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if create {
			return kafkabus.EnsureTopics(tctx, ts.cluster, topics...)
		}
		return kafkabus.AwaitTopics(tctx, ts.cluster, ts.names...)
	}, func(err error, attempt int) {
		if attempt == 1 || attempt%10 == 0 {
			rt.log.Warn().Err(err).Int("attempt", attempt).Msg(what + "; retrying until Kafka answers")
		}
	})
}

// sameBrokers reports whether a and b name the same brokers, in any order.
func sameBrokers(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b))
	return slices.Equal(a, b)
}

// afterSetUp runs part once every declared topic exists (never, if ctx ends first).
func (rt *Runtime) afterSetUp(part func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		select {
		case <-rt.setUp:
			return part(ctx)
		case <-ctx.Done():
			return nil
		}
	}
}

// Bus is the [bus] cluster.
func (rt *Runtime) Bus() kafkabus.Cluster { return rt.bus }

// Cluster is a cluster of the config: its comma-separated brokers, reached as sec says.
func Cluster(brokers string, sec config.KafkaSecurity) (kafkabus.Cluster, error) {
	return kafkabus.NewCluster(config.SplitList(brokers), kafkabus.Security{
		TLS: sec.TLS, CAFile: sec.TLSCAFile, CertFile: sec.TLSCertFile, KeyFile: sec.TLSKeyFile,
		SASLMechanism: sec.SASLMechanism, Username: sec.SASLUsername, Password: sec.SASLPassword.Value(),
	})
}

// Writer returns a producer on cluster c (acks=all) that the runtime closes
// after every part stopped, so what is buffered is flushed. Unless o.Topics
// says otherwise, it writes the topics declared on c before the call
// (see kafkabus.WriterOptions.Topics): declare them first.
func (rt *Runtime) Writer(c kafkabus.Cluster, o kafkabus.WriterOptions) *kafkabus.Writer {
	if o.BatchTimeout <= 0 {
		o.BatchTimeout = rt.cfg.Bus.BatchTimeout.D()
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = rt.cfg.Bus.WriteTimeout.D()
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = int64(rt.cfg.Bus.MaxMessageBytes)
	}
	if o.Topics == nil {
		o.Topics = rt.declared(c)
	}
	w := kafkabus.NewWriter(c, o)
	rt.OnClose(w.Close)
	return w
}

// declared are the topics declared on cluster c so far (nil: none).
func (rt *Runtime) declared(c kafkabus.Cluster) []string {
	var names []string
	for _, ts := range rt.topics {
		if slices.Equal(ts.cluster.Brokers, c.Brokers) {
			names = append(names, ts.names...)
		}
	}
	return names
}

// DeadLetters is the service's one dead-letter writer: the [bus] dead-letter
// topic, records cut to fit [bus] max_message_bytes.
func (rt *Runtime) DeadLetters() *kafkabus.DeadLetters {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.dlq == nil {
		rt.dlq = &kafkabus.DeadLetters{
			W:        rt.Writer(rt.bus, kafkabus.WriterOptions{Topics: []string{rt.cfg.Bus.DeadLetterTopic}}),
			Topic:    rt.cfg.Bus.DeadLetterTopic,
			MaxBytes: rt.cfg.Bus.MaxMessageBytes,
		}
	}
	return rt.dlq
}

// Templates is the service's one template cache: each announcement's
// template parsed once per process, under the rules of the connection mode
// (config.TemplateRules) that the ingress checked it against.
func (rt *Runtime) Templates() *stanza.Cache {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.templates == nil {
		rt.templates = stanza.NewCache(rt.cfg.TemplateRules(), stanza.DefaultCacheSize)
	}
	return rt.templates
}

// Input is one consumer group a stage reads.
type Input struct {
	Name    string           // part name in logs ("deliveries")
	Cluster kafkabus.Cluster // default (no brokers): [bus]
	Group   string
	Topics  []string
	Handle  Handler
	ConsumerOptions
	// Prefix, when set, is put before the consumer's metric names
	// ("kafka_input_" → announcer_ingress_kafka_input_messages_fetched_total).
	Prefix string
	// Labels are constant labels of the consumer's metrics (the sender's node).
	Labels prometheus.Labels
	// Lane, when set, labels the consumer's metrics lane=<Lane>. Inputs of one
	// service that read alike topics (bulk and priority) share the metric
	// names and tell themselves apart by it, so a rule or panel on a name
	// sees every lane: set it on all of them or none.
	Lane string
	// StartAtEnd starts a group with no committed offset at the end of the
	// topics: for input the service did not write itself.
	StartAtEnd bool
	// Gate, when set, runs the input only while it is open: closing it stops
	// fetching, lets the records in flight finish for up to GateDrain, commits
	// what finished and leaves the group, whose partitions then go to its
	// other members. A closed input is idle by design: it is ready.
	Gate      *Gate
	GateDrain time.Duration
	// ClientID names the process to the group's other members (kafka-go's default otherwise).
	ClientID string
	// FetchMinBytes and FetchMaxWait let the broker hold a fetch of a
	// partition until that many bytes wait or that much time passed: fewer,
	// fuller fetches for an input that can wait. By default a fetch is
	// answered as soon as one record is there, and held 500 ms when idle.
	FetchMinBytes int
	FetchMaxWait  time.Duration
}

func (in Input) readerOptions() kafkabus.ReaderOptions {
	return kafkabus.ReaderOptions{
		QueueCapacity: max(in.MaxInFlight, 16),
		StartAtEnd:    in.StartAtEnd,
		ClientID:      in.ClientID,
		MinBytes:      in.FetchMinBytes,
		MaxWait:       in.FetchMaxWait,
	}
}

// pinStart gives every partition of a StartAtEnd input that its group has
// not committed an offset at its end, before the group is joined: after
// that, a partition idle since the group began keeps what is written to it
// while no member runs. It reports whether the reader may start uncommitted
// partitions (added to a topic since) at their beginning; false when the
// group already has members, which leaves kafka-go's start at the end.
func pinStart(ctx context.Context, client *kafkabus.Client, in Input, log zerolog.Logger) bool {
	pinned := false
	err := backoff.Retry(ctx, backoff.Policy{Initial: 200 * time.Millisecond, Max: 5 * time.Second}, func() error {
		n, err := client.PinUncommitted(ctx, in.Group, in.Topics)
		if errors.Is(err, kafkabus.ErrGroupBusy) {
			return backoff.Permanent(err)
		}
		if err == nil {
			pinned = true
			if n > 0 {
				log.Info().Str("group", in.Group).Int("partitions", n).
					Msg("partitions the group never committed now start at their current end")
			}
		}
		return err
	}, func(err error, attempt int) {
		if attempt == 1 || attempt%10 == 0 {
			log.Warn().Err(err).Int("attempt", attempt).Str("group", in.Group).
				Msg("reading the group's committed offsets; retrying until Kafka answers")
		}
	})
	if errors.Is(err, kafkabus.ErrGroupBusy) {
		log.Warn().Err(err).Str("group", in.Group).
			Msg("the group has other members: a partition none of them committed starts at its end when assigned")
	}
	return pinned
}

// Gate opens and closes an input while the stage runs (a sender that hands
// its node's topic over, or takes another node's).
type Gate struct {
	mu      sync.Mutex
	open    bool
	changed chan struct{} // closed and replaced at every change
}

// NewGate makes a gate, open or closed.
func NewGate(open bool) *Gate { return &Gate{open: open, changed: make(chan struct{})} }

// Set opens or closes the gate and reports whether that changed it.
func (g *Gate) Set(open bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open == open {
		return false
	}
	g.open = open
	close(g.changed)
	g.changed = make(chan struct{})
	return true
}

// Open reports whether the gate is open.
func (g *Gate) Open() bool {
	open, _ := g.state()
	return open
}

func (g *Gate) state() (bool, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open, g.changed
}

// whileOpen returns a context that ends with ctx or when the gate closes.
func (g *Gate) whileOpen(ctx context.Context) (context.Context, context.CancelFunc) {
	gctx, cancel := context.WithCancel(ctx)
	go func() {
		for {
			open, changed := g.state()
			if !open {
				cancel()
				return
			}
			select {
			case <-changed:
			case <-gctx.Done():
				return
			}
		}
	}()
	return gctx, cancel
}

// Consume builds the reader and the consumer of in, and runs it as intake
// (the first thing stopped at shutdown) once the declared topics exist. Its
// readiness joins /readyz.
func (rt *Runtime) Consume(in Input) *Consumer {
	cluster := in.Cluster
	if len(cluster.Brokers) == 0 {
		cluster = rt.bus
	}
	if in.BeforeCommit == nil && rt.tracker != nil {
		// What a committed record did must be in the progress store before
		// the commit: after a crash the record is not handled again.
		in.BeforeCommit = rt.tracker.Sync
	}
	labels := maps.Clone(in.Labels)
	if in.Lane != "" {
		if labels == nil {
			labels = prometheus.Labels{}
		}
		labels["lane"] = in.Lane
	}
	reg := prometheus.WrapRegistererWithPrefix(in.Prefix, prometheus.WrapRegistererWith(labels, rt.metrics))
	log := rt.log.With().Str("input", in.Name).Logger()
	c := NewConsumer(rt.DeadLetters(), in.Handle, in.ConsumerOptions, log, reg)
	if !slices.Equal(cluster.Brokers, rt.bus.Brokers) {
		rt.Check(in.Name+" brokers", func(ctx context.Context) error { return kafkabus.Ping(ctx, cluster) })
	}
	var joined atomic.Bool
	rt.Check(in.Name, func(ctx context.Context) error {
		if in.Gate != nil && !in.Gate.Open() {
			return nil
		}
		if !joined.Load() {
			return fmt.Errorf("joining consumer group %s", in.Group)
		}
		return c.Ready(ctx)
	})
	// session reads the group from joining until ctx ends, then leaves it.
	session := func(ctx context.Context, drain func() time.Duration) error {
		joined.Store(false)
		// kafka-go joins the group as soon as a reader exists: one made before
		// its topics would be assigned nothing and stay that way.
		client := kafkabus.NewClient(cluster, 10*time.Second, in.Topics...)
		defer client.Close()
		opts := in.readerOptions()
		if in.StartAtEnd {
			opts.StartAtEnd = !pinStart(ctx, client, in, log)
		}
		reader := kafkabus.NewReader(cluster, in.Group, in.Topics, opts)
		defer func() {
			if err := reader.Close(); err != nil {
				log.Warn().Err(err).Msg("closing the reader")
			}
		}()
		wctx, stop := context.WithCancel(ctx)
		var watchers sync.WaitGroup
		defer watchers.Wait()
		defer stop()
		// Ready only once in a group generation: a process that says ready
		// before its first join would take partitions (and in-flight work)
		// from its peers right after.
		watchers.Go(func() {
			// kafka-go's Stats starts its counters again at each call: this
			// loop is the only caller.
			for {
				every := rt.reportEvery()
				if !joined.Load() {
					every = 50 * time.Millisecond
				}
				stopped := false
				select {
				case <-time.After(every):
				case <-wctx.Done():
					stopped = true // the reader is still open: count its last dials
				}
				s := reader.Stats()
				c.m.dials.Add(float64(s.Dials))
				if s.Rebalances > 0 {
					joined.Store(true)
				}
				if stopped {
					return
				}
			}
		})
		watchers.Go(func() {
			c.reportDepth(wctx, &depth{group: in.Group, topics: in.Topics, client: client, startAtEnd: in.StartAtEnd, held: c.held}, rt.reportEvery())
		})
		err := c.run(ctx, reader, drain)
		stop()
		watchers.Wait()
		// The lag of partitions no longer read here would stay frozen at its
		// last value while a gated input is closed.
		c.m.lag.Reset()
		return err
	}
	rt.Intake(in.Name, rt.afterSetUp(func(ctx context.Context) error {
		if in.Gate == nil {
			return session(ctx, func() time.Duration { return c.opt.DrainTimeout })
		}
		gateDrain := in.GateDrain
		if gateDrain <= 0 {
			gateDrain = c.opt.DrainTimeout
		}
		for {
			open, changed := in.Gate.state()
			if !open {
				select {
				case <-changed:
					continue
				case <-ctx.Done():
					return nil
				}
			}
			log.Info().Str("group", in.Group).Msg("gate open: joining the group")
			gctx, cancel := in.Gate.whileOpen(ctx)
			err := session(gctx, func() time.Duration {
				if ctx.Err() != nil {
					return c.opt.DrainTimeout
				}
				return gateDrain
			})
			cancel()
			if ctx.Err() != nil {
				return err
			}
			if err != nil {
				log.Warn().Err(err).Msg("gate closed; leaving the group")
			} else {
				log.Info().Str("group", in.Group).Msg("gate closed: left the group")
			}
		}
	}))
	log.Info().Strs("topics", in.Topics).Str("group", in.Group).Int("max_in_flight", c.opt.MaxInFlight).
		Int("max_uncommitted", c.opt.MaxUncommitted).Msg("consuming")
	return c
}

// reportEvery is [monitoring] buffer_report_duration, the first generation's
// queue report period, in seconds.
func (rt *Runtime) reportEvery() time.Duration {
	return time.Duration(max(rt.cfg.Monitoring.BufferReportDuration, 1)) * time.Second // Validate refuses < 1
}

// Intake adds a part that takes work in (a consumer, the HTTP API): intake
// parts are stopped first at shutdown.
func (rt *Runtime) Intake(name string, run func(context.Context) error) {
	rt.intake = append(rt.intake, lifecycle.Part{Name: name, Run: run})
}

// Serve adds a part downstream of the intake (e.g. the connections a stage
// delivers on): it is stopped only after every intake part returned.
func (rt *Runtime) Serve(name string, run func(context.Context) error) {
	rt.downstream = append(rt.downstream, lifecycle.Part{Name: name, Run: run})
}

// Run sets the topics up and runs the parts until ctx ends or one fails, then
// stops them upstream first.
func (rt *Runtime) Run(ctx context.Context) error {
	rt.mu.Lock()
	rt.running = true
	rt.mu.Unlock()
	rt.log.Info().Str("debug", rt.DebugAddr()).Msg(rt.service + " running")
	setup := lifecycle.Part{Name: "topics", Run: func(ctx context.Context) error {
		if err := rt.setUpTopics(ctx); err != nil && ctx.Err() == nil {
			return err
		}
		return nil
	}}
	return lifecycle.Run(ctx, rt.log, rt.ShutdownTimeout, append([]lifecycle.Part{setup}, rt.intake...), rt.downstream)
}

// Close flushes and closes what the runtime built, then stops the debug
// listener. What fails to close is logged: the process is ending anyway.
func (rt *Runtime) Close() {
	for i := len(rt.closers) - 1; i >= 0; i-- {
		if err := rt.closers[i](); err != nil {
			rt.log.Warn().Err(err).Msg("closing")
		}
	}
	rt.cancelDebug()
	if err := <-rt.debugDone; err != nil {
		rt.log.Warn().Err(err).Msg("closing the debug listener")
	}
}

// Decoded is the handler of a stage whose records decode into T: a decode
// error dead-letters the record, unless it says it is Retryable (a record
// for a newer reader, during a rolling upgrade: handled again later); handle
// owns the rest.
func Decoded[T any](decode func([]byte) (T, error), handle func(context.Context, T) error) Handler {
	return func(ctx context.Context, m kafka.Message) error {
		v, err := decode(m.Value)
		var later interface{ Retryable() bool }
		if errors.As(err, &later) && later.Retryable() {
			return err
		}
		if err != nil {
			return &Reject{Reason: err.Error(), Label: "undecodable"}
		}
		return handle(ctx, v)
	}
}
