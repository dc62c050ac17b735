// Package kafkabus builds kafka-go readers and writers with the settings every
// at-least-once path of announcer needs, and creates topics up front.
package kafkabus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
)

// HeaderReason carries why a record went to the dead-letter topic.
const HeaderReason = "x-announcer-reason"

// HeaderSource carries where a dead-lettered record came from (topic/partition/offset).
const HeaderSource = "x-announcer-source"

// WriterOptions tune a producer.
type WriterOptions struct {
	BatchTimeout time.Duration // linger before a partial batch is sent
	WriteTimeout time.Duration
	MaxAttempts  int
	BatchBytes   int64
	BatchSize    int  // records per produce request; 0 = kafka-go's default (100)
	RoundRobin   bool // spread records over partitions instead of hashing their keys
	// Dial replaces the dialer of every broker connection (tests route them through a proxy).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Topics, when set, are every topic the writer writes, and its metadata
	// covers them alone; a write to another topic then fails after WriteTimeout.
	// kafka-go refreshes a transport's metadata every few seconds, and the
	// answer for the whole cluster grows with each of its topics: on a broker
	// shared with other systems, building it costs more than the writes.
	Topics []string
}

// Writer is a producer that owns its broker connections: kafka-go's shared default
// transport keeps connections (and stale metadata) for the life of the process, so
// each Writer has a transport of its own and Close releases it.
type Writer struct {
	*kafka.Writer
	transport *kafka.Transport
}

// NewWriter returns a producer that waits for every in-sync replica (acks=all),
// hashes keys to partitions and never creates topics by itself. Topic is set per message.
func NewWriter(c Cluster, o WriterOptions) *Writer {
	tr := c.transport(o.Topics)
	tr.Dial = o.Dial
	w := &kafka.Writer{
		Addr:                   kafka.TCP(c.Brokers...),
		Balancer:               &kafka.Hash{},
		RequiredAcks:           kafka.RequireAll,
		BatchTimeout:           o.BatchTimeout,
		BatchSize:              o.BatchSize,
		WriteTimeout:           o.WriteTimeout,
		ReadTimeout:            o.WriteTimeout,
		MaxAttempts:            o.MaxAttempts,
		AllowAutoTopicCreation: false,
		Transport:              tr,
	}
	if o.RoundRobin {
		w.Balancer = &kafka.RoundRobin{}
	}
	if o.BatchBytes > 0 {
		w.BatchBytes = o.BatchBytes
	}
	if w.BatchTimeout <= 0 {
		w.BatchTimeout = 2 * time.Millisecond
	}
	if w.MaxAttempts <= 0 {
		w.MaxAttempts = 3
	}
	return &Writer{Writer: w, transport: tr}
}

// Close flushes what is buffered, then closes the connections.
func (w *Writer) Close() error {
	err := w.Writer.Close()
	w.transport.CloseIdleConnections()
	return err
}

// ReaderOptions tune a consumer.
type ReaderOptions struct {
	MinBytes int
	MaxBytes int
	// MaxWait is how long the broker holds a fetch of a partition with
	// nothing new (default 500 ms, Kafka's fetch.max.wait.ms).
	MaxWait time.Duration
	// QueueCapacity bounds messages prefetched per reader.
	QueueCapacity int
	// StartAtEnd makes a group with no committed offset start at the end of
	// the topics (input that existed before the service) instead of their beginning.
	StartAtEnd bool
	// ClientID names the member to the group (DescribeGroups shows it); empty: kafka-go's.
	ClientID string
}

// NewReader returns a group consumer for explicit commits (CommitInterval 0 = synchronous
// commits, only when the caller calls CommitMessages). New groups start at the oldest record
// (unless StartAtEnd), so nothing accepted before the first start of a service is skipped.
func NewReader(c Cluster, group string, topics []string, o ReaderOptions) *kafka.Reader {
	cfg := kafka.ReaderConfig{
		Brokers:           c.Brokers,
		Dialer:            c.dialer(o.ClientID),
		GroupID:           group,
		GroupTopics:       topics,
		StartOffset:       kafka.FirstOffset,
		MinBytes:          o.MinBytes,
		MaxBytes:          o.MaxBytes,
		MaxWait:           o.MaxWait,
		QueueCapacity:     o.QueueCapacity,
		CommitInterval:    0,
		HeartbeatInterval: time.Second,
		// The broker's minimum (group.min.session.timeout.ms): after a broker
		// restart kafka-go rejoins as a new member, and the group waits this
		// long for the old one before it rebalances, so it is the recovery time.
		SessionTimeout:         6 * time.Second,
		RebalanceTimeout:       10 * time.Second,
		JoinGroupBackoff:       time.Second,
		ReadBackoffMin:         50 * time.Millisecond,
		ReadBackoffMax:         time.Second,
		WatchPartitionChanges:  true,
		PartitionWatchInterval: 5 * time.Second,
	}
	if cfg.MinBytes <= 0 {
		cfg.MinBytes = 1
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 10 << 20
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 500 * time.Millisecond
	}
	// kafka-go asks the broker to wait MaxWait less min(1 s, MaxWait/4) and
	// drops the connection when the answer comes after MaxWait. A reader of
	// 250 ms left the broker 63 ms: a broker a moment late (a GC pause, busy
	// cores) made it dial again, with metadata and offset requests, and stall
	// the partition for a backoff. One second more leaves the broker a second.
	cfg.MaxWait += time.Second
	if cfg.QueueCapacity <= 0 {
		cfg.QueueCapacity = 100
	}
	if o.StartAtEnd {
		cfg.StartOffset = kafka.LastOffset
	}
	return kafka.NewReader(cfg)
}

