// Package redisconn connects to a Redis server or a Redis Cluster named by
// one or more seed addresses, as the first generation's [user-activity-redis]
// does: several seeds (or cluster = true) mean a cluster; a single seed is
// asked on first use whether it is a cluster member (INFO cluster), so a
// cluster behind one address works without the key.
package redisconn

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Options name the servers.
type Options struct {
	Addrs    []string
	Password string
	DB       int
	// Cluster forces the cluster client even for one seed.
	Cluster bool
	// Timeout bounds each read and write (0 = 1 s).
	Timeout time.Duration
	// MaxRetries are go-redis's retries of a failed command (0: none).
	MaxRetries int
	// PoolSize bounds connections (0 = go-redis default).
	PoolSize int
}

// Conn is a lazily connected client. It is safe for concurrent use.
type Conn struct {
	name string // for errors: what the connection is for
	opts *redis.UniversalOptions

	mu      sync.Mutex
	c       redis.UniversalClient // nil until the kind of server is known
	cluster bool
	known   bool // cluster is decided: several seeds, Cluster, or the server said
}

// New checks o and returns a Conn that connects on first use; name says what
// it is for in errors ("redis presence", "progress store").
func New(name string, o Options) (*Conn, error) {
	if len(o.Addrs) == 0 {
		return nil, fmt.Errorf("%s: no redis address", name)
	}
	cluster := len(o.Addrs) > 1 || o.Cluster
	if cluster && o.DB != 0 {
		return nil, fmt.Errorf("%s: db %d: Redis Cluster has only db 0", name, o.DB)
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	// go-redis reads 0 as its default, 3 retries; max_retries = 0 means none.
	retries := o.MaxRetries
	if retries <= 0 {
		retries = -1
	}
	return &Conn{
		name: name, cluster: cluster, known: cluster,
		opts: &redis.UniversalOptions{
			Addrs:        o.Addrs,
			Password:     o.Password,
			DB:           o.DB,
			ReadTimeout:  o.Timeout,
			WriteTimeout: o.Timeout,
			DialTimeout:  2 * time.Second,
			// One dial per call: callers retry with their own backoff.
			DialerRetries: 1,
			MaxRetries:    retries,
			PoolSize:      o.PoolSize,
		},
	}, nil
}

// Client returns the client for the kind of server, asking a single seed
// once. A seed that does not answer is an error (the caller retries), never
// a guess.
func (c *Conn) Client(ctx context.Context) (redis.UniversalClient, error) {
	cl, _, err := c.client(ctx)
	return cl, err
}

// Cluster reports whether the server is a Redis Cluster, asking it if need be.
func (c *Conn) Cluster(ctx context.Context) (bool, error) {
	_, cluster, err := c.client(ctx)
	return cluster, err
}

func (c *Conn) client(ctx context.Context) (redis.UniversalClient, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c != nil {
		return c.c, c.cluster, nil
	}
	if !c.known {
		probe := redis.NewClient(c.opts.Simple())
		info, err := probe.Info(ctx, "cluster").Result()
		_ = probe.Close()
		if err != nil {
			return nil, false, fmt.Errorf("%s: asking %s whether it is a cluster: %w", c.name, c.opts.Addrs[0], err)
		}
		c.cluster = strings.Contains(info, "cluster_enabled:1")
		if c.cluster && c.opts.DB != 0 {
			return nil, false, fmt.Errorf("%s: %s is a Redis Cluster member, which has only db 0, not db %d", c.name, c.opts.Addrs[0], c.opts.DB)
		}
		c.known = true
	}
	opts := *c.opts
	opts.IsClusterMode = c.cluster
	c.c = redis.NewUniversalClient(&opts)
	return c.c, c.cluster, nil
}

// Ping is a readiness check.
func (c *Conn) Ping(ctx context.Context) error {
	cl, err := c.Client(ctx)
	if err != nil {
		return err
	}
	if err := cl.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("%s: %w", c.name, err)
	}
	return nil
}

// Close closes the connections.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c == nil {
		return nil
	}
	err := c.c.Close()
	c.c = nil
	if errors.Is(err, redis.ErrClosed) {
		return nil
	}
	return err
}

// Logger adapts zerolog to go-redis, whose logger is process-wide
// (redis.SetLogger). Its dial failures go to debug: callers count and log
// each failure they retry.
type Logger struct{ Log zerolog.Logger }

// Printf implements go-redis's internal.Logging.
func (l Logger) Printf(_ context.Context, format string, v ...any) {
	l.Log.Debug().Msgf(format, v...)
}
