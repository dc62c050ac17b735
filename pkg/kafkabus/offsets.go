package kafkabus

import (
	"context"
	"errors"
	"fmt"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/segmentio/kafka-go/protocol/listoffsets"
)

// Offsets returns the offset at of each partition of topics: kafka.FirstOffset
// (the log start) or kafka.LastOffset (the log end). Each partition leader is
// asked once for all of its partitions; kafka-go's ListOffsets sends a request
// per partition, which a lag report repeats every period in every replica.
func (c *Client) Offsets(ctx context.Context, at int64, topics map[string][]int) (map[string]map[int]int64, error) {
	req := &leaderOffsets{Request: listoffsets.Request{ReplicaID: -1}}
	for topic, ps := range topics {
		t := listoffsets.RequestTopic{Topic: topic}
		for _, p := range ps {
			t.Partitions = append(t.Partitions, listoffsets.RequestPartition{Partition: int32(p), CurrentLeaderEpoch: -1, Timestamp: at})
		}
		if len(t.Partitions) > 0 {
			req.Topics = append(req.Topics, t)
		}
	}
	out := make(map[string]map[int]int64, len(req.Topics))
	if len(req.Topics) == 0 {
		return out, nil
	}
	rt := c.Client.Transport
	if rt == nil {
		rt = kafka.DefaultTransport
	}
	if c.Client.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Client.Timeout)
		defer cancel()
	}
	m, err := rt.RoundTrip(ctx, c.Client.Addr, req)
	if err != nil {
		return nil, fmt.Errorf("list offsets: %w", err)
	}
	res, ok := m.(*listoffsets.Response)
	if !ok {
		return nil, fmt.Errorf("list offsets: unexpected %T", m)
	}
	for _, t := range res.Topics {
		for _, p := range t.Partitions {
			if p.ErrorCode != 0 {
				return nil, fmt.Errorf("offset of %s/%d: %w", t.Topic, p.Partition, kafka.Error(p.ErrorCode))
			}
			if out[t.Topic] == nil {
				out[t.Topic] = map[int]int64{}
			}
			out[t.Topic][int(p.Partition)] = p.Offset
		}
	}
	return out, nil
}

// leaderOffsets is a ListOffsets request that the transport splits into one
// request per partition leader, not one per partition.
type leaderOffsets struct{ listoffsets.Request }

// Split groups the partitions by leader (-1 for a partition the metadata does
// not know: the request fails for it, as it would alone).
func (r *leaderOffsets) Split(cluster protocol.Cluster) ([]protocol.Message, protocol.Merger, error) {
	byLeader := map[int32]*listoffsets.Request{}
	var msgs []protocol.Message
	for _, t := range r.Topics {
		for _, p := range t.Partitions {
			leader := int32(-1)
			if part, ok := cluster.Topics[t.Topic].Partitions[p.Partition]; ok {
				leader = part.Leader
			}
			req, ok := byLeader[leader]
			if !ok {
				req = &listoffsets.Request{ReplicaID: r.ReplicaID, IsolationLevel: r.IsolationLevel}
				byLeader[leader] = req
				msgs = append(msgs, req)
			}
			if n := len(req.Topics); n == 0 || req.Topics[n-1].Topic != t.Topic {
				req.Topics = append(req.Topics, listoffsets.RequestTopic{Topic: t.Topic})
			}
			last := &req.Topics[len(req.Topics)-1]
			last.Partitions = append(last.Partitions, p)
		}
	}
	return msgs, new(listoffsets.Response), nil
}

// GroupOffsets are the partitions of some topics and a group's committed
// offsets of them.
type GroupOffsets struct {
	Partitions map[string][]int         // topic → partition ids
	Committed  map[string]map[int]int64 // topic → partition → offset; absent: none committed
	Unknown    []string                 // topics the cluster does not have
}

// GroupOffsets asks for the partitions of topics and the group's committed
// offsets of them. A topic the cluster does not have is listed in Unknown,
// not an error: each caller decides what it means.
func (c *Client) GroupOffsets(ctx context.Context, group string, topics []string) (GroupOffsets, error) {
	g := GroupOffsets{Partitions: map[string][]int{}, Committed: map[string]map[int]int64{}}
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return g, fmt.Errorf("metadata: %w", err)
	}
	for _, t := range md.Topics {
		if errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
			g.Unknown = append(g.Unknown, t.Name)
			continue
		}
		if t.Error != nil {
			return g, fmt.Errorf("metadata of %s: %w", t.Name, t.Error)
		}
		for _, p := range t.Partitions {
			g.Partitions[t.Name] = append(g.Partitions[t.Name], p.ID)
		}
	}
	if len(g.Partitions) == 0 {
		return g, nil
	}
	res, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: g.Partitions})
	if err == nil && res.Error != nil {
		err = res.Error
	}
	if err != nil {
		return g, fmt.Errorf("committed offsets of %s: %w", group, err)
	}
	for topic, ps := range res.Topics {
		for _, p := range ps {
			if p.Error == nil && p.CommittedOffset >= 0 {
				if g.Committed[topic] == nil {
					g.Committed[topic] = map[int]int64{}
				}
				g.Committed[topic][p.Partition] = p.CommittedOffset
			}
		}
	}
	return g, nil
}

// ErrGroupBusy says a group's offsets could not be set from outside it: the
// group has members (Kafka takes commits of generation -1 only from an empty group).
var ErrGroupBusy = errors.New("the group has members")

// PinUncommitted commits, for every partition of topics that group has no
// committed offset for, the partition's current end. kafka-go starts such a
// partition at the reader's StartOffset each time it is assigned, so with
// "the end" a partition that was idle since the group was made would skip
// what was written to it while no member ran. Once pinned, a reader can
// start uncommitted partitions (ones added to a topic later) at their
// beginning. It returns how many partitions it pinned; ErrGroupBusy when the
// group has members, which own its commits.
func (c *Client) PinUncommitted(ctx context.Context, group string, topics []string) (int, error) {
	// A topic made later (Unknown now) holds nothing older than the group:
	// its partitions may start at their beginning.
	g, err := c.GroupOffsets(ctx, group, topics)
	if err != nil {
		return 0, err
	}
	missing := map[string][]int{}
	for topic, ps := range g.Partitions {
		for _, p := range ps {
			if _, ok := g.Committed[topic][p]; !ok {
				missing[topic] = append(missing[topic], p)
			}
		}
	}
	if len(missing) == 0 {
		return 0, nil
	}
	ends, err := c.Offsets(ctx, kafka.LastOffset, missing)
	if err != nil {
		return 0, err
	}
	req := &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1, Topics: map[string][]kafka.OffsetCommit{}}
	n := 0
	for topic, ps := range ends {
		for p, end := range ps {
			req.Topics[topic] = append(req.Topics[topic], kafka.OffsetCommit{Partition: p, Offset: end})
			n++
		}
	}
	res, err := c.OffsetCommit(ctx, req)
	if err != nil {
		return 0, fmt.Errorf("commit offsets of %s: %w", group, err)
	}
	for topic, ps := range res.Topics {
		for _, p := range ps {
			switch {
			case p.Error == nil:
			case errors.Is(p.Error, kafka.IllegalGeneration), errors.Is(p.Error, kafka.UnknownMemberId),
				errors.Is(p.Error, kafka.RebalanceInProgress):
				return 0, fmt.Errorf("commit offsets of %s: %w (%w)", group, ErrGroupBusy, p.Error)
			default:
				return 0, fmt.Errorf("commit offset of %s/%d for %s: %w", topic, p.Partition, group, p.Error)
			}
		}
	}
	return n, nil
}
