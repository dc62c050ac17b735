package stage

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/announcer/announcer/pkg/kafkabus"
)

// depth is the queue depth of one consumer group, partition by partition:
// what the first generation reported every buffer_report_duration for its
// in-memory queues, now that the queues are Kafka topics. It asks the broker
// rather than reading kafka-go's ReaderStats: kafka-go measures a reader's
// lag only outside consumer groups (reader.go, "read lag will only be
// calculated when not using consumer groups"), and its stats have one lag
// figure, not one per partition.
type depth struct {
	group  string
	topics []string
	client *kafkabus.Client
	// startAtEnd: a group with no committed offset starts at the log end, so
	// what the topic retained from before is not behind. held gives the
	// oldest offset the consumer holds of a partition, if any: without a
	// commit, that is where its backlog starts.
	startAtEnd bool
	held       func(topicPartition) (int64, bool)
}

// partitionDepth is one partition's lag (records behind the log end).
type partitionDepth struct {
	topic     string
	partition int
	lag       int64
}

// measure asks Kafka for the log end and the group's committed offset of
// every partition of the topics. A partition the group never committed is
// behind by everything it retains (a new group starts at the oldest record),
// or, for a group that starts at the end, by what the consumer holds. Log
// starts are asked for those partitions alone, and each leader is asked once:
// this runs every report period in every replica.
func (d *depth) measure(ctx context.Context) ([]partitionDepth, error) {
	g, err := d.client.GroupOffsets(ctx, d.group, d.topics)
	if err != nil {
		return nil, err
	}
	if len(g.Unknown) > 0 {
		return nil, fmt.Errorf("metadata of %s: %w", g.Unknown[0], kafka.UnknownTopicOrPartition)
	}
	parts := g.Partitions
	done := map[topicPartition]int64{}
	for topic, ps := range g.Committed {
		for p, off := range ps {
			done[topicPartition{topic, p}] = off
		}
	}
	ends, err := d.client.Offsets(ctx, kafka.LastOffset, parts)
	if err != nil {
		return nil, fmt.Errorf("log ends: %w", err)
	}
	var first map[string]map[int]int64
	if !d.startAtEnd {
		uncommitted := map[string][]int{}
		for topic, ps := range ends {
			for p, end := range ps {
				// Nothing written: nothing retained either.
				if _, ok := done[topicPartition{topic, p}]; !ok && end > 0 {
					uncommitted[topic] = append(uncommitted[topic], p)
				}
			}
		}
		if first, err = d.client.Offsets(ctx, kafka.FirstOffset, uncommitted); err != nil {
			return nil, fmt.Errorf("log starts: %w", err)
		}
	}
	var out []partitionDepth
	for topic, ps := range ends {
		for p, end := range ps {
			k := topicPartition{topic, p}
			from, ok := done[k]
			if !ok {
				from = first[topic][p]
				if d.startAtEnd {
					from = end
					if d.held != nil {
						if o, ok := d.held(k); ok {
							from = o
						}
					}
				}
			}
			out = append(out, partitionDepth{topic: topic, partition: p, lag: max(end-from, 0)})
		}
	}
	slices.SortFunc(out, func(a, b partitionDepth) int {
		if c := strings.Compare(a.topic, b.topic); c != 0 {
			return c
		}
		return a.partition - b.partition
	})
	return out, nil
}

// reportDepth refreshes the lag gauges every period until ctx
// ends, and logs one info line a period while the group is behind.
func (c *Consumer) reportDepth(ctx context.Context, d *depth, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		c.refreshDepth(ctx, d)
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// fetchQuiet is how long after its last error a fetch counts as working
// again once the broker answers: kafka-go reports a failing fetch at least
// every second or so (its read backoff).
const fetchQuiet = 3 * time.Second

func (c *Consumer) refreshDepth(ctx context.Context, d *depth) {
	mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	parts, err := d.measure(mctx)
	if err != nil {
		// Kafka is unreachable: the outage is counted and reported elsewhere;
		// the gauges keep their last values rather than claim an empty queue.
		c.warn.Debug().Err(err).Msg("consumer lag unknown")
		return
	}
	// The broker and the group answer; a fetch that has not failed since
	// kafka-go reconnected is waiting for a record, not failing.
	c.health.quietFor(opFetch, fetchQuiet)
	var total int64
	var behind []string
	for _, p := range parts {
		c.m.lag.WithLabelValues(p.topic, strconv.Itoa(p.partition)).Set(float64(p.lag))
		total += p.lag
		if p.lag > 0 {
			behind = append(behind, p.topic+"/"+strconv.Itoa(p.partition)+"="+strconv.FormatInt(p.lag, 10))
		}
	}
	if total > 0 {
		c.log.Info().Str("group", d.group).Int64("lag", total).Strs("partitions", behind).Msg("consumer lag")
	}
}
