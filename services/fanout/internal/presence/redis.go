// Package presence tells fanout who is online and on which ejabberd server:
// from Redis (the first generation's model) or from the user-activity REST API.
//
// Redis model: GET <username> → address of the server the user is online on
// (absent = offline); SMEMBERS/SSCAN <address> → the users online there.
package presence

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/services/fanout/internal/audience"
)

// Redis is the Redis (or Redis Cluster) presence source.
type Redis struct {
	chunk int // keys per MGET
	opts  *redis.UniversalOptions

	mu      sync.Mutex
	c       redis.UniversalClient // nil until the kind of server is known
	cluster bool
	known   bool // cluster is decided: several seeds, cluster = true, or the server said
}

var _ audience.Presence = (*Redis)(nil)

// RedisOptions tune NewRedis beyond [user-activity-redis].
type RedisOptions struct {
	// Chunk is the keys per MGET (user_activity_ask_buffer).
	Chunk int
	// PoolSize bounds connections (0 = go-redis default).
	PoolSize int
}

// NewRedis connects lazily. Several cluster_nodes (or cluster = true) select the
// cluster client; a single seed is asked on first use whether it is a Redis
// Cluster member (INFO cluster), so a cluster behind one address works
// without the key. With the cluster client lookups are pipelined GETs,
// because one MGET may not span hash slots.
func NewRedis(c config.UserActivityRedis, o RedisOptions) (*Redis, error) {
	addrs := config.SplitList(c.ClusterNodes)
	if len(addrs) == 0 {
		return nil, errors.New("redis presence: no cluster_nodes")
	}
	if o.Chunk < 1 {
		o.Chunk = 1000
	}
	cluster := len(addrs) > 1 || c.Cluster
	if cluster && c.DB != 0 {
		return nil, fmt.Errorf("redis presence: db %d: Redis Cluster has only db 0", c.DB)
	}
	rt := time.Duration(max(c.ReadTimeout, 1)) * time.Millisecond
	return &Redis{
		chunk: o.Chunk, cluster: cluster, known: cluster,
		opts: &redis.UniversalOptions{
			Addrs:        addrs,
			Password:     c.Password.Value(),
			DB:           c.DB,
			ReadTimeout:  rt,
			WriteTimeout: rt,
			DialTimeout:  2 * time.Second,
			// One dial per call: the use case retries with its own backoff.
			DialerRetries: 1,
			MaxRetries:    c.MaxRetries,
			PoolSize:      o.PoolSize,
		},
	}, nil
}

// client returns the client for the kind of server, asking a single seed
// once. A seed that does not answer is an error (retried by the caller),
// never a guess.
func (r *Redis) client(ctx context.Context) (redis.UniversalClient, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c != nil {
		return r.c, r.cluster, nil
	}
	if !r.known {
		probe := redis.NewClient(r.opts.Simple())
		info, err := probe.Info(ctx, "cluster").Result()
		_ = probe.Close()
		if err != nil {
			return nil, false, fmt.Errorf("redis presence: asking %s whether it is a cluster: %w", r.opts.Addrs[0], err)
		}
		r.cluster = strings.Contains(info, "cluster_enabled:1")
		if r.cluster && r.opts.DB != 0 {
			return nil, false, fmt.Errorf("redis presence: %s is a Redis Cluster member, which has only db 0, not db %d", r.opts.Addrs[0], r.opts.DB)
		}
		r.known = true
	}
	opts := *r.opts
	opts.IsClusterMode = r.cluster
	r.c = redis.NewUniversalClient(&opts)
	return r.c, r.cluster, nil
}

// Cluster reports whether the server is a Redis Cluster, asking it if need be.
func (r *Redis) Cluster(ctx context.Context) (bool, error) {
	_, cluster, err := r.client(ctx)
	return cluster, err
}

// Logger adapts zerolog to go-redis, whose logger is process-wide (redis.SetLogger).
// Its dial failures go to debug: the use case already logs each retried failure.
type Logger struct{ Log zerolog.Logger }

// Printf implements go-redis's internal.Logging.
func (l Logger) Printf(_ context.Context, format string, v ...any) {
	l.Log.Debug().Msgf(format, v...)
}

// Client is the underlying client (tests seed through it).
func (r *Redis) Client(ctx context.Context) (redis.UniversalClient, error) {
	c, _, err := r.client(ctx)
	return c, err
}

// Close closes the connections.
func (r *Redis) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c == nil {
		return nil
	}
	return r.c.Close()
}

// Ping is the readiness check.
func (r *Redis) Ping(ctx context.Context) error {
	c, _, err := r.client(ctx)
	if err != nil {
		return err
	}
	return c.Ping(ctx).Err()
}

// Lookup implements audience.Presence: all chunks go out in one pipeline, so a
// page of 5,000 users costs one round trip.
func (r *Redis) Lookup(ctx context.Context, usernames []string, where []string) error {
	if len(usernames) == 0 {
		return nil
	}
	if len(where) != len(usernames) {
		return fmt.Errorf("redis presence: %d slots for %d users", len(where), len(usernames))
	}
	c, cluster, err := r.client(ctx)
	if err != nil {
		return err
	}
	if cluster {
		return lookupCluster(ctx, c, r.chunk, usernames, where)
	}
	pipe := c.Pipeline()
	cmds := make([]*redis.SliceCmd, 0, (len(usernames)+r.chunk-1)/r.chunk)
	for off := 0; off < len(usernames); off += r.chunk {
		end := min(off+r.chunk, len(usernames))
		cmds = append(cmds, pipe.MGet(ctx, usernames[off:end]...))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redis presence: mget: %w", err)
	}
	off := 0
	for _, cmd := range cmds {
		vals := cmd.Val()
		for i, v := range vals {
			where[off+i] = addr(v)
		}
		off += len(vals)
	}
	if off != len(usernames) {
		return fmt.Errorf("redis presence: mget answered %d of %d keys", off, len(usernames))
	}
	return nil
}

func lookupCluster(ctx context.Context, c redis.UniversalClient, chunk int, usernames []string, where []string) error {
	for off := 0; off < len(usernames); off += chunk {
		end := min(off+chunk, len(usernames))
		pipe := c.Pipeline()
		cmds := make([]*redis.StringCmd, end-off)
		for i, u := range usernames[off:end] {
			cmds[i] = pipe.Get(ctx, u)
		}
		// redis.Nil (offline) is reported per command, not as a transport failure.
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("redis presence: get: %w", err)
		}
		for i, cmd := range cmds {
			v, err := cmd.Result()
			switch {
			case errors.Is(err, redis.Nil):
				where[off+i] = ""
			case err != nil:
				return fmt.Errorf("redis presence: get %q: %w", usernames[off+i], err)
			default:
				where[off+i] = v
			}
		}
	}
	return nil
}

func addr(v any) string {
	switch s := v.(type) {
	case string:
		return s
	case []byte:
		return string(s)
	}
	return ""
}

// Scan implements audience.Presence with SSCAN on the server's set.
func (r *Redis) Scan(ctx context.Context, address string, cursor uint64, count int) ([]string, uint64, error) {
	c, _, err := r.client(ctx)
	if err != nil {
		return nil, 0, err
	}
	names, next, err := c.SScan(ctx, address, cursor, "", int64(count)).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("redis presence: sscan %s: %w", address, err)
	}
	return names, next, nil
}