// Client is a kafka-go admin client with connections of its own (the shared
// default transport's would outlive it); Close releases them.
type Client struct {
	*kafka.Client
	transport *kafka.Transport
}

// NewClient returns a client of the cluster whose requests time out after
// timeout. With topics, its metadata covers those alone (see WriterOptions.Topics):
// a request about another topic then fails.
func NewClient(c Cluster, timeout time.Duration, topics ...string) *Client {
	tr := c.transport(topics)
	return &Client{Client: &kafka.Client{Addr: kafka.TCP(c.Brokers...), Timeout: timeout, Transport: tr}, transport: tr}
}

// Close releases the client's connections.
func (c *Client) Close() { c.transport.CloseIdleConnections() }

// Members returns the client ids of a consumer group's members (none for a
// group that is empty or unknown).
func (c *Client) Members(ctx context.Context, group string) ([]string, error) {
	res, err := c.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return nil, fmt.Errorf("describe group %s: %w", group, err)
	}
	var ids []string
	for _, g := range res.Groups {
		if g.Error != nil {
			return nil, fmt.Errorf("describe group %s: %w", group, g.Error)
		}
		for _, m := range g.Members {
			ids = append(ids, m.ClientID)
		}
	}
	return ids, nil
}

// Topic is a topic to create if missing.
type Topic struct {
	Name              string
	Partitions        int
	ReplicationFactor int
}

// EnsureTopics creates the topics that do not exist yet; existing ones are left as they are.
func EnsureTopics(ctx context.Context, cluster Cluster, topics ...Topic) error {
	if len(topics) == 0 {
		return nil
	}
	c := NewClient(cluster, 10*time.Second)
	defer c.Close()
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafka.TopicConfig{
			Topic: t.Name, NumPartitions: t.Partitions, ReplicationFactor: t.ReplicationFactor,
		})
	}
	resp, err := c.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	var errs []error
	for name, terr := range resp.Errors {
		if terr != nil && !errors.Is(terr, kafka.TopicAlreadyExists) {
			errs = append(errs, fmt.Errorf("create topic %s: %w", name, terr))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Metadata propagates asynchronously: wait until every topic has its leaders.
	return awaitLeaders(ctx, c, topics)
}

// AwaitTopics returns once every topic exists with a leader for each partition.
func AwaitTopics(ctx context.Context, cluster Cluster, names ...string) error {
	c := NewClient(cluster, 10*time.Second)
	defer c.Close()
	topics := make([]Topic, len(names))
	for i, n := range names {
		topics[i] = Topic{Name: n}
	}
	return awaitLeaders(ctx, c, topics)
}

func awaitLeaders(ctx context.Context, c *Client, topics []Topic) error {
	for {
		md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: names(topics)})
		if err == nil && ready(md, topics) {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = errors.New("some topics are missing or have no leader")
			}
			return fmt.Errorf("topics %v: %w (%w)", names(topics), ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func names(ts []Topic) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Name
	}
	return out
}

func ready(md *kafka.MetadataResponse, want []Topic) bool {
	have := map[string]bool{}
	for _, t := range md.Topics {
		if t.Error != nil || len(t.Partitions) == 0 {
			continue
		}
		ok := true
		for _, p := range t.Partitions {
			if p.Error != nil || p.Leader.Host == "" {
				ok = false
			}
		}
		have[t.Name] = ok
	}
	for _, t := range want {
		if !have[t.Name] {
			return false
		}
	}
	return true
}

// Ping asks any broker for metadata: the readiness check of every service.
func Ping(ctx context.Context, c Cluster) error {
	var errs []error
	d := c.dialer("")
	for _, b := range c.Brokers {
		kc, err := d.DialContext(ctx, "tcp", b)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = kc.SetDeadline(dl)
		}
		_, err = kc.Brokers()
		_ = kc.Close()
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("kafka unreachable: %w", errors.Join(errs...))
}

// Source names a record for logs and dead letters.
func Source(m kafka.Message) string {
	return m.Topic + "/" + strconv.Itoa(m.Partition) + "/" + strconv.FormatInt(m.Offset, 10)
}
