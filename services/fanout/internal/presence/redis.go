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

	"github.com/redis/go-redis/v9"

	"github.com/announcer/announcer/pkg/config"
	"github.com/announcer/announcer/pkg/redisconn"
	"github.com/announcer/announcer/services/fanout/internal/audience"
)

// Redis is the Redis (or Redis Cluster) presence source.
type Redis struct {
	chunk int // keys per MGET
	conn  *redisconn.Conn
}

var _ audience.Presence = (*Redis)(nil)

// RedisOptions tune NewRedis beyond [user-activity-redis].
type RedisOptions struct {
	// Chunk is the keys per MGET (user_activity_ask_buffer).
	Chunk int
	// PoolSize bounds connections (0 = go-redis default).
	PoolSize int
}

// NewRedis connects lazily (redisconn: a single seed is asked whether it is a
// cluster member). With the cluster client lookups are pipelined GETs,
// because one MGET may not span hash slots.
func NewRedis(c config.UserActivityRedis, o RedisOptions) (*Redis, error) {
	if o.Chunk < 1 {
		o.Chunk = 1000
	}
	conn, err := redisconn.New("redis presence", c.Options(o.PoolSize))
	if err != nil {
		return nil, err
	}
	return &Redis{chunk: o.Chunk, conn: conn}, nil
}

// Cluster reports whether the server is a Redis Cluster, asking it if need be.
func (r *Redis) Cluster(ctx context.Context) (bool, error) { return r.conn.Cluster(ctx) }

// Client is the underlying client (tests seed through it).
func (r *Redis) Client(ctx context.Context) (redis.UniversalClient, error) { return r.conn.Client(ctx) }

// Close closes the connections.
func (r *Redis) Close() error { return r.conn.Close() }

// Ping is the readiness check.
func (r *Redis) Ping(ctx context.Context) error { return r.conn.Ping(ctx) }

// Lookup implements audience.Presence: all chunks go out in one pipeline, so a
// page of 5,000 users costs one round trip.
func (r *Redis) Lookup(ctx context.Context, usernames []string, where []string) error {
	if len(usernames) == 0 {
		return nil
	}
	if len(where) != len(usernames) {
		return fmt.Errorf("redis presence: %d slots for %d users", len(where), len(usernames))
	}
	c, err := r.conn.Client(ctx)
	if err != nil {
		return err
	}
	cluster, err := r.conn.Cluster(ctx)
	if err != nil {
		return err
	}
	if cluster {
		return lookupCluster(ctx, c, r.chunk, usernames, where)
	}
	pipe := c.Pipeline()
	chunks := (len(usernames) + r.chunk - 1) / r.chunk
	cmds := make([]*redis.StringSliceCmd, 0, chunks)
	// One argument slice for the whole pipeline, each chunk prefixed by the
	// command name. A StringSliceCmd reads a nil (offline) as "" and skips
	// the per-value interface boxing of MGet's SliceCmd.
	args := make([]any, 0, len(usernames)+chunks)
	for off := 0; off < len(usernames); off += r.chunk {
		end := min(off+r.chunk, len(usernames))
		start := len(args)
		args = append(args, "mget")
		for _, u := range usernames[off:end] {
			args = append(args, u)
		}
		cmd := redis.NewStringSliceCmd(ctx, args[start:len(args):len(args)]...)
		_ = pipe.Process(ctx, cmd)
		cmds = append(cmds, cmd)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redis presence: mget: %w", err)
	}
	for i, cmd := range cmds {
		off := i * r.chunk
		want := min(r.chunk, len(usernames)-off)
		if vals := cmd.Val(); len(vals) != want {
			return fmt.Errorf("redis presence: mget answered %d of %d keys", len(vals), want)
		}
		copy(where[off:], cmd.Val())
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
		// redis.Nil (offline) and WRONGTYPE are reported per command, not as a transport failure.
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) && !wrongType(err) {
			return fmt.Errorf("redis presence: get: %w", err)
		}
		for i, cmd := range cmds {
			v, err := cmd.Result()
			switch {
			case errors.Is(err, redis.Nil), wrongType(err):
				// A username that names a key of another kind (a node's
				// presence set, say) is offline, as MGET reads it.
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

// wrongType is Redis's answer for a key that is not a string.
func wrongType(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "WRONGTYPE")
}

// Scan implements audience.Presence with SSCAN on the server's set.
func (r *Redis) Scan(ctx context.Context, address string, cursor uint64, count int) ([]string, uint64, error) {
	c, err := r.conn.Client(ctx)
	if err != nil {
		return nil, 0, err
	}
	names, next, err := c.SScan(ctx, address, cursor, "", int64(count)).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("redis presence: sscan %s: %w", address, err)
	}
	return names, next, nil
}
